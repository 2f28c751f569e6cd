"""Where the running service's CPU goes (event loop, other threads, decode workers), and the GPU node it predicts.

    python -m bench.cpu_split [--repo models] [--requests 2048] [--scenes 3]    # about 3 minutes

``bench.stages`` times each stage in one process; this measures the service as it runs under load
(decode workers, fast lane, batcher), so the cost model's inputs are today's. It reads the CPU of
the event loop's thread (uvicorn's main thread, ``/proc/<pid>/task/<pid>``), of the service's other
threads (the engine's runners with ONNX Runtime, the threads that answer files) and of its decode
workers, before and after each case, and divides by requests. Cases: single 32 px GeoTIFFs to a
class head (JSON answer) and to a mask head (its default answer, a COG) at ``--concurrency``; a
128 px GeoTIFF (the pixels of one tile of the base-size specialist; cut here into 32 px tiles, so
its decode is an upper bound of that tile's); one-tile binary tensors to ``/v2`` infer; and whole
scenes posted one at a time.

The model (docs/performance.md): on a node of ``--cores`` cores with ``cores - 1`` decode workers
and an engine of ``--engine-tiles-s`` (default: the assumption ``bench.flops`` states), a case runs
at most at the least of the loop's rate (1 / its ms), the workers' ((cores - 1) / theirs) and the
engine's. Whole scenes are carried to 128 px tiles per pixel, which overstates the loop's share
(a 128 px tile's batch carries 16 times the pixels of a 32 px one's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.client import load
from bench.flops import assumed_engine_tiles_s
from bench.harness import (
    RESULTS,
    Report,
    ServiceProcess,
    ensure_repo,
    find_entry,
    markdown_table,
    post_scene,
    repo_arguments,
)
from bench.peer import infer_body
from bench.scene import make_scene
from bench.serve import make_tiles
from mapex_serve.local import cpu_seconds, decode_workers
from mapex_serve.predict import overlap_for
from mapex_serve.repository import Manifest
from mapex_serve.tiling import tile_grid

BASE_TILE = 128  # the base-size specialist's tile (mapex-130m)
SCENE_BATCHES = (32, 128, 8)  # the first is the service's default
PLACES = ("event loop", "other threads", "decode workers")


@dataclass(frozen=True)
class Split:
    """CPU seconds of the service's three places so far."""

    loop: float
    threads: float
    workers: float

    @classmethod
    def now(cls, pid: int) -> Split:
        loop = cpu_seconds(f"{pid}/task/{pid}")
        return cls(loop, cpu_seconds(pid) - loop, sum(cpu_seconds(w) for w in decode_workers(pid)))

    def __sub__(self, other: Split) -> Split:
        return Split(self.loop - other.loop, self.threads - other.threads, self.workers - other.workers)


def measured(pid: int, run: Callable[[], float], count: int) -> dict[str, float]:
    """``run()`` (its wall seconds) and the CPU ms each place spent per one of its ``count`` requests."""
    before = Split.now(pid)
    wall = run()
    spent = Split.now(pid) - before
    per = {place: seconds * 1e3 / count for place, seconds in zip(PLACES, astuple(spent), strict=True)}
    return {**per, "total": sum(per.values()), "requests_s": count / wall}


def scene_case(repo: Path, mask: Manifest, scene: bytes, tiles: int, scenes: int, max_batch: int) -> dict[str, Any]:
    """``scenes`` posts of ``scene`` to a service of ``max_batch``, after one to warm up: CPU a scene, batches a scene."""
    with ServiceProcess(repo, {"MAPEX_MAX_BATCH": str(max_batch)}) as service:
        post_scene(service.url, mask.task, "RGB", scene)  # the engine's arena, GDAL's cache
        metric = f'mapex_batch_size_count{{specialist="{mask.name}"}}'
        before = service.metric(metric)
        row = measured(service.pid, lambda: sum(post_scene(service.url, mask.task, "RGB", scene)[1]
                                                for _ in range(scenes)), scenes)
        batches = (service.metric(metric) - before) / scenes
    return {"case": f"scene, mask head, COG, max batch {max_batch}", "tiles a request": tiles, **row,
            "batches": batches}


def node_rates(loop_ms: float, worker_ms: float, engine: float, cores: int, tiles: float = 1.0,
               processes: int = 1, workers: int | None = None) -> dict[str, Any]:
    """Tiles/s each place allows for requests of ``tiles`` tiles on ``cores`` cores shared by ``processes`` service
    processes (``UVICORN_WORKERS``: each an event loop and ``cores // processes - 1`` decode workers, unless
    ``workers`` says how many work on a request), and which binds."""
    workers = processes * max(cores // processes - 1, 1) if workers is None else workers
    bounds = {"event loop": processes * tiles * 1e3 / loop_ms, "engine": engine}
    if worker_ms > 0:  # binary tensors never reach a decode worker
        bounds["decode workers"] = workers * tiles * 1e3 / worker_ms
    bound = min(bounds, key=bounds.get)
    return {**{f"{k} tiles/s": v for k, v in bounds.items()}, "predicted tiles/s": bounds[bound], "bound": bound}


def best_split(loop_ms: float, worker_ms: float, engine: float, cores: int, tiles: float = 1.0) -> dict[str, Any]:
    """The number of service processes that serves most on ``cores`` cores, and what it predicts."""
    rates = {k: node_rates(loop_ms, worker_ms, engine, cores, tiles, k) for k in range(1, cores // 2 + 1)}
    best = max(rates, key=lambda k: rates[k]["predicted tiles/s"])
    return {"processes": best, "with them tiles/s": rates[best]["predicted tiles/s"],
            "their bound": rates[best]["bound"]}


def request_cases(repo: Path, cls: Manifest, mask: Manifest, workdir: Path, requests: int,
                  concurrency: int) -> list[dict[str, Any]]:
    """The single-request cases, ``requests`` each at ``concurrency``, on one service as shipped."""
    tiles32, arrays = make_tiles(cls, 64, workdir)
    tiles128, _ = make_tiles(cls, 16, workdir, BASE_TILE)
    binaries = [infer_body(arrays[i:i + 1], cls.input.name, cls.output.name) for i in range(len(arrays))]
    tiff, as_json = {"Content-Type": "image/tiff"}, {"Content-Type": "image/tiff", "Accept": "application/json"}
    classify, segment = f"/predict/{cls.task}?modality=RGB", f"/predict/{mask.task}?modality=RGB"
    cases = [("32 px GeoTIFF, class head, JSON", classify, tiles32, as_json),
             ("32 px GeoTIFF, mask head, COG", segment, tiles32, tiff),
             ("128 px GeoTIFF, class head, JSON", classify, tiles128, as_json),
             ("128 px GeoTIFF, mask head, COG", segment, tiles128, tiff),
             ("one-tile binary tensor to /v2 infer", f"/v2/models/{cls.name}/infer", None, None)]
    rows = []
    with ServiceProcess(repo, {}) as service:
        for case, path, bodies, headers in cases:
            print(f"{case}: {requests} requests", file=sys.stderr)
            if bodies is None:
                request = lambda i, path=path: (path, *binaries[i % len(binaries)])  # noqa: E731
            else:
                request = lambda i, path=path, b=bodies, h=headers: (path, b[i % len(b)], h)  # noqa: E731
            run = lambda r=request: asyncio.run(load(service.url, r, concurrency, requests))[1]  # noqa: E731
            rows.append({"case": case, "tiles a request": 1, **measured(service.pid, run, requests)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__.split("\n\n")[0])
    repo_arguments(p)
    p.add_argument("--requests", type=int, default=2048, help="requests a single-request case (default 2048)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    p.add_argument("--scene", type=int, default=2048, help="pixels a side of the whole scene (default 2048)")
    p.add_argument("--scenes", type=int, default=3, help="whole scenes posted a batch size (default 3)")
    p.add_argument("--cores", type=int, default=16, help="cores of the node the model predicts for (default 16)")
    p.add_argument("--engine-tiles-s", type=float, help="the base-size specialist's engine on that node "
                   "(default: bench.flops' assumption, 10%% of an H200's FP16 peak)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for cpu_split.json and .md")
    args = p.parse_args(argv)
    repo = ensure_repo(args.repo, args.checkpoint)
    _, cls = find_entry(repo, "landcover", ["RGB"])
    _, mask = find_entry(repo, "landcover-seg", ["RGB"])
    flops, engine = assumed_engine_tiles_s(mask, 0.10)
    engine = args.engine_tiles_s or engine
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        rows = request_cases(repo, cls, mask, Path(tmp), args.requests, args.concurrency)
        scene = make_scene(args.scene, mask.tile_size, Path(tmp) / "scene.tif").read_bytes()
        tiles = len(tile_grid(args.scene, args.scene, mask.tile_size, overlap_for(mask.tile_size)))
        for max_batch in SCENE_BATCHES:  # several batch sizes: the loop's cost a batch apart from its cost a scene
            print(f"{args.scene}² scene, max batch {max_batch}: {args.scenes} scenes", file=sys.stderr)
            rows.append(scene_case(repo, mask, scene, tiles, args.scenes, max_batch))

    # The node: a base-size tile a request (the 128 px uploads' figures); a scene at 128 px tiles, its loop's
    # cost a scene plus a batch for each of its batches, its decode as measured (a cost a pixel).
    scenes = rows[-len(SCENE_BATCHES):]
    per_batch, per_scene = np.polyfit([r["batches"] for r in scenes], [r["event loop"] for r in scenes], 1)
    base_tiles = len(tile_grid(args.scene, args.scene, BASE_TILE, overlap_for(BASE_TILE)))
    scene_loop, scene_worker = per_scene + per_batch * math.ceil(base_tiles / SCENE_BATCHES[0]), scenes[0]["decode workers"]
    predictions = [{"case": r["case"], "loop ms": r["event loop"], "worker ms": r["decode workers"],
                    **node_rates(r["event loop"], r["decode workers"], engine, args.cores),
                    **best_split(r["event loop"], r["decode workers"], engine, args.cores)}
                   for r in rows if r["case"].startswith(("128 px", "one-tile"))]
    predictions += [{"case": f"{args.scene}² scenes, mask head, COG ({base_tiles} tiles of {BASE_TILE} px)",
                     "loop ms": scene_loop, "worker ms": scene_worker,
                     **node_rates(scene_loop, scene_worker, engine, args.cores, base_tiles),
                     **best_split(scene_loop, scene_worker, engine, args.cores, base_tiles)},
                    {"case": "one such scene at a time, whole on one worker (MAPEX_PREDICT_PARTS=1)",
                     "loop ms": scene_loop, "worker ms": scene_worker,
                     **node_rates(scene_loop, scene_worker, engine, args.cores, base_tiles, workers=1)}]
    notes = [f"CPU ms a request from /proc before and after each case; {args.requests} requests a single-request "
             f"case at concurrency {args.concurrency}, on the service as shipped (decode workers cores - 1, engine "
             f"runners, batching); {args.scenes} {args.scene}² scenes one at a time after one to warm up, on a "
             f"service of each MAPEX_MAX_BATCH",
             "other threads: the engine's runners and ONNX Runtime's pool (on a GPU node the engine's host CPU "
             "instead, unmeasured here), and the threads that answer files",
             f"a scene's event loop: {per_scene:.0f} ms a scene (receiving {len(scene) / 2**20:.0f} MiB into its "
             f"slab, the engine's outputs copied into it, the answer) + {per_batch:.3f} ms a batch (a line through "
             f"the {len(SCENE_BATCHES)} batch sizes)",
             f"the node: {args.cores} cores, one service process (an event loop, {args.cores - 1} decode workers) or "
             f"the number of processes (UVICORN_WORKERS, each with cores / processes - 1 workers) that serves most, "
             f"an engine of "
             f"{engine:,.0f} tiles/s (a mapex-130m specialist of {len(mask.band_names)} bands, {flops / 1e9:.2f} GFLOP "
             f"a tile{'' if args.engine_tiles_s else ' at 10% of an H200 FP16 peak: an assumption'})"]
    report = Report("cpu_split", "Where the service's CPU goes, and what it predicts for a GPU node",
                    {"repo": str(repo), "cores here": os.cpu_count(), "node cores": args.cores},
                    rows, ["case", "tiles a request", *PLACES, "total", "requests_s", "batches"], [], notes)
    report.write(args.out)
    text = markdown_table(predictions, ["case", "loop ms", "worker ms", "event loop tiles/s", "decode workers tiles/s",
                                        "engine tiles/s", "predicted tiles/s", "bound", "processes",
                                        "with them tiles/s", "their bound"])
    with (args.out / "cpu_split.md").open("a") as f:
        f.write(f"\n## Predicted for a {args.cores}-core node, engine {engine:,.0f} tiles/s\n\n{text}\n")
    payload = json.loads((args.out / "cpu_split.json").read_text())
    (args.out / "cpu_split.json").write_text(json.dumps(payload | {"predictions": predictions}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

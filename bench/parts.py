"""A lone /predict mask scene's decoding, whole and split into parts across decode workers, timed part by part.

    python -m bench.parts --repo R [--task flood --modality SAR] [--size 4096] [--parts 1 2 4] [--rounds 2]

Each part runs as a decode worker runs it (``decode.parts``): the upload read from the request's
slab (in place: ``decode.session.slab_files``) and opened (the whole scene's with the unit check's
sample; a split scene's first part checks it once split, the others not at all),
the tiles its rows need read into batches and blended into the shared mask in a slab
(``SceneRun.start(rows, mask)``), one part after another in this process, each timed with
``time.process_time``. Then the first part encodes the answer (a COG, compressed on a thread for
each part: timed by the clock too). With a worker for each part, a lone scene waits for the first
part's open (the service splits the scene once it is open), its longest part's rows and the
encoding; the sum of the parts is the CPU the split costs. Both are reported as ratios
to the scene decoded whole, measured in the same run.

The engine is not run: each batch gets probabilities computed from its tiles' first band (a smooth
function, so the mask and its COG look like a model's), and the time that takes is left out. On a
GPU node the engine runs beside the workers; on a CPU engine the cores it needs are the workers'
(there the default is one part: ``MAPEX_PREDICT_PARTS``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import RESULTS, Report, mask_specialist, median, repo_arguments
from bench.stages import make_upload
from mapex_serve.budget import Reservation
from mapex_serve.decode.parts import MaskSlab, scene_parts
from mapex_serve.decode.session import slab_files
from mapex_serve.decode.slab import Layout, Slab
from mapex_serve.inputs import check_values
from mapex_serve.predict import SceneRun, open_and_route, overlap_for
from mapex_serve.repository import Manifest
from mapex_serve.responses import encode
from mapex_serve.tiling import TileBatch
from mapex_serve.units import UnitOverrides


def _probabilities(batch: TileBatch, classes: int) -> np.ndarray:
    """(B, K, T, T): a softmax over K scores that rise with the first band, so that classes follow the scene."""
    x = batch.data[:, :1]
    x = (x - x.mean()) / (x.std() + 1e-6)
    scores = np.arange(classes, dtype=np.float32)[None, :, None, None] * x
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _run(upload: Slab, size: int, manifest: Manifest, max_batch: int, rows: tuple[int, int] | None,
         mask: Slab | None) -> tuple[SceneRun, float, float]:
    """One part (``rows``) or the whole scene (None) as a worker runs it, its upload read from the request's slab
    as a worker's is (``slab_files``: a TIFF in place): the run, its CPU and its open's CPU."""
    start = time.process_time()
    files = slab_files(upload, Layout.plan([("scene.tif", size)], 0, 0))
    scene, route, reader = open_and_route(files, None, [manifest], None, UnitOverrides(), 10**10,
                                          check_units=rows is None, max_unpacked=0)
    del files
    opened = time.process_time()
    if rows is not None and rows[0] == 0:
        check_values(reader)  # a split scene's first part checks its values once split, as the others start
    run = SceneRun(scene, route, reader, max_batch)
    g = reader.grid
    run.start(rows, MaskSlab.arrays(mask, g.height, g.width) if mask is not None else None)
    left_out = 0.0
    for batch in run.batches:
        t = time.process_time()
        probs = _probabilities(batch, len(manifest.classes))
        left_out += time.process_time() - t
        run.add(batch, probs)
    return run, time.process_time() - start - left_out, opened - start


def measure(upload: Slab, upload_size: int, manifest: Manifest, size: int, parts: int, max_batch: int,
            folder: Path) -> dict[str, Any]:
    """The scene in ``parts`` parts (1: whole): each part's CPU, their opens, the first part's encoding."""
    rows = scene_parts(size, size, manifest.tile_size, overlap_for(manifest.tile_size), parts)
    if parts > 1 and len(rows) != parts:
        raise SystemExit(f"a {size}² scene splits into {len(rows)} parts, not {parts}: choose a larger --size")
    mask = Slab.create(folder, MaskSlab.size(size, size)) if parts > 1 else None
    try:
        runs, times, opens, done = [], [], [], []
        for r in rows if parts > 1 else [None]:
            run, cpu, opened = _run(upload, upload_size, manifest, max_batch, r, mask)
            t = time.process_time()
            if r is not None:
                done.append(run.part_done())
            cpu += time.process_time() - t
            runs.append(run)
            times.append(cpu)
            opens.append(opened)
        t, wall = time.process_time(), time.perf_counter()
        answer = encode(runs[0].result(Reservation(None, 0), done), "geotiff", "image/tiff", "cpu",
                        threads=max(len(done), 1))
        encoding, encoding_wall = time.process_time() - t, time.perf_counter() - wall
        for run in runs:
            run.scene.close()
    finally:
        if mask is not None:
            mask.close()
            mask.unlink()
    return {"parts": len(rows), "part_s": times, "open_s": opens, "encode_s": encoding, "encode_wall_s": encoding_wall,
            # The first part's open (and unit check) comes before the split; then every part runs its rows at once.
            "longest_s": opens[0] + max([times[0] - opens[0], *times[1:]]) + encoding_wall,
            "sum_s": sum(times) + encoding,
            "answer_mib": len(answer.body) / 2**20}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.parts", description=__doc__.split("\n\n")[0])
    repo_arguments(p)
    p.add_argument("--task", default="flood", help="a task with a mask head (default flood)")
    p.add_argument("--modality", default="SAR", help="the specialist's modality (default SAR)")
    p.add_argument("--size", type=int, default=4096, help="scene width and height in pixels")
    p.add_argument("--parts", type=int, nargs="+", default=[1, 2, 4], help="counts of parts to time (1: whole)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every count, taking turns; medians reported")
    p.add_argument("--max-batch", type=int, default=32, help="MAPEX_MAX_BATCH")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for parts.json and parts.md")
    args = p.parse_args(argv)

    _repo, _entry, manifest = mask_specialist(args, "only mask scenes are split")
    counts = sorted({1, *args.parts})
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp:
        print(f"generating a {args.size}² scene of {', '.join(manifest.band_names)}", file=sys.stderr)
        data = make_upload(args.size, manifest.band_names, Path(tmp) / "scene.tif")
        upload = Slab.create(Path(tmp), len(data))
        upload.write(0, data)
        results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        for round_ in range(args.rounds):
            for n in counts if round_ % 2 == 0 else counts[::-1]:
                print(f"round {round_ + 1}: {n} part(s)", file=sys.stderr)
                results[n].append(measure(upload, len(data), manifest, args.size, n, args.max_batch, Path(tmp)))
        upload.close()

    whole = median([r["longest_s"] for r in results[1]])
    whole_cpu = median([r["sum_s"] for r in results[1]])
    rows = []
    for n in counts:
        longest, total = median([r["longest_s"] for r in results[n]]), median([r["sum_s"] for r in results[n]])
        rows.append({"parts": n, "rounds": len(results[n]),
                     "part_cpu_s": " / ".join(", ".join(f"{t:.2f}" for t in r["part_s"]) for r in results[n]),
                     "first_open_s": f"{median([r['open_s'][0] for r in results[n]]):.3f}",
                     "later_open_s": f"{median([o for r in results[n] for o in r['open_s'][1:]]):.3f}" if n > 1 else "-",
                     "encode_s": f"{median([r['encode_s'] for r in results[n]]):.2f}",
                     "encode_wall_s": f"{median([r['encode_wall_s'] for r in results[n]]):.2f}",
                     "lone_scene_s": round(longest, 2), "speedup": round(whole / longest, 2),
                     "cpu_s": round(total, 2), "cpu_ratio": round(total / whole_cpu, 2)})
    report = Report("parts", f"A lone /predict mask scene in parts: {args.size}², {manifest.name}",
                    {"repo": str(args.repo), "specialist": manifest.name, "tile": manifest.tile_size,
                     "max_batch": args.max_batch, "rounds": args.rounds}, rows,
                    ["parts", "rounds", "part_cpu_s", "first_open_s", "later_open_s", "encode_s", "encode_wall_s",
                     "lone_scene_s", "speedup", "cpu_s", "cpu_ratio"])
    report.notes = [
        "lone_scene_s: the first part's open (before the split), then the longest part (the first part's unit "
        "check and rows, or a later part's open and rows), then the first part's encoding (a COG compressed on a "
        "thread a part: its wall time, on this machine's cores): what a lone scene waits for with a decode worker "
        "for each part; "
        "speedup: the whole scene's over it; cpu_s: every part and the encoding, cpu_ratio: over the whole scene's",
        f"CPU time (time.process_time) in one process on {os.cpu_count()} cores, medians of the rounds; the engine is "
        "not run (probabilities from each tile's first band, their time left out)",
    ]
    report.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

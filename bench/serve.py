"""One specialist through the running service against its engine alone, on the same tiles.

    python -m bench.serve [--repo models] [--concurrency 1 8 32 64] [--requests 512]

The service runs as ``python -m mapex_serve`` on loopback; an asyncio client (raw HTTP/1.1 on
keep-alive connections, far lighter than httpx on a shared 2-core machine) keeps ``concurrency``
requests in flight, each a single-tile GeoTIFF posted raw (``image/tiff``).
The baseline is the same ``Engine`` class with the same settings (so the same ONNX Runtime
session options and threads) in this process, on the tiles read back from those GeoTIFFs, in the
batches a perfect batcher would form: ``min(concurrency, max_batch)`` tiles with dynamic
batching on, one tile with it off. Modes: ``on`` is the service as shipped (dynamic batching,
decode workers), ``in-process`` the same with ``MAPEX_DECODE_WORKERS=0`` (decoding in the
service's threads: the before of the decode workers), ``off`` is ``MAPEX_MAX_BATCH=1`` (a zero
delay alone still batches whatever queued while the engine was busy). Goals: service throughput
>= 0.5 x engine-only at concurrency 32 with dynamic batching; p50 latency at concurrency 1 within
1.2 x of the unbatched path's. The latter comes from ``--rounds`` rounds with both services running,
taking turns to go first, and counts the median round's ratio: one pass moved it from 0.75 to 1.39
on these shared cores. ``bench.bare``, a server that only receives each tile and reads it with GDAL, gets the
goal's load too: what it could reach with every core busy bounds what any server that reads its tiles can reach here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.bare import BareServer
from bench.client import WARM_UP, Request, load
from bench.harness import (
    Goal,
    Report,
    ServiceProcess,
    cpu_bound_seconds,
    ensure_repo,
    find_entry,
    percentile,
    resolve_engine_threads,
    service_arguments,
)
from mapex_serve.engine import Engine
from mapex_serve.repository import Manifest
from mapex_serve.settings import Settings
from training.data import SceneConfig, generate_scene, read_geotiff, write_scene_geotiff

GOAL_RATIO, GOAL_CONCURRENCY, GOAL_P50 = 0.5, 32, 1.2
MODES = {"on": {}, "in-process": {"MAPEX_DECODE_WORKERS": "0"}, "off": {"MAPEX_MAX_BATCH": "1"}}


def make_tiles(manifest: Manifest, n: int, workdir: Path, size: int | None = None) -> tuple[list[bytes], np.ndarray]:
    """``n`` synthetic scenes of ``size`` pixels (default: the tile's) as GeoTIFF bytes, and as the engine reads them
    back (N, C, size, size)."""
    size = size or manifest.tile_size
    bodies, arrays = [], []
    for seed in range(n):
        scene = generate_scene(np.random.default_rng(seed), SceneConfig(size=size))
        path = write_scene_geotiff(scene, workdir / f"tile-{size}-{seed}.tif", manifest.band_names)
        bodies.append(path.read_bytes())
        bands, _ = read_geotiff(path)
        arrays.append(np.stack([bands[b] for b in manifest.band_names]))
    return bodies, np.stack(arrays).astype(np.float32)


def _post_tiff(path: str, bodies: list[bytes]) -> Request:
    """The i-th single-tile upload of ``bodies`` (cycled) to ``path``, answered in JSON."""
    headers = {"Content-Type": "image/tiff", "Accept": "application/json"}
    return lambda i: (path, bodies[i % len(bodies)], headers)


def engine_only(engine: Engine, tiles: np.ndarray, batch: int, requests: int,
                runners: int = 1) -> tuple[list[float], float]:
    """Per-call seconds and the total time to run ``requests`` tiles through ``engine`` in batches of ``batch``,
    ``runners`` batches at once (threads sharing the session, as the service's runners do)."""
    engine.run(tiles[:batch])  # warm-up at this shape
    batches = [np.arange(first, min(first + batch, requests)) % len(tiles) for first in range(0, requests, batch)]
    calls: list[float] = []

    def run(idx: np.ndarray) -> None:
        t = time.perf_counter()
        engine.run(tiles[idx])
        calls.append(time.perf_counter() - t)

    start = time.perf_counter()
    with ThreadPoolExecutor(runners) as pool:
        list(pool.map(run, batches))
    return calls, time.perf_counter() - start


def service_env(args: argparse.Namespace, mode: str) -> dict[str, str]:
    """The service's ``MAPEX_*`` settings for ``mode``. Several processes (``--processes``) each plan their own share
    of the cores, as shipped, instead of each taking the baseline's threads."""
    if args.processes > 1:
        return {"MAPEX_MAX_BATCH": str(args.max_batch), "UVICORN_WORKERS": str(args.processes), **MODES[mode]}
    return {"MAPEX_MAX_BATCH": str(args.max_batch), "MAPEX_INTRA_OP_THREADS": str(args.threads),
            "MAPEX_ENGINE_RUNNERS": str(args.runners), **MODES[mode]}


def p50_rounds(repo: Path, args: argparse.Namespace, url_path: str, bodies: list[bytes]) -> list[tuple[float, float]]:
    """p50 ms at concurrency 1 of the service as shipped and unbatched, both running and taking turns to go first:
    ``(shipped, unbatched)`` a round."""
    rounds = []
    with ServiceProcess(repo, service_env(args, "on")) as on, ServiceProcess(repo, service_env(args, "off")) as off:
        for k in tqdm(range(args.rounds), desc="p50 rounds", unit="round", leave=False):
            p50 = {}
            for name, server in [("on", on), ("off", off)][:: 1 if k % 2 == 0 else -1]:
                latencies, _, _ = asyncio.run(load(server.url, _post_tiff(url_path, bodies), 1, args.requests))
                p50[name] = percentile(latencies, 50) * 1e3
            rounds.append((p50["on"], p50["off"]))
    return rounds


def bare_bound(rows: list[dict], url_path: str, bodies: list[bytes]) -> dict[str, float] | None:
    """``bench.bare`` under the goal's load, its CPU a request and the ratio it bounds (``BareServer.ceiling``), next to
    the shipped service's row at the goal's concurrency; None without that row."""
    row = next((r for r in rows if (r["mode"], r["concurrency"]) == ("on", GOAL_CONCURRENCY)), None)
    if row is None:
        return None
    n = row["requests"]
    with BareServer() as server:
        asyncio.run(load(server.url, _post_tiff(url_path, bodies), GOAL_CONCURRENCY, n))  # warm: GDAL, the caches
        client_cpu, server_cpu = time.process_time(), server.cpu_seconds()
        _, wall, _ = asyncio.run(load(server.url, _post_tiff(url_path, bodies), GOAL_CONCURRENCY, n))
        sent = n + WARM_UP * GOAL_CONCURRENCY
        cpu = (time.process_time() - client_cpu + server.cpu_seconds() - server_cpu) / sent * n
    return {"cpu_ms": round(cpu / n * 1e3, 3), "tiles_s": round(n / wall),
            "ceiling": round(BareServer.ceiling(n, cpu, row["engine_cpu_ms"] * n / 1e3, row["engine_tiles_s"]), 3)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    service_arguments(p, "landcover", "task posted to (default landcover: a class head)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--requests", type=int, default=512, help="timed requests per level (at least 4 x concurrency)")
    p.add_argument("--tiles", type=int, default=64, help="distinct tiles cycled through")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="on: as shipped; in-process: MAPEX_DECODE_WORKERS=0; off: no batching")
    p.add_argument("--processes", type=int, default=1, help="service processes (UVICORN_WORKERS; default 1), each "
                   "with its share of the cores; the baseline is one engine on all of them")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the p50 goal (on and off, taking turns); 0: none")
    args = p.parse_args(argv)
    if args.rounds < 0:
        p.error("--rounds must be at least 0")
    if args.processes < 1:
        p.error("--processes must be at least 1")
    resolve_engine_threads(args)

    repo = ensure_repo(args.repo, args.checkpoint)
    entry, manifest = find_entry(repo, args.task, [args.modality])
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        bodies, tiles = make_tiles(manifest, args.tiles, Path(tmp))
    url_path = f"/predict/{args.task}?modality={args.modality}"
    rows, metric = [], f'mapex_batch_size_{{}}{{{{specialist="{manifest.name}"}}}}'
    levels = [(mode, c) for mode in args.modes for c in args.concurrency]
    bar = tqdm(total=len(levels), desc="serve benchmark", unit="level", dynamic_ncols=True)
    for mode in args.modes:
        max_batch = 1 if mode == "off" else args.max_batch
        settings = Settings(model_repo=repo, providers=["cpu"], intra_op_threads=args.threads, engine_runners=args.runners,
                        max_batch=max_batch)
        engine = Engine(entry, manifest, settings)
        with ServiceProcess(repo, service_env(args, mode)) as server:
            for c in args.concurrency:
                bar.set_postfix_str(f"batching {mode}, concurrency {c}")
                n = max(args.requests, 4 * c)
                before = [server.metric(metric.format(k)) for k in ("sum", "count")]
                client_cpu, server_cpu = time.process_time(), server.cpu_seconds()
                latencies, wall, _ = asyncio.run(load(server.url, _post_tiff(url_path, bodies), c, n))
                sent = n + WARM_UP * c  # the warm-up requests are within the CPU measured
                client_cpu = (time.process_time() - client_cpu) / sent * n
                server_cpu = (server.cpu_seconds() - server_cpu) / sent * n
                after = [server.metric(metric.format(k)) for k in ("sum", "count")]
                batch = min(c, max_batch)
                engine_cpu = time.process_time()
                calls, engine_wall = engine_only(engine, tiles, batch, n, args.runners)
                engine_cpu = time.process_time() - engine_cpu
                service_tps, engine_tps = n / wall, n / engine_wall
                rows.append({
                    "mode": mode, "concurrency": c, "requests": n,
                    "service_tiles_s": service_tps, "engine_tiles_s": engine_tps, "ratio": service_tps / engine_tps,
                    "service_p50_ms": percentile(latencies, 50) * 1e3, "service_p99_ms": percentile(latencies, 99) * 1e3,
                    "engine_batch": batch, "engine_p50_ms": percentile(calls, 50) * 1e3,
                    "engine_p99_ms": percentile(calls, 99) * 1e3, "engine_cpu_ms": engine_cpu / n * 1e3,
                    "service_mean_batch": (after[0] - before[0]) / max(after[1] - before[1], 1)
                    if args.processes == 1 else None,  # /metrics is one process's
                    "client_cpu_cores": client_cpu / wall,
                    # the service and its decode workers (with several processes the workers are the children of
                    # each process, not of the one started: not counted)
                    "service_cpu_ms": server_cpu / n * 1e3 if args.processes == 1 else None,
                    "cpu_ceiling": n / cpu_bound_seconds(server_cpu + client_cpu) / engine_tps
                    if args.processes == 1 else None,
                })
                bar.update()
    bar.close()
    bare = bare_bound(rows, url_path, bodies)
    rounds = p50_rounds(repo, args, url_path, bodies) if args.rounds and {"on", "off"} <= set(args.modes) else []

    goals = []
    row = {(r["mode"], r["concurrency"]): r for r in rows}
    if r := row.get(("on", GOAL_CONCURRENCY)):
        goals.append(Goal(f"service / engine-only throughput at concurrency {GOAL_CONCURRENCY}, as shipped",
                          r["ratio"], GOAL_RATIO, at_most=False,
                          detail=f"; {r['service_tiles_s']:.0f} vs {r['engine_tiles_s']:.0f} tiles/s"
                                 + (f"; the most its CPU allows on these cores: {r['cpu_ceiling']:.3f} "
                                    f"({r['service_cpu_ms']:.2f} ms of service CPU a request)"
                                    if r["cpu_ceiling"] is not None else "")
                                 + (f"; a server that only reads each tile with GDAL (bench.bare) could reach "
                                    f"{bare['ceiling']:.3f} ({bare['cpu_ms']:.2f} ms of CPU a request, the "
                                    f"engine's {r['engine_cpu_ms']:.2f} ms a tile on top)" if bare else "")))
        if before := row.get(("in-process", GOAL_CONCURRENCY)):
            goals.append(Goal(f"decode workers: throughput with / without at concurrency {GOAL_CONCURRENCY}",
                              r["service_tiles_s"] / before["service_tiles_s"], 1.0, at_most=False,
                              detail=f"; {r['service_tiles_s']:.0f} vs {before['service_tiles_s']:.0f} tiles/s"))
    if rounds:
        on_ms, off_ms = sorted(rounds, key=lambda r: r[0] / r[1])[len(rounds) // 2]  # the middle round (upper of two)
        ratios = [on / off for on, off in rounds]
        goals.append(Goal("p50 latency at concurrency 1, as shipped / unbatched (median round)", on_ms / off_ms, GOAL_P50,
                          at_most=True, detail=f"; {on_ms:.2f} vs {off_ms:.2f} ms; rounds, sorted: "
                                               + ", ".join(f"{r:.3f}" for r in sorted(ratios)),
                          rounds=tuple(ratios) if len(ratios) > 1 else ()))
    columns = ["mode", "concurrency", "requests", "service_tiles_s", "engine_tiles_s", "ratio", "service_p50_ms",
               "service_p99_ms", "engine_batch", "engine_p50_ms", "engine_p99_ms", "engine_cpu_ms", "service_mean_batch",
               "client_cpu_cores", "service_cpu_ms", "cpu_ceiling"]
    report = Report(
        "serve", f"Service vs engine alone: {manifest.name} v{manifest.version}, single-tile GeoTIFFs",
        {"repo": str(repo), "specialist": manifest.name, "processes": args.processes, "threads": args.threads,
         "runners": args.runners,
         "max_batch": args.max_batch,
         "tile": manifest.tile_size, "bare": bare},
        rows, columns, goals,
        ["engine latencies are per engine call of engine_batch tiles; service latencies per request (one tile); "
         "client_cpu_cores is the CPU the load generator itself used (it shares the machine with the service)",
         "service_cpu_ms: CPU of the service and its decode workers a request; cpu_ceiling: the ratio the service "
         "would reach with every core busy at that CPU a request, the client's included "
         "(bench.harness.cpu_bound_seconds): a goal above it needs less CPU a request, not better overlap",
         "bare (in the setup): bench.bare at the goal's concurrency, a server that receives each tile and reads it "
         "with GDAL and does nothing else; its ceiling adds the engine's CPU a tile at the goal's batch (engine_cpu_ms, "
         "this process's CPU while the engine alone ran): the most any server that reads its tiles reaches here"],
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

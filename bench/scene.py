"""A whole generated scene posted to the service: wall time against the engine alone, and server peak RSS.

    python -m bench.scene [--size 4096] [--task landcover-seg] [--soak N]

The scene is a mosaic of tile-sized synthetic scenes (so every tile looks like what the heads were
trained on), six Sentinel-2 bands stored as uint16 (B02 B03 B04 B08 B11 B12), posted raw as one
GeoTIFF. The baseline runs the same engine class with the same settings in this process on
exactly the tiles the service cuts (``mapex_serve.tiling`` on the same file), read ahead so that
only the engine calls are timed (``--runners`` of them at once, as the service runs them). The
server's peak memory is its processes' VmHWM after the request and the peak of its slabs in the
tmpfs (the upload, which no process maps whole). Goals: wall time <= 1.15 x
engine-only time; server peak RSS < 1.5 GiB for a 4096 x 4096 scene. ``--soak N`` posts the scene N
more times and notes the server's RSS after each: it must level off (a long-running service that
grows a little each scene runs out of memory in the end).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.harness import (
    Goal,
    PeakPss,
    Report,
    ServiceProcess,
    cpu_bound_seconds,
    ensure_repo,
    find_entry,
    post_scene,
    resolve_engine_threads,
    service_arguments,
)
from mapex_serve.engine import Engine
from mapex_serve.inputs import RequestScene, SourceFile, UploadedFile
from mapex_serve.predict import tile_batches
from mapex_serve.settings import Settings
from mapex_serve.units import UnitOverrides
from training.data import SceneConfig, generate_scene, mosaic, write_scene_geotiff

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
GOAL_WALL, GOAL_RSS_GIB, GOAL_SIZE = 1.15, 1.5, 4096
MODES = {"on": {}, "in-process": {"MAPEX_DECODE_WORKERS": "0"}}
#: Batches the engine-alone baseline reads before each timed stretch (256 RGB batches of 32 px: 100 MB).
_READ_AHEAD = 256


def make_scene(size: int, tile: int, path: Path) -> Path:
    """A ``size`` x ``size`` mosaic of ``tile``-pixel synthetic scenes, written as a six-band uint16 GeoTIFF."""
    cells = -(-size // tile)
    scenes = [generate_scene(np.random.default_rng(seed), SceneConfig(size=tile))
              for seed in tqdm(range(cells * cells), desc="generating the scene", unit="cell", leave=False)]
    big = mosaic(scenes, columns=cells)
    del scenes
    big.bands = {b: big.bands[b][:size, :size] for b in BANDS}
    return write_scene_geotiff(big, path, BANDS)


@dataclass(frozen=True)
class EngineAlone:
    """The engine alone over a scene's tiles: wall ``seconds``, ``tiles``, its ``calls``' seconds summed
    (``runners`` at once: up to ``runners`` x ``seconds``) and the CPU they took (``cpu_seconds``)."""

    seconds: float
    tiles: int
    calls: int
    call_seconds: float
    cpu_seconds: float


def engine_seconds(engine: Engine, files: Sequence[UploadedFile | SourceFile], max_batch: int,
                   warm_value: float = 0.1, runners: int = 1) -> EngineAlone:
    """The wall time ``engine.run`` takes over the tiles the service cuts from ``files``, ``runners`` batches at
    once (threads sharing the session, as the service's runners do), the tiles, and the calls' summed time.

    Batches are read ``_READ_AHEAD`` at a time before each timed stretch, so that reading never
    shares the cores with the timed runs and memory stays bounded (a 20,000^2 job's tiles take 5.7 GB).
    """
    manifest = engine.manifest
    engine.run(np.full((max_batch, *manifest.input.shape[1:]), warm_value, np.float32))  # warm-up at this shape
    seconds, cpu, n, calls = 0.0, 0.0, 0, []

    def run(batch: np.ndarray) -> None:
        start = time.perf_counter()
        engine.run(batch)
        calls.append(time.perf_counter() - start)

    with RequestScene(files) as scene, ThreadPoolExecutor(runners) as pool:  # the service's own read path
        reader = scene.reader(manifest.band_names, UnitOverrides(), model=manifest)
        tiles, batches = tile_batches(reader, manifest, max_batch)
        with tqdm(total=-(-len(tiles) // max_batch), desc="engine alone", unit="batch", leave=False) as bar:
            while data := [b.data for b in islice(batches, _READ_AHEAD)]:
                start, cpu_start = time.perf_counter(), time.process_time()  # the runs are all this process does
                for _ in pool.map(run, data):
                    bar.update()
                seconds, cpu = seconds + time.perf_counter() - start, cpu + time.process_time() - cpu_start
                n += sum(len(d) for d in data)
    return EngineAlone(seconds, n, len(calls), sum(calls), cpu)


def engine_metrics(server: ServiceProcess, specialist: str) -> tuple[float, float]:
    """The service's engine calls so far for ``specialist``: their summed seconds and their count (/metrics)."""
    name = f'mapex_compute_duration_seconds_{{}}{{{{specialist="{specialist}"}}}}'
    return server.metric(name.format("sum")), server.metric(name.format("count"))


def soak_note(mode: str, server: ServiceProcess, args: argparse.Namespace, body: bytes) -> str:
    """The server's RSS after each of ``args.soak`` more scenes, and how much it grew after the third."""
    rss = []
    for _ in tqdm(range(args.soak), desc=f"{mode}: soak", unit="scene", leave=False):
        post_scene(server.url, args.task, args.modality, body)
        rss.append(server.rss_bytes() / 2**20)
    grown = f"; after the third: {rss[-1] - rss[2]:+.0f} MiB" if len(rss) > 3 else ""
    return (f"{mode}: server RSS after each of {len(rss)} more scenes (MiB): {', '.join(f'{r:.0f}' for r in rss)}"
            f"{grown}; peak then {server.peak_rss_bytes() / 2**30:.2f} GiB")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scene", description=__doc__.split("\n\n")[0])
    service_arguments(p, "landcover-seg", "task posted to (default landcover-seg: a mask)")
    p.add_argument("--size", type=int, default=GOAL_SIZE, help="scene width and height in pixels")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                   help="on: as shipped; in-process: MAPEX_DECODE_WORKERS=0")
    p.add_argument("--predict-parts", type=int, nargs="+", default=[], metavar="N",
                   help="then the service as shipped with MAPEX_PREDICT_PARTS=N for each N (the most parts a scene "
                        "splits into), as modes 'on, N parts'")
    p.add_argument("--rounds", type=int, default=1, help="rounds a mode, the service and the engine alone taking "
                   "turns to go first; the goal is the median round's ratio (one round's moved by 0.1 here)")
    p.add_argument("--soak", type=int, default=0, metavar="N", help="then post the scene N more times and note the "
                   "server's RSS after each, to see it level off")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.soak < 0 or any(n < 1 for n in args.predict_parts):
        p.error("--rounds and --predict-parts must be at least 1, --soak at least 0")
    resolve_engine_threads(args)

    repo = ensure_repo(args.repo, args.checkpoint)
    entry, manifest = find_entry(repo, args.task, [args.modality])
    settings = Settings(model_repo=repo, providers=["cpu"], intra_op_threads=args.threads, engine_runners=args.runners,
                        max_batch=args.max_batch)
    engine = Engine(entry, manifest, settings)
    with tempfile.TemporaryDirectory(prefix="bench-scene-") as tmp:
        path = make_scene(args.size, manifest.tile_size, Path(tmp) / "scene.tif")
        body = path.read_bytes()
        env = {"MAPEX_MAX_BATCH": str(args.max_batch), "MAPEX_INTRA_OP_THREADS": str(args.threads),
               "MAPEX_ENGINE_RUNNERS": str(args.runners), "MAPEX_MAX_UPLOAD_MB": str(len(body) // 2**20 + 16), "MAPEX_REQUEST_TIMEOUT_S": "3600"}
        rows, notes = [], []
        modes = {m: MODES[m] for m in args.modes} | {f"on, {n} parts": {"MAPEX_PREDICT_PARTS": str(n)}
                                                     for n in args.predict_parts}
        for mode, mode_env in modes.items():
            with ServiceProcess(repo, {**env, **mode_env}) as server:
                shm_idle = server.shm_bytes()
                rss_idle, pss_idle = server.peak_rss_bytes() + shm_idle, server.pss_bytes() + shm_idle
                for round_ in range(1, args.rounds + 1):
                    timed: dict[str, float] = {}
                    for what in sorted(("engine", "service"), reverse=round_ % 2 == 0):  # the first goes first in turn
                        if what == "service":
                            print(f"{mode}, round {round_}: posting {args.size} x {args.size} ({len(body) / 2**20:.0f} "
                                  f"MiB) to {args.task} ...", file=sys.stderr)
                            before, cpu = engine_metrics(server, manifest.name), server.cpu_seconds()
                            r, timed["service"] = post_scene(server.url, args.task, args.modality, body)
                            service_cpu = server.cpu_seconds() - cpu
                            calls_s, calls = (a - b for a, b in zip(engine_metrics(server, manifest.name), before,
                                                                    strict=True))
                        else:  # the server idles meanwhile
                            alone = engine_seconds(engine, [UploadedFile(path.name, body)], args.max_batch,
                                                   runners=args.runners)
                    rows.append({"mode": mode, "round": round_, "size": args.size, "specialist": manifest.name,
                                 "upload_mib": len(body) / 2**20, "tiles": alone.tiles, "service_s": timed["service"],
                                 "engine_s": alone.seconds, "ratio": timed["service"] / alone.seconds,
                                 "engine_busy": calls_s / (args.runners * timed["service"]),
                                 "service_call_ms": calls_s / max(calls, 1) * 1e3,
                                 "alone_call_ms": alone.call_seconds / alone.calls * 1e3,
                                 "service_cpu_s": service_cpu, "engine_cpu_s": alone.cpu_seconds,
                                 "cpu_floor": cpu_bound_seconds(service_cpu) / alone.seconds,
                                 "response_mib": len(r.content) / 2**20})
                rss_peak = server.peak_rss_bytes()
                with PeakPss(server) as pss:  # untimed: reading smaps_rollup 20 times a second cost the service 8%
                    post_scene(server.url, args.task, args.modality, body)
                if args.soak > 0:
                    notes.append(soak_note(mode, server, args, body))
            for row in rows:
                if row["mode"] == mode:
                    row.update(server_idle_rss_mib=rss_idle / 2**20,
                               server_peak_rss_mib=(rss_peak + pss.shm_peak) / 2**20,
                               server_idle_pss_mib=pss_idle / 2**20, server_peak_pss_mib=pss.peak / 2**20,
                               server_peak_shm_mib=pss.shm_peak / 2**20)

    goals = []
    if shipped := sorted((r for r in rows if r["mode"] == "on"), key=lambda r: r["ratio"]):
        median = shipped[len(shipped) // 2]  # the middle round (the upper one of an even count)
        peak_gib, idle_gib = median["server_peak_rss_mib"] / 1024, median["server_idle_rss_mib"] / 1024
        ratios = ", ".join(f"{r['ratio']:.3f}" for r in shipped)
        spread = f"; rounds, sorted: {ratios}" if len(shipped) > 1 else ""
        goals.append(Goal("service wall time / engine-only time" + (" (median round)" if len(shipped) > 1 else ""),
                          median["ratio"], GOAL_WALL, at_most=True,
                          detail=f"; {median['service_s']:.1f} s vs {median['engine_s']:.1f} s for {median['tiles']:,} "
                                 f"tiles{spread}; the least its CPU allows on these cores: {median['cpu_floor']:.3f} "
                                 f"({median['service_cpu_s']:.1f} s of service CPU, the engine alone "
                                 f"{median['engine_cpu_s']:.1f} s)",
                          rounds=tuple(r["ratio"] for r in shipped) if len(shipped) > 1 else ()))
        notes.append(f"server peak RSS {peak_gib:.2f} GiB (idle {idle_gib:.2f} GiB); proportional (PSS) "
                     f"{median['server_peak_pss_mib'] / 1024:.2f} GiB (idle {median['server_idle_pss_mib'] / 1024:.2f})")
        if args.size >= GOAL_SIZE:
            goals.append(Goal(f"server peak RSS (GiB), {args.size} x {args.size} scene", peak_gib, GOAL_RSS_GIB,
                              at_most=True, detail=f"; idle {idle_gib:.2f} GiB"))
        else:
            notes.append(f"the RSS goal is for a {GOAL_SIZE} x {GOAL_SIZE} scene: run with --size {GOAL_SIZE}")
    notes.append("modes: on = as shipped (decode workers), in-process = MAPEX_DECODE_WORKERS=0; RSS is the sum of "
                 "each process's peak (service and decode workers: every library counts once a process) and the peak "
                 "of the service's slabs in /dev/shm (server_peak_shm_mib: the upload, written there with pwrite and "
                 "read with pread, is in no process's RSS); PSS counts each page once, with the slabs, sampled every "
                 "50 ms during one more, untimed post of the scene (a lower bound of the peak, as the RSS sum is an "
                 "upper one)")
    notes.append("engine_busy: the service's engine calls for the scene (/metrics), summed, over runners x service_s; "
                 "service_call_ms and alone_call_ms: an engine call's mean time in the service and alone (the same "
                 "batches; longer in the service where decoding shares the cores)")
    notes.append("service_cpu_s: CPU of the service and its decode workers for the timed post; engine_cpu_s: the "
                 "engine alone's; cpu_floor: the ratio the service would reach keeping every core busy with that CPU "
                 "(bench.harness.cpu_bound_seconds): a goal below it needs less CPU, not better overlap")
    columns = ["mode", "round", "size", "specialist", "upload_mib", "tiles", "service_s", "engine_s", "ratio",
               "engine_busy", "service_call_ms", "alone_call_ms", "service_cpu_s", "engine_cpu_s", "cpu_floor",
               "server_idle_rss_mib", "server_peak_rss_mib",
               "server_idle_pss_mib", "server_peak_pss_mib", "server_peak_shm_mib", "response_mib"]
    report = Report("scene", f"Whole scene through the service: {args.size} x {args.size}, six uint16 bands",
                    {"repo": str(repo), "task": args.task, "threads": args.threads, "runners": args.runners,
                     "max_batch": args.max_batch, "rounds": args.rounds},
                    rows, columns, goals, notes)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A whole Sentinel-1-sized scene as a job: wall time against the engine alone, and the server's peak RSS.

    [MAPEX_JOB_PARTS=N] python -m bench.jobs [--size 20000] [--task flood] [--decode-workers N]

The scene is two bands (VV, VH in dB, float32) of ``--size`` x ``--size`` pixels: a 1024-pixel
mosaic of tile-sized synthetic SAR scenes repeated over the grid, written block by block as a tiled
GeoTIFF (never whole in memory), uploaded as a job (streamed to the jobs volume) with GeoJSON off,
and followed to the end. The baseline runs the same engine in this process on exactly the tiles the
job cuts, counting only the engine calls. The server's peak resident memory is its VmHWM over the job
(reset before), summed over the service and its decode workers; the CPU of the service process and
of each worker over the job comes from ``/proc`` (the workers read, blend and write the job; the
single-tile probes sent meanwhile are in it too, 30 of them). Goals: server peak RSS < 2 GiB for a 20,000 x 20,000 scene; wall time as close to the
engine's as the service's own work allows (reported, not a goal of this issue).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from bench.harness import (
    Goal,
    Report,
    ServiceProcess,
    ensure_repo,
    find_entry,
    median,
    resolve_engine_threads,
    service_arguments,
)
from bench.scene import engine_seconds
from mapex_serve.engine import Engine
from mapex_serve.inputs import SourceFile
from mapex_serve.local import cpu_seconds, decode_workers
from mapex_serve.settings import Settings
from training.data import SceneConfig, generate_scene, mosaic

GOAL_RSS_GIB, GOAL_SIZE = 2.0, 20_000
BASE = 1024  # the mosaic that is repeated: 32 x 32 cells of the generator's tile-sized scenes


def make_scene(size: int, tile: int, path: Path) -> Path:
    """``size`` x ``size`` VV, VH (dB) as a tiled float32 GeoTIFF, written in strips of 1024 rows."""
    cells = BASE // tile
    scenes = [generate_scene(np.random.default_rng(seed), SceneConfig(size=tile, flood_prob=0.6))
              for seed in tqdm(range(cells * cells), desc="generating the base mosaic", unit="cell", leave=False)]
    big = mosaic(scenes, columns=cells)
    base = np.stack([big.bands["VV"], big.bands["VH"]]).astype(np.float32)
    profile = dict(driver="GTiff", count=2, width=size, height=size, dtype="float32", crs="EPSG:32633",
                   transform=rasterio.transform.from_origin(500000, 5000000, 10, 10), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", predictor=3, bigtiff="yes")
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = ("VV", "VH")
        for r in tqdm(range(0, size, BASE), desc="writing the scene", unit="strip", leave=False):
            h = min(BASE, size - r)
            reps = -(-size // BASE)
            strip = np.tile(base[:, :h], (1, 1, reps))[:, :, :size]
            dst.write(strip, window=Window(0, r, size, h))
    return path


def single_tile_request(tile: int) -> bytes:
    """A one-tile SAR upload (VV, VH in dB), the interactive request whose latency a running job must not ruin."""
    data = np.stack([np.full((tile, tile), -12, np.float32), np.full((tile, tile), -19, np.float32)])
    with rasterio.io.MemoryFile() as mem:
        with mem.open(driver="GTiff", count=2, width=tile, height=tile, dtype="float32", crs="EPSG:32633",
                      transform=rasterio.transform.from_origin(500000, 5000000, 10, 10)) as dst:
            dst.write(data)
            dst.descriptions = ("VV", "VH")
        return mem.read()


def latencies(url: str, task: str, body: bytes, n: int) -> list[float]:
    """Seconds of ``n`` sequential single-tile /predict requests."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        r = httpx.post(f"{url}/predict/{task}?format=json", content=body, headers={"Content-Type": "image/tiff"},
                       timeout=60)
        out.append(time.perf_counter() - start)
        if r.status_code != 200:
            raise SystemExit(f"/predict answered {r.status_code}: {r.text[:300]}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[0])
    service_arguments(p, "flood", "task of the job (default flood: a SAR mask)")
    p.add_argument("--size", type=int, default=GOAL_SIZE, help="scene width and height in pixels")
    p.add_argument("--decode-workers", type=int, help="MAPEX_DECODE_WORKERS (default: the service's, cores - 1)")
    args = p.parse_args(argv)
    resolve_engine_threads(args)

    repo = ensure_repo(args.repo, args.checkpoint)
    entry, manifest = find_entry(repo, args.task, ["SAR"])
    settings = Settings(model_repo=repo, providers=["cpu"], intra_op_threads=args.threads, engine_runners=args.runners,
                        max_batch=args.max_batch)
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        path = make_scene(args.size, manifest.tile_size, Path(tmp) / "scene.tif")
        env = {"MAPEX_MAX_BATCH": str(args.max_batch), "MAPEX_INTRA_OP_THREADS": str(args.threads),
               "MAPEX_ENGINE_RUNNERS": str(args.runners), "MAPEX_JOBS_DIR": str(Path(tmp) / "jobs")}
        if args.decode_workers is not None:
            env["MAPEX_DECODE_WORKERS"] = str(args.decode_workers)
        with ServiceProcess(repo, env) as server:
            probe = single_tile_request(manifest.tile_size)
            idle_latency = median(latencies(server.url, args.task, probe, 30))
            rss_idle = server.reset_peak_rss()
            print(f"submitting {args.size} x {args.size} ({path.stat().st_size / 2**20:.0f} MiB) as a job ...",
                  file=sys.stderr)
            workers = decode_workers(server.pid)
            cpu = {pid: cpu_seconds(pid) for pid in [server.pid, *workers]}
            start = time.perf_counter()
            with path.open("rb") as f:
                r = httpx.post(f"{server.url}/jobs/{args.task}", params={"geojson": "false"},
                               files={"file": (path.name, f, "image/tiff")}, timeout=3600)
            if r.status_code != 202:
                raise SystemExit(f"the service answered {r.status_code}: {r.text[:500]}")
            job = r.json()
            busy_latency: list[float] = []
            with tqdm(desc="job", unit="tile", leave=False) as bar:
                while job["state"] not in ("done", "failed", "cancelled"):
                    time.sleep(1)
                    if job["state"] == "running" and len(busy_latency) < 30:
                        busy_latency += latencies(server.url, args.task, probe, 3)
                    job = httpx.get(f"{server.url}/jobs/{job['id']}", timeout=30).json()
                    bar.total, bar.n = job["progress"]["tiles_total"], job["progress"]["tiles_done"]
                    bar.refresh()
            wall = time.perf_counter() - start
            cpu = {pid: cpu_seconds(pid) - before for pid, before in cpu.items()}
            if job["state"] != "done":
                raise SystemExit(f"the job ended {job['state']}: {job.get('error')}")
            rss_peak = server.peak_rss_bytes()
            result = httpx.get(f"{server.url}/jobs/{job['id']}/result?format=geotiff", timeout=600).content
        alone = engine_seconds(Engine(entry, manifest, settings), [SourceFile(path.name, str(path))],
                               args.max_batch, warm_value=-12, runners=args.runners)
        engine_s, tiles = alone.seconds, alone.tiles

    row = {"size": args.size, "specialist": manifest.name, "tiles": tiles, "job_s": wall, "engine_s": engine_s,
           "ratio": wall / engine_s, "server_idle_rss_mib": rss_idle / 2**20, "server_peak_rss_mib": rss_peak / 2**20,
           "result_mib": len(result) / 2**20, "predict_p50_idle_ms": idle_latency * 1000,
           "predict_p50_during_job_ms": median(busy_latency) * 1000 if busy_latency else None,
           "decode_workers": len(workers), "job_parts": os.environ.get("MAPEX_JOB_PARTS", "auto"),
           "service_cpu_s": cpu[server.pid],
           "workers_cpu_s": " + ".join(f"{cpu[w]:.2f}" for w in workers) or "-",
           "workers_cpu_ms_per_tile": sum(cpu[w] for w in workers) / tiles * 1000}
    peak_gib = rss_peak / 2**30
    goals, notes = [], [f"job wall time / engine-only time {row['ratio']:.2f} ({wall:.0f} s vs {engine_s:.0f} s for "
                        f"{tiles:,} tiles; the job's time includes the upload, the COG with overviews and its "
                        f"strips)"]
    if busy_latency:
        notes.append(f"a single-tile /predict while the job runs: p50 {row['predict_p50_during_job_ms']:.1f} ms vs "
                     f"{row['predict_p50_idle_ms']:.1f} ms idle ({len(busy_latency)} requests; the job's tiles wait "
                     f"behind interactive ones, but share the cores)")
    if args.size >= GOAL_SIZE:
        goals.append(Goal(f"server peak RSS (GiB), {args.size} x {args.size} two-band scene", peak_gib, GOAL_RSS_GIB,
                          at_most=True, detail=f"; idle {rss_idle / 2**30:.2f} GiB"))
    else:
        notes.append(f"server peak RSS {peak_gib:.2f} GiB; the RSS goal is for {GOAL_SIZE} x {GOAL_SIZE}: run with "
                     f"--size {GOAL_SIZE}")
    report = Report("jobs", f"Whole scene as a job: {args.size} x {args.size}, VV and VH float32",
                    {"repo": str(repo), "task": args.task, "threads": args.threads, "max_batch": args.max_batch},
                    [row], list(row), goals, notes)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A whole generated scene posted to the service: wall time against the engine alone, and server peak RSS.

    python -m bench.scene [--size 4096] [--task landcover-seg]

The scene is a mosaic of tile-sized synthetic scenes (so every tile looks like what the heads were
trained on), six Sentinel-2 bands stored as uint16 (B02 B03 B04 B08 B11 B12), posted raw as one
GeoTIFF. The baseline runs the same engine class with the same settings in this process on
exactly the tiles the service cuts (``mapex_serve.tiling`` on the same file), counting only the
engine calls. The server's peak resident memory is its VmHWM after the request. Goals: wall time
<= 1.15 x engine-only time; server peak RSS < 1.5 GiB for a 4096 x 4096 scene.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from bench.harness import Goal, Report, ServiceProcess, ensure_repo, find_entry, peak_rss_bytes, service_arguments
from mapex_serve.engine import Engine
from mapex_serve.inputs import RequestScene, SourceFile, UploadedFile
from mapex_serve.predict import tile_batches
from mapex_serve.settings import Settings
from mapex_serve.units import UnitOverrides
from training.data import SceneConfig, generate_scene, mosaic, write_scene_geotiff

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
GOAL_WALL, GOAL_RSS_GIB, GOAL_SIZE = 1.15, 1.5, 4096


def make_scene(size: int, tile: int, path: Path) -> Path:
    """A ``size`` x ``size`` mosaic of ``tile``-pixel synthetic scenes, written as a six-band uint16 GeoTIFF."""
    cells = -(-size // tile)
    scenes = [generate_scene(np.random.default_rng(seed), SceneConfig(size=tile))
              for seed in tqdm(range(cells * cells), desc="generating the scene", unit="cell", leave=False)]
    big = mosaic(scenes, columns=cells)
    del scenes
    big.bands = {b: big.bands[b][:size, :size] for b in BANDS}
    return write_scene_geotiff(big, path, BANDS)


def engine_seconds(engine: Engine, files: Sequence[UploadedFile | SourceFile], max_batch: int,
                   warm_value: float = 0.1) -> tuple[float, int]:
    """Seconds spent in ``engine.run`` over the tiles the service cuts from ``files``, and how many tiles."""
    manifest = engine.manifest
    with RequestScene(files) as scene:  # the service's own read path
        reader = scene.reader(manifest.band_names, UnitOverrides())
        tiles, batches = tile_batches(reader, manifest, max_batch)
        seconds, n = 0.0, 0
        engine.run(np.full((max_batch, *manifest.input.shape[1:]), warm_value, np.float32))  # warm-up at this shape
        for batch in tqdm(batches, total=-(-len(tiles) // max_batch), desc="engine alone", unit="batch", leave=False):
            start = time.perf_counter()
            engine.run(batch.data)
            seconds += time.perf_counter() - start
            n += len(batch.tiles)
    return seconds, n


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scene", description=__doc__.split("\n\n")[0])
    service_arguments(p, "landcover-seg", "task posted to (default landcover-seg: a mask)")
    p.add_argument("--size", type=int, default=GOAL_SIZE, help="scene width and height in pixels")
    args = p.parse_args(argv)

    repo = ensure_repo(args.repo, args.checkpoint)
    entry, manifest = find_entry(repo, args.task, [args.modality])
    settings = Settings(model_repo=repo, providers=["cpu"], intra_op_threads=args.threads, max_batch=args.max_batch)
    with tempfile.TemporaryDirectory(prefix="bench-scene-") as tmp:
        path = make_scene(args.size, manifest.tile_size, Path(tmp) / "scene.tif")
        body = path.read_bytes()
        env = {"MAPEX_MAX_BATCH": str(args.max_batch), "MAPEX_INTRA_OP_THREADS": str(args.threads),
               "MAPEX_MAX_UPLOAD_MB": str(len(body) // 2**20 + 16), "MAPEX_REQUEST_TIMEOUT_S": "3600"}
        with ServiceProcess(repo, env) as server:
            rss_idle = peak_rss_bytes(server.pid)
            print(f"posting {args.size} x {args.size} ({len(body) / 2**20:.0f} MiB) to {args.task} ...", file=sys.stderr)
            start = time.perf_counter()
            r = httpx.post(f"{server.url}/predict/{args.task}?modality={args.modality}", content=body,
                           headers={"Content-Type": "image/tiff"}, timeout=3600)
            wall = time.perf_counter() - start
            if r.status_code != 200:
                raise SystemExit(f"the service answered {r.status_code}: {r.text[:500]}")
            rss_peak = peak_rss_bytes(server.pid)
        engine_s, tiles = engine_seconds(Engine(entry, manifest, settings),
                                          [UploadedFile(path.name, path.read_bytes())], args.max_batch)

    row = {"size": args.size, "specialist": manifest.name, "upload_mib": len(body) / 2**20, "tiles": tiles,
           "service_s": wall, "engine_s": engine_s, "ratio": wall / engine_s,
           "server_idle_rss_mib": rss_idle / 2**20, "server_peak_rss_mib": rss_peak / 2**20,
           "response_mib": len(r.content) / 2**20}
    peak_gib = rss_peak / 2**30
    goals = [Goal("service wall time / engine-only time", row["ratio"], GOAL_WALL, at_most=True,
                  detail=f"; {wall:.1f} s vs {engine_s:.1f} s for {tiles:,} tiles")]
    notes = [f"server peak RSS {peak_gib:.2f} GiB (idle {rss_idle / 2**30:.2f} GiB)"]
    if args.size >= GOAL_SIZE:
        goals.append(Goal(f"server peak RSS (GiB), {args.size} x {args.size} scene", peak_gib, GOAL_RSS_GIB,
                          at_most=True, detail=f"; idle {rss_idle / 2**30:.2f} GiB"))
    else:
        notes.append(f"the RSS goal is for a {GOAL_SIZE} x {GOAL_SIZE} scene: run with --size {GOAL_SIZE}")
    report = Report("scene", f"Whole scene through the service: {args.size} x {args.size}, six uint16 bands",
                    {"repo": str(repo), "task": args.task, "threads": args.threads, "max_batch": args.max_batch},
                    [row], list(row), goals, notes)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a request's CPU goes: each stage of the service's request path, timed in this process, and a cost model.

    python -m bench.stages --repo /tmp/dev/models [--task flood --modality SAR] [--scene 2048]

The stages are the service's own functions, called as ``mapex_serve.predict`` and the route call
them, one at a time: parsing the upload (``upload.read_upload`` on a Starlette request fed 64 KiB
chunks, multipart and raw), opening the files in ``/vsimem`` with band identification
(``RequestScene``), routing (``route_scene``), the unit decision with its plausibility sample
(``RequestScene.reader``), reading windows into float32 batches (``read_batches``), the engine
(``Engine.run`` at batch 1 and at the maximum batch), blending (``MaskBlender``) or aggregation
(``ClassAggregator``), assembling the prediction's report, encoding the answer (``as_geotiff`` COG,
``as_json`` rendered by ``JSONResponse``) and closing the files. Each is timed with
``time.process_time`` (every thread of the process: ONNX Runtime's pool included), ``thread_time``
and wall time; the median over repeats is reported, each repeat on freshly opened files.

Two cases: a single-tile request (an upload of one tile) and a large scene (``--scene`` pixels a
side), both at the specialist's tile size and, with a copy of its manifest at ``--base-tile``
pixels, at the tile size of the base-size specialist (every stage but the engine runs the same
code at that size: only the tile grid changes). What the stages do not cover is measured against
the real service (``bench.harness.ServiceProcess``, uvicorn on loopback) at concurrency 1: its
process CPU per request (``/proc/<pid>/stat``) and its latency, minus the sum of the stages, is the
HTTP, FastAPI and asyncio overhead; ``predict()`` run in this process on an event loop with the
service's batcher splits that into the orchestration (threads, batcher) and the HTTP server.

The machine is shared: CPU times are what to rely on, wall times are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse
from starlette.requests import Request

from bench.flops import H200_FP16_TFLOPS, assumed_engine_tiles_s, kept_experts
from bench.harness import RESULTS, Report, ServiceProcess, markdown_table, mask_specialist, repo_arguments
from mapex_serve.batcher import Batcher
from mapex_serve.engine import Engine
from mapex_serve.inputs import RequestScene, UploadedFile
from mapex_serve.metrics import Metrics
from mapex_serve.predict import Prediction, overlap_for, predict, route_scene, tile_batches
from mapex_serve.repository import Manifest
from mapex_serve.responses import as_geotiff, as_json, inputs_summary
from mapex_serve.settings import Settings
from mapex_serve.tiling import ClassAggregator, MaskBlender, tile_cells
from mapex_serve.units import UnitOverrides, ValueStats, check_plausible
from mapex_serve.upload import read_upload
from training.data import SceneConfig, generate_scene, mosaic, write_scene_geotiff

CHUNK = 64 * 1024  # what uvicorn hands the app per receive() on loopback, about
MAX_PIXELS = 64_000_000

#: Stage, what it is, and where it runs in the service today.
STAGES: list[tuple[str, str, str]] = [
    ("parse_raw", "upload: raw body (image/tiff) received", "event loop"),
    ("parse_multipart", "upload: multipart/form-data parsed", "event loop"),
    ("open", "open in /vsimem, identify bands", "thread"),
    ("route", "route to a specialist", "thread"),
    ("units", "grid, unit decision, plausibility sample", "thread"),
    ("sample", "  of which: the 5 x 5 sample windows, read again (blocks cached)", "thread"),
    ("stats", "  of which: percentiles + plausibility check", "thread"),
    ("read", "read windows -> float32 tiles (read_batches)", "thread"),
    ("engine_b1", "engine, batch 1 (ONNX Runtime CPU, 2 threads)", "engine thread"),
    ("engine_bmax", "engine, max batch (per tile: / batch)", "engine thread"),
    ("blend", "MaskBlender: add every tile, result", "event loop"),
    ("aggregate", "ClassAggregator: add every tile, result", "event loop"),
    ("report", "prediction report (masked pixels, inputs, cells)", "event loop"),
    ("encode_geotiff", "as_geotiff (COG)", "thread"),
    ("encode_json", "as_json + JSONResponse (mask: class areas)", "event loop"),
    ("encode_json_class", "as_json + JSONResponse (class head)", "event loop"),
    ("close", "close the files", "event loop"),
]


@dataclass
class Cost:
    """Median seconds of one call: process CPU (all threads), this thread's CPU, wall; over ``n`` repeats."""

    cpu: float
    thread: float
    wall: float
    n: int


def measure(fn: Callable[[Any], object], repeats: int, setup: Callable[[], Any] | None = None,
            after: Callable[[Any], object] | None = None, warmup: int = 1) -> Cost:
    """``fn(setup())`` timed ``repeats`` times after ``warmup`` untimed calls; ``after(arg)`` runs untimed."""
    cpu, thread, wall = [], [], []
    for i in range(warmup + repeats):
        arg = setup() if setup else None
        c0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
        fn(arg)
        c1, t1, w1 = time.process_time(), time.thread_time(), time.perf_counter()
        if after:
            after(arg)
        if i >= warmup:
            cpu.append(c1 - c0)
            thread.append(t1 - t0)
            wall.append(w1 - w0)
    return Cost(statistics.median(cpu), statistics.median(thread), statistics.median(wall), repeats)


# -- inputs ------------------------------------------------------------------------------------------


def make_upload(size: int, bands: Sequence[str], path: Path, cell: int = 256) -> bytes:
    """A ``size`` x ``size`` synthetic scene of ``bands`` as GeoTIFF bytes (a mosaic of a few cells, cycled)."""
    if size <= cell:
        scene = generate_scene(np.random.default_rng(0), SceneConfig(size=size))
    else:
        cells = -(-size // cell)
        distinct = [generate_scene(np.random.default_rng(s), SceneConfig(size=cell)) for s in range(4)]
        scene = mosaic([distinct[i % 4] for i in range(cells * cells)], columns=cells)
        scene.bands = {b: scene.bands[b][:size, :size] for b in bands}
    return write_scene_geotiff(scene, path, bands).read_bytes()


def multipart_body(data: bytes, name: str = "scene.tif") -> tuple[bytes, str]:
    """A multipart/form-data body with one ``file`` part, as curl -F sends it, and its content type."""
    boundary = "----mapexbenchboundary7MA4YWxkTrZu0gW"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/tiff\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def starlette_request(body: bytes, content_type: str) -> Request:
    """A Starlette request whose body arrives in ``CHUNK``-byte messages, as uvicorn delivers it."""
    chunks = [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]
    position = 0

    async def receive() -> dict:
        nonlocal position
        if position >= len(chunks):
            return {"type": "http.disconnect"}
        chunk, position = chunks[position], position + 1
        return {"type": "http.request", "body": chunk, "more_body": position < len(chunks)}

    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers, "query_string": b""}
    return Request(scope, receive)


# -- one case: every stage ---------------------------------------------------------------------------


def stage_costs(data: bytes, manifest: Manifest, engine: Engine | None, max_batch: int, repeats: int,
                loop: asyncio.AbstractEventLoop) -> tuple[dict[str, Cost], int]:
    """Every stage of one request for the upload ``data``; and how many tiles it has."""
    files = [UploadedFile("scene.tif", data)]
    k, size = len(manifest.classes), manifest.tile_size
    overrides, out = UnitOverrides(), {}

    out["parse_raw"] = measure(lambda _: loop.run_until_complete(read_upload(
        starlette_request(data, "image/tiff"), 2**31)), repeats)
    body, content_type = multipart_body(data)
    out["parse_multipart"] = measure(lambda _: loop.run_until_complete(read_upload(
        starlette_request(body, content_type), 2**31)), repeats)

    def opened() -> RequestScene:
        return RequestScene(files)

    def routed() -> tuple[RequestScene, Any]:
        scene = opened()
        return scene, route_scene(scene, [manifest], None)

    def ready() -> tuple[RequestScene, Any, Any]:
        scene, route = routed()
        return scene, route, scene.reader(route.bands, overrides, 64, MAX_PIXELS, route.manifest)

    held: list[RequestScene] = []  # opened in the timed call, closed after it
    out["open"] = measure(lambda _: held.append(opened()), repeats, after=lambda _: held.pop().close())
    out["route"] = measure(lambda a: route_scene(a, [manifest], None), repeats, opened, lambda a: a.close())
    out["units"] = measure(lambda a: a[0].reader(a[1].bands, overrides, 64, MAX_PIXELS, a[1].manifest), repeats, routed,
                           lambda a: a[0].close())
    out["sample"] = measure(lambda a: a[2].samples(64), repeats, ready, lambda a: a[0].close())

    def check(a: tuple) -> None:
        for b, (stored, physical) in zip(a[2].bands, a[3], strict=True):
            check_plausible(b.conversion, ValueStats.of(stored, physical, b.dataset.dtypes[b.index - 1]), b.file)

    out["stats"] = measure(check, repeats, lambda: _with_samples(ready()), lambda a: a[0].close())

    def read_all(a: tuple) -> None:
        _, batches = tile_batches(a[2], manifest, max_batch)
        for _ in batches:
            pass

    out["read"] = measure(read_all, repeats, ready, lambda a: a[0].close())

    # One real batch of this scene's tiles: the engine's input, and (at the specialist's size) its output.
    scene, route, reader = ready()
    tiles, batches = tile_batches(reader, manifest, max_batch)
    first = next(batches)
    for _ in batches:
        pass
    if engine is not None:
        probs = engine.run(first.data)
        one = np.ascontiguousarray(first.data[:1])
        out["engine_b1"] = measure(lambda _: engine.run(one), repeats)
        full = np.ascontiguousarray(np.resize(first.data, (max_batch, *first.data.shape[1:])))
        out["engine_bmax"] = measure(lambda _: engine.run(full), max(repeats // 8, 3))
    else:  # the base-size specialist's engine is not run here: probabilities shaped like the scene
        probs = stand_in_probabilities(first.data, manifest)
    valid = np.ones((size, size), bool)
    n_tiles = len(tiles)

    def blend(_: object) -> Any:
        blender = MaskBlender(reader.height, reader.width, k, size, overlap_for(size))
        for i, tile in enumerate(tiles):
            blender.add(tile, probs[i % len(probs)], valid)
        return blender.result()

    class_probs = probs.mean(axis=(2, 3))

    def aggregate(_: object) -> Any:
        aggregator = ClassAggregator(*tiles.shape, k)
        for i, tile in enumerate(tiles):
            aggregator.add(tile, class_probs[i % len(class_probs)], valid)
        return aggregator.result()

    blend_repeats = repeats if n_tiles < 100 else max(repeats // 20, 3)
    out["blend"] = measure(blend, blend_repeats)
    out["aggregate"] = measure(aggregate, blend_repeats)

    def report(_: object) -> Prediction:
        g = reader.grid
        return Prediction(route, {"crs": g.crs, "transform": g.transform, "width": g.width, "height": g.height},
                          tile_stride=size - overlap_for(size), inputs=[b.report() for b in scene.bands],
                          tile_rows=tile_cells(g.height, size, overlap_for(size)),
                          tile_cols=tile_cells(g.width, size, overlap_for(size)), masked=reader.masked(),
                          resampled=reader.resampled, ignored=scene.ignored_subdatasets)

    out["report"] = measure(report, repeats)
    prediction = report(None)
    prediction.mask = blend(None)
    provider = engine.provider if engine is not None else "CPUExecutionProvider"

    def headers(p: Prediction) -> str:
        return json.dumps(inputs_summary(p), ensure_ascii=True, separators=(",", ":"))

    out["encode_geotiff"] = measure(lambda _: as_geotiff(prediction), blend_repeats)
    out["encode_json"] = measure(lambda _: (JSONResponse(as_json(prediction, provider)), headers(prediction)),
                                 blend_repeats)
    as_class = report(None)
    as_class.classes = aggregate(None)
    out["encode_json_class"] = measure(lambda _: (JSONResponse(as_json(as_class, provider)), headers(as_class)),
                                       blend_repeats)
    scene.close()
    out["close"] = measure(lambda a: a[0].close(), repeats, ready)
    return out, n_tiles


def stand_in_probabilities(data: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Probabilities (B, K, T, T) that follow the tiles' first band, for a specialist that is not run here.

    Not noise: the COG encoder's deflate time depends on how the labels compress, and a real mask
    follows the scene (water is dark in VV), decided per 8 x 8 block as a patch-based model's mask is
    smooth (thresholding speckled pixels would draw noise that deflates 6x slower). Two classes: the
    second where the first band is below its mean; more classes: K bins of the first band.
    """
    k, band = len(manifest.classes), manifest.bands[0]
    b, t = data.shape[0], data.shape[-1]
    z = ((data[:, 0] - band.mean) / band.std).reshape(b, t // 8, 8, t // 8, 8).mean(axis=(2, 4))
    z = np.repeat(np.repeat(z, 8, axis=1), 8, axis=2)
    centres = np.linspace(1.5, -1.5, k, dtype=np.float32) if k > 2 else np.array([1.0, -1.0], np.float32)
    logits = -4.0 * (z[:, None] - centres[:, None, None]) ** 2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _with_samples(a: tuple) -> tuple:
    """``(scene, route, reader, samples)``: the samples the unit check runs on, read untimed."""
    return (*a, a[2].samples(64))


def _post(conn: http.client.HTTPConnection, path: str, data: bytes) -> bytes:
    conn.request("POST", path, body=data, headers={"Content-Type": "image/tiff"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"POST {path}: {response.status} {body[:300]!r}")
    return body


def service_costs(repo: Path, task: str, modality: str, tile: bytes, scene: bytes, threads: int, max_batch: int,
                  requests: int, scene_requests: int) -> dict[str, dict[str, float]]:
    """The real service at concurrency 1: server CPU and client-seen latency per request."""
    env = {"MAPEX_INTRA_OP_THREADS": str(threads), "MAPEX_MAX_BATCH": str(max_batch)}
    out = {}
    with ServiceProcess(repo, env) as server:
        for label, data, fmt, n in (("tile_json", tile, "json", requests), ("tile_geotiff", tile, "geotiff", requests),
                                    ("scene_geotiff", scene, "geotiff", scene_requests)):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)  # keep-alive within a label
            path = f"/predict/{task}?modality={modality}&format={fmt}"
            for _ in range(max(2, n // 10)):
                _post(conn, path, data)  # warm-up
            latencies, cpu0, client0 = [], server.cpu_seconds(), time.process_time()
            for _ in range(n):
                start = time.perf_counter()
                _post(conn, path, data)
                latencies.append(time.perf_counter() - start)
            out[label] = {"server_cpu": (server.cpu_seconds() - cpu0) / n, "latency_p50": statistics.median(latencies),
                          "client_cpu": (time.process_time() - client0) / n, "requests": n}
            conn.close()
    return out


def inprocess_costs(data: bytes, manifest: Manifest, engine: Engine, max_batch: int, repeats: int,
                    loop: asyncio.AbstractEventLoop, warmup: int = 5, stand_in: bool = False) -> Cost:
    """``predict()`` + JSON as the route runs them, on an event loop with the service's batcher: no HTTP.

    ``stand_in``: the batcher's engine hands back one batch of probabilities computed beforehand, so
    that what is left over the stages is the orchestration alone, not the engine's threads competing.
    """
    files = [UploadedFile("scene.tif", data)]
    run_engine = engine.run
    if stand_in:
        ready = engine.run(np.full((max_batch, *manifest.input.shape[1:]), 0.1, np.float32))
        run_engine = lambda batch: ready[: len(batch)]  # noqa: E731 - a stand-in, as short as it is

    async def run() -> Cost:
        executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
        batcher = Batcher(manifest.name, run_engine, executor, max_batch=max_batch, max_delay_ms=5, max_queue=4096,
                          metrics=Metrics())
        batcher.start()
        cpu, thread, wall = [], [], []
        try:
            for i in range(repeats + warmup):
                c0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter()
                p = await predict(files, [manifest], {manifest.name: batcher}, bands=None, modality=None,
                                  max_pixels=MAX_PIXELS, max_batch=max_batch, max_unpacked=0)
                JSONResponse(as_json(p, engine.provider))
                c1, t1, w1 = time.process_time(), time.thread_time(), time.perf_counter()
                if i >= warmup:
                    cpu.append(c1 - c0)
                    thread.append(t1 - t0)
                    wall.append(w1 - w0)
        finally:
            await batcher.stop()
            executor.shutdown()
        return Cost(statistics.median(cpu), statistics.median(thread), statistics.median(wall), repeats)

    return loop.run_until_complete(run())


# -- the model -----------------------------------------------------------------------------------------


def cpu_ms(costs: dict[str, Cost], key: str) -> float:
    return costs[key].cpu * 1e3 if key in costs else 0.0


def split(costs: dict[str, Cost], tiles: int, http_ms: float, encode: str, batch_ms: float = 0.0,
          max_batch: int = 32) -> tuple[float, float]:
    """``(event-loop ms per request, decode-worker ms per tile)`` of a request of ``tiles`` tiles.

    The loop keeps HTTP, the upload and the orchestration (``http_ms``, which holds one batch's, and
    ``batch_ms`` for every further batch); a worker does the rest but
    the engine: opening, routing, units, reading, blending, the report, encoding (``encode``: a
    stage name) and closing, its per-request part spread over the request's tiles.
    """
    per_request = sum(cpu_ms(costs, s) for s in ("open", "route", "units", "report", encode, "close"))
    per_tile = sum(cpu_ms(costs, s) for s in ("read", "blend")) / tiles
    batches = -(-tiles // max_batch)
    return http_ms + cpu_ms(costs, "parse_raw") + batch_ms * (batches - 1), per_tile + per_request / tiles


def model(tile: dict[str, Cost], scene: dict[str, Cost], scene_tiles: int, http_ms: float, cores: int,
          engine_tps: float, batch_ms: float, max_batch: int) -> list[dict[str, Any]]:
    """Bounds (tiles/s) of a node of ``cores`` cores whose engine runs ``engine_tps`` tiles/s, mask head.

    Today: one process; every stage but the engine holds the GIL most of its time, so together they
    get about one core. With decode workers (issue 12): the event loop keeps HTTP, the upload and
    the orchestration, ``cores - 1`` worker processes do the rest. The engine's own host CPU (kernel
    launches, copies) is not counted: it is unmeasured here.
    """
    rows = []
    workers = max(cores - 1, 1)
    for case, costs, tiles, encode in (("single-tile requests, JSON answer", tile, 1, "encode_json"),
                                       ("single-tile requests, GeoTIFF answer", tile, 1, "encode_geotiff"),
                                       ("whole scenes, GeoTIFF answer", scene, scene_tiles, "encode_geotiff")):
        loop_ms, worker_ms = split(costs, tiles, http_ms, encode, batch_ms, max_batch)
        layouts = [("today: one process, threads", {"one core (GIL)": 1e3 / (loop_ms / tiles + worker_ms)}),
                   (f"decode in {workers} worker processes", {"event loop": 1e3 * tiles / loop_ms,
                                                             "decode": workers * 1e3 / worker_ms})]
        if case.startswith("whole scenes"):
            layouts.append(("one scene at a time, on one worker", {"event loop": 1e3 * tiles / loop_ms,
                                                                  "decode": 1e3 / worker_ms}))
        for layout, cpu_bounds in layouts:
            bounds = {"engine": engine_tps, **cpu_bounds}
            limit = min(bounds, key=bounds.get)
            rows.append({"case": case, "layout": layout, **{f"{k}_tiles_s": v for k, v in bounds.items()},
                         "predicted_tiles_s": bounds[limit], "bound": limit,
                         "loop_ms_per_request": loop_ms, "worker_ms_per_tile": worker_ms})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__.split("\n\n")[0])
    repo_arguments(p)
    p.add_argument("--task", default="flood", help="task of the specialist (default flood: a mask head)")
    p.add_argument("--modality", default="SAR", help="its modality (default SAR)")
    p.add_argument("--scene", type=int, default=2048, help="pixels a side of the large scene (default 2048)")
    p.add_argument("--repeats", type=int, default=100, help="repeats of a single-tile stage (scenes: fewer)")
    p.add_argument("--requests", type=int, default=200, help="single-tile requests to the real service")
    p.add_argument("--threads", type=int, default=2, help="MAPEX_INTRA_OP_THREADS here and in the service")
    p.add_argument("--max-batch", type=int, default=32, help="MAPEX_MAX_BATCH")
    p.add_argument("--base-tile", type=int, default=128, help="tile of the base-size specialist (mapex-130m: 128)")
    p.add_argument("--cores", type=int, default=16, help="cores of the node the model predicts for")
    p.add_argument("--gpu-efficiency", type=float, default=0.10,
                   help="fraction of the H200's dense FP16 peak the engine reaches (an assumption; default 0.10)")
    p.add_argument("--no-service", action="store_true", help="skip the real service (no HTTP overhead figure)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for stages.json and stages.md")
    args = p.parse_args(argv)

    repo, entry, manifest = mask_specialist(args, "bench.stages times blending")
    settings = Settings(model_repo=repo, providers=["cpu"], intra_op_threads=args.threads, max_batch=args.max_batch)
    engine = Engine(entry, manifest, settings)
    base = manifest.model_copy(update={"tile_size": args.base_tile})
    loop = asyncio.new_event_loop()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        uploads = {s: make_upload(s, manifest.band_names, Path(tmp) / f"{s}.tif")
                   for s in (manifest.tile_size, args.base_tile, args.scene)}
    costs, tiles = {}, {}
    cases = [("tile", manifest, manifest.tile_size, engine, args.repeats),
             ("scene", manifest, args.scene, engine, max(args.repeats // 20, 3)),
             ("base_tile", base, args.base_tile, None, args.repeats),
             ("base_scene", base, args.scene, None, max(args.repeats // 20, 3))]
    for name, m, size, eng, repeats in cases:
        print(f"timing the stages: {name} ({size} px, tile {m.tile_size})", file=sys.stderr)
        costs[name], tiles[name] = stage_costs(uploads[size], m, eng, args.max_batch, repeats, loop)
    print("predict() in this process", file=sys.stderr)
    inproc = inprocess_costs(uploads[manifest.tile_size], manifest, engine, args.max_batch, args.repeats, loop)
    inproc_scene = inprocess_costs(uploads[args.scene], manifest, engine, args.max_batch, 3, loop, warmup=1,
                                   stand_in=True)
    service = {}
    if not args.no_service:
        print("the real service at concurrency 1", file=sys.stderr)
        service = service_costs(repo, args.task, args.modality, uploads[manifest.tile_size], uploads[args.scene],
                                args.threads, args.max_batch, args.requests, 2)
    loop.close()

    # -- the table: CPU ms per request (single tile) and per tile (scene), both tile sizes
    rows = []
    for key, label, where in STAGES:
        row: dict[str, Any] = {"stage": label, "runs on (today)": where}
        for name, col in (("tile", f"{manifest.tile_size}px request ms"), ("scene", f"scene ms/tile (t{manifest.tile_size})"),
                          ("base_tile", f"{args.base_tile}px request ms"),
                          ("base_scene", f"scene ms/tile (t{args.base_tile})")):
            c = costs[name].get(key)
            if c is None:
                row[col] = "-"
                continue
            per = c.cpu * 1e3
            if name.endswith("scene"):
                per /= args.max_batch if key == "engine_bmax" else tiles[name]
            elif key == "engine_bmax":
                per /= args.max_batch
            row[col] = per
        rows.append(row)
    columns = ["stage", "runs on (today)", f"{manifest.tile_size}px request ms", f"scene ms/tile (t{manifest.tile_size})",
               f"{args.base_tile}px request ms", f"scene ms/tile (t{args.base_tile})"]

    # Sum of the stages of one single-tile request as the service runs it (raw upload, JSON answer, engine batch 1).
    path = ("parse_raw", "open", "route", "units", "read", "engine_b1", "blend", "report", "encode_json", "close")
    stage_sum_cpu = sum(costs["tile"][k].cpu for k in path)
    stage_sum_wall = sum(costs["tile"][k].wall for k in path)
    sc = costs["scene"]
    scene_sum_cpu = sum(sc[k].cpu for k in ("parse_raw", "open", "route", "units", "read", "blend", "report",
                                            "encode_geotiff", "close"))
    scene_sum_cpu += sc["engine_bmax"].cpu * tiles["scene"] / args.max_batch
    notes = [f"CPU = time.process_time (every thread of this process), median of repeats; single-tile requests: "
             f"{args.repeats} repeats, scenes: {max(args.repeats // 20, 3)}; {tiles['scene']:,} tiles of "
             f"{manifest.tile_size} px and {tiles['base_scene']:,} of {args.base_tile} px in the "
             f"{args.scene} x {args.scene} scene; wall times in stages.json are noisy (shared 2-core machine)",
             f"the {args.base_tile}px columns run the same code with a copy of the manifest at tile {args.base_tile} "
             f"(no engine: the base-size specialist is not built here); 'engine, max batch' is per tile",
             f"single-tile request, sum of stages (raw upload, JSON answer, batch 1): CPU "
             f"{stage_sum_cpu * 1e3:.2f} ms, wall {stage_sum_wall * 1e3:.2f} ms",
             f"predict() + JSON in this process on an event loop with the service's batcher (no HTTP): CPU "
             f"{inproc.cpu * 1e3:.2f} ms, wall {inproc.wall * 1e3:.2f} ms per single-tile request"]
    in_scene = sum(sc[k].cpu for k in ("open", "route", "units", "read", "blend", "report", "encode_json", "close"))
    notes.append(f"predict() + JSON in this process, the {args.scene} x {args.scene} scene, the engine a stand-in that "
                 f"costs nothing: CPU {inproc_scene.cpu:.2f} s, sum of its stages but the engine {in_scene:.2f} s: "
                 f"orchestration (threads, batcher) "
                 f"{(inproc_scene.cpu - in_scene) * 1e3 * args.max_batch / tiles['scene']:.2f} ms per batch of "
                 f"{args.max_batch}")
    http_ms = None
    if service:
        s = service["tile_json"]
        http_ms = s["server_cpu"] * 1e3 - stage_sum_cpu * 1e3
        notes += [f"the service (uvicorn, concurrency 1, {s['requests']} raw single-tile requests, format=json): server "
                  f"CPU {s['server_cpu'] * 1e3:.2f} ms a request (/proc/<pid>/stat), p50 latency "
                  f"{s['latency_p50'] * 1e3:.2f} ms; HTTP + FastAPI + asyncio overhead = server CPU - sum of stages "
                  f"= {http_ms:.2f} ms CPU (of which orchestration, predict() in-process - stages: "
                  f"{(inproc.cpu - stage_sum_cpu) * 1e3:.2f} ms); latency - stage wall = "
                  f"{(s['latency_p50'] - stage_sum_wall) * 1e3:.2f} ms",
                  f"same with format=geotiff: server CPU {service['tile_geotiff']['server_cpu'] * 1e3:.2f} ms, p50 "
                  f"{service['tile_geotiff']['latency_p50'] * 1e3:.2f} ms",
                  f"the {args.scene} x {args.scene} scene through the service (geotiff, {service['scene_geotiff']['requests']} "
                  f"requests): server CPU {service['scene_geotiff']['server_cpu']:.2f} s "
                  f"({service['scene_geotiff']['server_cpu'] * 1e3 / tiles['scene']:.3f} ms/tile), wall "
                  f"{service['scene_geotiff']['latency_p50']:.2f} s; sum of its stages (engine at the max batch) "
                  f"{scene_sum_cpu:.2f} s ({scene_sum_cpu * 1e3 / tiles['scene']:.3f} ms/tile): overhead "
                  f"{(service['scene_geotiff']['server_cpu'] - scene_sum_cpu) * 1e3 / tiles['scene']:.3f} ms/tile"]

    # -- the model for a GPU node serving the base-size specialist
    flops, engine_tps = assumed_engine_tiles_s(manifest, args.gpu_efficiency)
    kept = kept_experts(manifest)
    http = http_ms if http_ms is not None else 0.0
    batch_ms = max((inproc_scene.cpu - in_scene) * 1e3 * args.max_batch / tiles["scene"], 0.0)
    predictions = model(costs["base_tile"], costs["base_scene"], tiles["base_scene"], http, args.cores, engine_tps,
                        batch_ms, args.max_batch)
    # The same model on this machine (2 cores, the CPU engine sharing them): single-tile requests at the tiny
    # specialist's tile, engine CPU per tile at the max batch.
    loop_ms, worker_ms = split(costs["tile"], 1, http, "encode_json")
    engine_ms = costs["tile"]["engine_bmax"].cpu * 1e3 / args.max_batch
    here = min(1e3 / (loop_ms + worker_ms), (os.cpu_count() or 2) * 1e3 / (loop_ms + worker_ms + engine_ms))
    notes.append(f"check on this machine ({os.cpu_count()} cores, CPU engine): single-tile requests at "
                 f"{manifest.tile_size} px need {loop_ms + worker_ms:.2f} ms of Python/GDAL CPU and {engine_ms:.2f} ms "
                 f"of engine CPU a tile: the model predicts at most {here:,.0f} tiles/s")
    notes.append(f"model: mapex-130m {args.modality} specialist, {kept} experts kept per MoE block run densely, "
                 f"{args.base_tile} px tiles: {flops / 1e9:.2f} GFLOP a tile; at {args.gpu_efficiency:.0%} of an "
                 f"H200's {H200_FP16_TFLOPS:g} TFLOP/s dense FP16 (an assumption) the engine runs "
                 f"{engine_tps:,.0f} tiles/s; {args.cores} cores")

    report = Report("stages", f"CPU per stage of a request: {manifest.name} v{manifest.version}",
                    {"repo": str(repo), "specialist": manifest.name, "threads": args.threads,
                     "max_batch": args.max_batch, "scene": args.scene, "cores here": os.cpu_count(),
                     "seconds": round(time.perf_counter() - started)},
                    rows, columns, [], notes)
    report.write(args.out)
    extra = {"costs": {n: {k: vars(c) for k, c in cs.items()} for n, cs in costs.items()}, "tiles": tiles,
             "inprocess": vars(inproc), "inprocess_scene": vars(inproc_scene), "inprocess_scene_stage_sum": in_scene,
             "service": service, "stage_sum_cpu": stage_sum_cpu,
             "stage_sum_wall": stage_sum_wall, "scene_stage_sum_cpu": scene_sum_cpu, "http_overhead_cpu_ms": http_ms, "flops_per_tile": flops,
             "engine_tiles_s": engine_tps, "orchestration_ms_per_batch": batch_ms, "gpu_efficiency": args.gpu_efficiency, "cores": args.cores,
             "predictions": predictions}
    payload = json.loads((args.out / "stages.json").read_text())
    (args.out / "stages.json").write_text(json.dumps(payload | extra, indent=2, default=str) + "\n")
    text = markdown_table(predictions, ["case", "layout", "engine_tiles_s", "one core (GIL)_tiles_s", "event loop_tiles_s",
                                        "decode_tiles_s", "predicted_tiles_s", "bound"])
    with (args.out / "stages.md").open("a") as f:
        f.write(f"\n## Predicted for a {args.cores}-core node, base-size specialist at {engine_tps:,.0f} tiles/s\n\n"
                f"{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

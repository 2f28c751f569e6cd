"""The service against standalone Triton serving the same specialist ONNX: same client, tiles and concurrency, one run.

    python -m bench.peer [--repo models] [--concurrency 1 32] [--requests 512] [--size 4096]

The peer is Triton's own server (the ``tritonserver`` binary shipped inside the nvidia-pytriton
wheel; only its Python backend is bundled, so a ``model.py`` runs ONNX Runtime with the
service's session options) in its own venv, ``.venv-triton`` (created on first use:
``nvidia-pytriton onnxruntime "numpy<2"``), with dynamic batching up to ``--max-batch`` tiles.
Both servers run side by side on loopback and are driven alternately by one asyncio client
(raw HTTP/1.1 keep-alive connections, as ``bench.serve``); with ``--rounds N`` each level of (a) and
(b) runs N times, the servers taking turns to go first, and a goal is the median round's ratio:

(a) single-tile GeoTIFFs posted to ``/predict/{task}`` vs the same tiles sent to Triton as binary
    tensors by a client that decodes each GeoTIFF itself (the work a Triton user must do; the
    client's CPU per request is reported for both);
(b) the same tiles as binary tensors to ``/v2/models/{name}/infer`` of each server;
(c) a whole scene posted once to ``/predict/{seg task}`` vs a client that tiles it with
    ``mapex_serve.tiling`` (the service's grid, overlap and fill), sends batches of ``--max-batch``
    tiles to Triton (``--inflight`` requests in flight), blends the probabilities and writes the
    same labels COG.

Goals (mapex / Triton throughput): (a) >= 1.0 and (b) >= 0.8 at concurrency 32, (c) >= 1.0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import rasterio
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy

from bench.client import WARM_UP, Connection, Request, load
from bench.harness import (
    ROOT,
    Goal,
    Report,
    ServiceProcess,
    engine_arguments,
    ensure_repo,
    find_entry,
    percentile,
    post_scene,
    repo_arguments,
    resolve_engine_threads,
)
from bench.scene import make_scene
from bench.serve import make_tiles
from mapex_serve.local import free_port
from mapex_serve.predict import overlap_for
from mapex_serve.repository import Manifest
from mapex_serve.tiling import DatasetWindows, MaskBlender, read_batches, tile_grid

TRITON_VENV = ROOT / ".venv-triton"
TRITON_PACKAGES = ["nvidia-pytriton", "onnxruntime", "numpy<2"]
GOALS = {"a": 1.0, "b": 0.8, "c": 1.0}
GOAL_CONCURRENCY = 32
HEADER = "inference-header-content-length"

# The Triton Python-backend model: the same ONNX, ONNX Runtime with the service's session options.
MODEL_PY = '''
import os
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

IN, OUT, THREADS = {input!r}, {output!r}, {threads}


class TritonPythonModel:
    def initialize(self, args):
        so = ort.SessionOptions()
        so.intra_op_num_threads = THREADS
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(os.path.dirname(__file__), "model.onnx")
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, IN).as_numpy() for r in requests]
        y = self.session.run([OUT], {{IN: xs[0] if len(xs) == 1 else np.concatenate(xs)}})[0]
        out, i = [], 0
        for x in xs:
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUT, y[i:i + len(x)])]))
            i += len(x)
        return out
'''

CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [{{ name: "{input}" data_type: TYPE_FP32 dims: [{in_dims}] }}]
output [{{ name: "{output}" data_type: TYPE_FP32 dims: [{out_dims}] }}]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [{{ kind: KIND_CPU count: {instances} }}]
'''


def triton_python() -> Path:
    """The interpreter of ``.venv-triton``, created with nvidia-pytriton, onnxruntime and numpy<2 on first use."""
    python = TRITON_VENV / "bin" / "python"
    probe = [str(python), "-c", "import pytriton, onnxruntime"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {TRITON_VENV} ({' '.join(TRITON_PACKAGES)}; a few minutes) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(TRITON_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TRITON_PACKAGES], check=True)
    return python


def group_cpu_seconds(pgid: int) -> tuple[float, int]:
    """User + system CPU seconds of the live processes of a process group (Triton and its backend stubs), and how many."""
    tick, total, count = os.sysconf("SC_CLK_TCK"), 0.0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(11) stime(12)
            total += (int(fields[11]) + int(fields[12])) / tick
            count += 1
    return total, count


class TritonPeer:
    """``tritonserver`` on a loopback port serving ``models`` (specialist name -> (entry, manifest)); a context manager.

    Started in its own process group (the Python backend runs each model in a stub process), and
    stopped with SIGTERM to the group, as peers.md describes.
    """

    def __init__(self, models: dict[str, tuple[Path, Manifest]], workdir: Path, *, threads: int, max_batch: int,
                 delay_us: int, instances: int = 1) -> None:
        python = triton_python()
        site = Path(subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        versions = ("import json, importlib.metadata as m; "
                    "print(json.dumps({p: m.version(p) for p in ('nvidia-pytriton', 'onnxruntime', 'numpy')}))")
        self.versions = json.loads(subprocess.run([str(python), "-c", versions], capture_output=True, text=True,
                                                  check=True).stdout)
        pytriton = site / "pytriton"
        backends = workdir / "backends" / "python"
        shutil.copytree(pytriton / "tritonserver" / "backends" / "python", backends, dirs_exist_ok=True)
        stub = next(pytriton.rglob("python_backend_stubs/3.11/triton_python_backend_stub"))
        shutil.copy(stub, backends / "triton_python_backend_stub")
        for name, (entry, m) in models.items():
            version = workdir / "repo" / name / "1"
            version.mkdir(parents=True)
            shutil.copy(entry / "model.onnx", version / "model.onnx")
            (version / "model.py").write_text(MODEL_PY.format(input=m.input.name, output=m.output.name,
                                                              threads=threads))
            (version.parent / "config.pbtxt").write_text(CONFIG.format(
                name=name, max_batch=max_batch, input=m.input.name, output=m.output.name, delay_us=delay_us,
                instances=instances,
                in_dims=", ".join(map(str, m.input.shape[1:])), out_dims=", ".join(map(str, m.output.shape[1:]))))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        libdir = sysconfig.get_config_var("LIBDIR")
        env = {**os.environ, "PATH": f"{python.parent}:{os.environ['PATH']}",
               "LD_LIBRARY_PATH": f"{libdir}:{site / 'nvidia_pytriton.libs'}"}
        self.log_path = workdir / "triton.log"
        cmd = [str(pytriton / "tritonserver" / "bin" / "tritonserver"), f"--model-repository={workdir / 'repo'}",
               f"--backend-directory={workdir / 'backends'}", "--http-address=127.0.0.1", f"--http-port={self.port}",
               "--allow-grpc=false", "--allow-metrics=false"]
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text()[-3000:]
                self.stop()
                raise RuntimeError(f"Triton did not become ready; the end of its log:\n{tail}")
            time.sleep(0.3)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.proc.pid)[0]

    def processes(self) -> int:
        return group_cpu_seconds(self.proc.pid)[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> TritonPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def infer_body(x: np.ndarray, input_name: str, output_name: str) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol request with ``x`` as binary tensor data, asking for a binary output."""
    x = np.ascontiguousarray(x, dtype="<f4")
    header = json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": output_name, "parameters": {"binary_data": True}}]}).encode()
    return header + x.tobytes(), {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length":
                                  str(len(header))}


def infer_output(headers: dict[str, str], body: bytes) -> np.ndarray:
    """The one binary output of an inference response."""
    n = int(headers[HEADER])
    out = json.loads(body[:n])["outputs"][0]
    return np.frombuffer(body[n:], dtype="<f4").reshape(out["shape"])


def decode_tile(content: bytes, manifest: Manifest) -> np.ndarray:
    """A Triton user's own GeoTIFF decoding: the manifest's bands by description, physical values, masked -> mean."""
    with MemoryFile(content) as mem, mem.open() as src:
        index = {d: i + 1 for i, d in enumerate(src.descriptions)}
        bands = [index[b] for b in manifest.band_names]
        stored = src.read(bands, masked=True).astype(np.float32)
        scale = np.asarray([src.scales[i - 1] for i in bands], np.float32)[:, None, None]
        offset = np.asarray([src.offsets[i - 1] for i in bands], np.float32)[:, None, None]
        means = np.asarray([b.mean for b in manifest.bands], np.float32)[:, None, None]
        return np.where(np.ma.getmaskarray(stored), means, stored.filled(0) * scale + offset)[None]


def labels_cog(labels: np.ndarray, profile: dict) -> bytes:
    """Labels as a deflate COG on the scene's grid: the product the service answers with."""
    with MemoryFile() as tmp:
        with tmp.open(driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1, dtype="uint8",
                      crs=profile["crs"], transform=profile["transform"], nodata=255, tiled=True,
                      compress="deflate") as dst:
            dst.write(labels, 1)
        with tmp.open() as src, MemoryFile() as out:
            rio_copy(src, out.name, driver="COG", compress="deflate")
            return out.read()


async def triton_scene(url: str, path: Path, name: str, manifest: Manifest, batch: int, inflight: int) -> bytes:
    """What a Triton user runs for a scene: tile (the service's grid), send batches, blend in grid order, write a COG."""
    tile = manifest.tile_size
    overlap = overlap_for(tile)
    with rasterio.open(path) as src:
        index = {d: i + 1 for i, d in enumerate(src.descriptions)}
        bands = [index[b] for b in manifest.band_names]
        reader = DatasetWindows(src, bands, [src.scales[i - 1] for i in bands], [src.offsets[i - 1] for i in bands])
        tiles = tile_grid(src.height, src.width, tile, overlap)
        blender = MaskBlender(src.height, src.width, len(manifest.classes), tile, overlap)
        batches = enumerate(read_batches(reader, tiles, batch, [b.mean for b in manifest.bands]))
        done: dict[int, tuple] = {}
        added = 0

        async def worker(conn: Connection) -> None:
            nonlocal added
            for i, b in batches:  # a shared generator: each worker reads the next batch while others wait on Triton
                body, headers = infer_body(b.data, manifest.input.name, manifest.output.name)
                status, answer_headers, answer = await conn.send(f"/v2/models/{name}/infer", body, headers)
                if status != 200:
                    raise RuntimeError(f"Triton answered {status}: {answer[:300]!r}")
                done[i] = (b, infer_output(answer_headers, answer))
                while added in done:  # MaskBlender takes tiles in the grid's row-major order
                    ready, probs = done.pop(added)
                    blender.add_batch(ready.tiles, probs, ready.valid)
                    added += 1

        connections = [await Connection.open(url) for _ in range(inflight)]
        try:
            await asyncio.gather(*(worker(c) for c in connections))
        finally:
            for c in connections:
                c.close()
        return labels_cog(blender.result().labels, {"crs": src.crs, "transform": src.transform})


def cog_labels(content: bytes) -> np.ndarray:
    with MemoryFile(content) as mem, mem.open() as src:
        return src.read(1)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    repo_arguments(p)
    p.add_argument("--task", default="landcover", help="task of (a) and (b) (default landcover: a class head)")
    p.add_argument("--scene-task", default="landcover-seg", help="task of (c) (default landcover-seg: a mask)")
    p.add_argument("--modality", default="RGB", help="the specialists' modality (default RGB)")
    engine_arguments(p, "batches run at once, both servers: MAPEX_ENGINE_RUNNERS, Triton's instance count")
    p.add_argument("--max-batch", type=int, default=32, help="largest engine batch, both servers; (c)'s client batch")
    p.add_argument("--delay-us", type=int, default=1000, help="Triton's max_queue_delay_microseconds")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, GOAL_CONCURRENCY])
    p.add_argument("--requests", type=int, default=512, help="timed requests per level, server and round")
    p.add_argument("--rounds", type=int, default=1, help="(a) and (b): rounds a level, the servers alternating; "
                   "the goals take the median round's ratio (this machine's noise moves one round's by 0.1)")
    p.add_argument("--tiles", type=int, default=64, help="distinct tiles cycled through")
    p.add_argument("--size", type=int, default=4096, help="(c)'s scene width and height in pixels (0: skip (c))")
    p.add_argument("--inflight", type=int, help="(c): batches the Triton client keeps in flight (default: runners + 1, "
                   "as the service does)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    resolve_engine_threads(args)
    args.inflight = args.inflight or args.runners + 1

    repo = ensure_repo(args.repo, args.checkpoint)
    entry, manifest = find_entry(repo, args.task, [args.modality])
    seg_entry, seg = find_entry(repo, args.scene_task, [args.modality]) if args.size else (None, None)
    models = {manifest.name: (entry, manifest), **({seg.name: (seg_entry, seg)} if seg else {})}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        tmp = Path(tmp)
        bodies, tiles = make_tiles(manifest, args.tiles, tmp)
        scene = make_scene(args.size, seg.tile_size, tmp / "scene.tif") if seg else None
        env = {"MAPEX_MAX_BATCH": str(args.max_batch), "MAPEX_INTRA_OP_THREADS": str(args.threads),
               "MAPEX_ENGINE_RUNNERS": str(args.runners), "MAPEX_REQUEST_TIMEOUT_S": "3600",
               "MAPEX_MAX_UPLOAD_MB": str((scene.stat().st_size // 2**20 if scene else 0) + 64)}
        with (ServiceProcess(repo, env) as ours,
              TritonPeer(models, tmp / "triton", threads=args.threads, max_batch=args.max_batch,
                         delay_us=args.delay_us, instances=args.runners) as triton):
            name, inp, out = manifest.name, manifest.input.name, manifest.output.name
            # The same tile through both servers' /v2 routes must give the same probabilities.
            x = tiles[:2]
            got = []
            for url in (ours.url, triton.url):
                body, headers = infer_body(x, inp, out)
                r = httpx.post(f"{url}/v2/models/{name}/infer", content=body, headers=headers, timeout=60)
                r.raise_for_status()
                got.append(infer_output({HEADER: r.headers[HEADER]}, r.content))
            agreement = float(np.abs(got[0] - got[1]).max())
            print(f"ours vs Triton on the same tiles: max |difference| {agreement:.2e}", file=sys.stderr)

            binaries = [infer_body(tiles[i:i + 1], inp, out) for i in range(len(tiles))]
            predict_path = f"/predict/{args.task}?modality={args.modality}"
            parts: dict[str, dict[str, Request]] = {
                "a": {"mapex": lambda i: (predict_path, bodies[i % len(bodies)], {"Content-Type": "image/tiff",
                                                                                  "Accept": "application/json"}),
                      "triton": lambda i: (f"/v2/models/{name}/infer",
                                           *infer_body(decode_tile(bodies[i % len(bodies)], manifest), inp, out))},
                "b": {"mapex": lambda i: (f"/v2/models/{name}/infer", *binaries[i % len(binaries)]),
                      "triton": lambda i: (f"/v2/models/{name}/infer", *binaries[i % len(binaries)])},
            }
            servers = {"mapex": (ours.url, ours.cpu_seconds), "triton": (triton.url,
                                                                                            triton.cpu_seconds)}
            for part, requests in parts.items():
                for c in args.concurrency:
                    n = max(args.requests, 4 * c)
                    for r in range(args.rounds):  # the servers alternate, each round in the other order
                        for server, make in sorted(requests.items(), reverse=r % 2 == 1):
                            url, server_cpu = servers[server]
                            cpu0 = server_cpu()
                            latencies, wall, client_cpu = asyncio.run(load(url, make, c, n))
                            rows.append({"part": part, "server": server, "round": r + 1, "concurrency": c,
                                         "requests": n, "tiles_s": n / wall,
                                         "p50_ms": percentile(latencies, 50) * 1e3,
                                         "p99_ms": percentile(latencies, 99) * 1e3,
                                         "client_cpu_ms_per_tile": client_cpu / n * 1e3,
                                         # the warm-up requests are within the server's CPU measured
                                         "server_cpu_ms_per_tile": (server_cpu() - cpu0) / (n + WARM_UP * c) * 1e3})
                            rows[-1]["cpu_ms_per_tile"] = (rows[-1]["client_cpu_ms_per_tile"]
                                                           + rows[-1]["server_cpu_ms_per_tile"])
                            print(rows[-1], file=sys.stderr)
            if scene is not None:
                content = scene.read_bytes()
                cpu0 = ours.cpu_seconds()
                r, wall = post_scene(ours.url, args.scene_task, args.modality, content)
                ours_labels = cog_labels(r.content)
                rows.append({"part": "c", "server": "mapex", "concurrency": 1, "requests": 1, "scene_s": wall,
                             "client_cpu_s": 0.0, "server_cpu_s": ours.cpu_seconds() - cpu0})
                cpu0, client0 = triton.cpu_seconds(), time.process_time()
                start = time.perf_counter()
                cog = asyncio.run(triton_scene(triton.url, scene, seg.name, seg, args.max_batch, args.inflight))
                wall = time.perf_counter() - start
                rows.append({"part": "c", "server": "triton", "concurrency": args.inflight,
                             "requests": -(-len(tile_grid(args.size, args.size, seg.tile_size,
                                                          overlap_for(seg.tile_size))) // args.max_batch),
                             "scene_s": wall, "client_cpu_s": time.process_time() - client0,
                             "server_cpu_s": triton.cpu_seconds() - cpu0})
                same = float((cog_labels(cog) == ours_labels).mean())
                print(rows[-2:], f"labels equal on {same:.4f} of the pixels", file=sys.stderr)
            triton_versions, triton_processes = triton.versions, triton.processes()

    def row(part: str, server: str, c: int, r: int = 1) -> dict:
        return next(x for x in rows if x["part"] == part and x["server"] == server and x["concurrency"] == c
                    and x.get("round", 1) == r)

    goals, c = [], GOAL_CONCURRENCY if GOAL_CONCURRENCY in args.concurrency else max(args.concurrency)
    for part, what in (("a", "single-tile GeoTIFF /predict vs a decoding client + Triton"),
                       ("b", "binary tensors to /v2 infer, mapex vs Triton")):
        pairs = sorted(((row(part, "mapex", c, r), row(part, "triton", c, r)) for r in range(1, args.rounds + 1)),
                       key=lambda pair: pair[0]["tiles_s"] / pair[1]["tiles_s"])
        ratios = [m["tiles_s"] / t["tiles_s"] for m, t in pairs]
        m, t = pairs[len(pairs) // 2]  # the median round (the upper one of an even count)
        spread = f" (rounds, sorted: {', '.join(f'{x:.3f}' for x in ratios)})" if args.rounds > 1 else ""
        goals.append(Goal(f"({part}) {what}, throughput mapex / Triton at concurrency {c}", ratios[len(pairs) // 2],
                          GOALS[part], at_most=False,
                          detail=f"; {m['tiles_s']:.0f} vs {t['tiles_s']:.0f} tiles/s{spread}, Triton client CPU "
                                 f"{t['client_cpu_ms_per_tile']:.2f} ms/tile vs {m['client_cpu_ms_per_tile']:.2f}; "
                                 f"CPU a tile, server and client: {m['cpu_ms_per_tile']:.2f} vs "
                                 f"{t['cpu_ms_per_tile']:.2f} ms, so {t['cpu_ms_per_tile'] / m['cpu_ms_per_tile']:.3f} "
                                 f"if both were bound by these cores",
                          rounds=tuple(ratios) if args.rounds > 1 else ()))
    notes = [f"ours vs Triton on the same tiles through /v2: max |difference| of probabilities {agreement:.1e}",
             "tiles_s counts requests of one tile each; client CPU is the load generator's own (one asyncio process); "
             "server CPU is the service process / Triton's process group (server and backend stubs); cpu_ms_per_tile "
             "is both: where both servers keep these cores busy, their throughput ratio is the inverse ratio of it",
             f"Triton: tritonserver from {triton_versions}, Python backend, ONNX Runtime CPU, {args.threads} intra-op "
             f"threads without spinning (as the service), dynamic batching max {args.max_batch}, "
             f"max_queue_delay {args.delay_us} us, {args.runners} instance(s) a model (MAPEX_ENGINE_RUNNERS "
             f"{args.runners} for the service; {triton_processes} processes: server and one backend stub per "
             f"instance)"]
    if scene is not None:
        m, t = row("c", "mapex", 1), row("c", "triton", args.inflight)
        goals.append(Goal(f"(c) {args.size}^2 scene, time Triton client / mapex (throughput mapex / Triton)",
                          t["scene_s"] / m["scene_s"], GOALS["c"], at_most=False,
                          detail=f"; {m['scene_s']:.1f} s vs {t['scene_s']:.1f} s (client CPU "
                                 f"{t['client_cpu_s']:.1f} s); CPU, server and client: {m['server_cpu_s']:.1f} vs "
                                 f"{t['server_cpu_s'] + t['client_cpu_s']:.1f} s, so "
                                 f"{(t['server_cpu_s'] + t['client_cpu_s']) / m['server_cpu_s']:.3f} if both were "
                                 f"bound by these cores"))
        notes.append(f"(c): Triton's client tiles with mapex_serve.tiling (the service's grid and overlap), "
                     f"{args.inflight} batches of {args.max_batch} in flight, blends with MaskBlender and writes a "
                     f"deflate COG; its labels equal the service's on {same:.4f} of the pixels")
    columns = ["part", "server", "round", "concurrency", "requests", "tiles_s", "p50_ms", "p99_ms", "client_cpu_ms_per_tile",
               "server_cpu_ms_per_tile", "cpu_ms_per_tile", "scene_s", "client_cpu_s", "server_cpu_s"]
    report = Report("peer", f"mapex-serve vs standalone Triton on the same ONNX: {manifest.name} "
                            f"v{manifest.version}" + (f", {seg.name} v{seg.version}" if seg else ""),
                    {"repo": str(repo), "threads": args.threads, "runners": args.runners, "max_batch": args.max_batch,
                     "tile": manifest.tile_size, "cores": os.cpu_count()}, rows, columns, goals, notes)
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The least a server answering single-tile GeoTIFFs does, as a real server: a bound for ``bench.serve``'s goal.

``bench.serve`` starts it (``python -m uvicorn bench.bare:app``, uvloop and httptools as the service) and
posts it the same tiles: uvicorn receives each upload, GDAL opens it from memory (the CRS from its
GeoKeys, the cheapest way GDAL builds one) and reads every band as float32, and a small JSON answer goes
back. No band identification, unit check, invalid-pixel count, decode worker or engine. Its CPU a request
plus the engine's CPU a tile at the goal's batch is the least CPU any server that reads the tiles it is
sent needs; with every core busy, that bounds the ratio to the engine alone that such a server can reach
on the machine (``BareServer.ceiling``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.io import MemoryFile

from bench.harness import cpu_bound_seconds
from mapex_serve.local import cpu_seconds, free_port, is_ready

__all__ = ["BareServer", "app"]

_OPTIONS = {"GTIFF_SRS_SOURCE": "GEOKEYS"}  # the cheapest CRS; the service keeps GDAL's default where it differs


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _read(upload: bytes) -> dict[str, Any]:
    """What a tile server cannot skip: the upload opened, its pixels as float32, its grid."""
    with MemoryFile(upload) as f, f.open() as dataset:
        tile = dataset.read().astype(np.float32)
        return {"shape": list(tile.shape), "mean": float(tile.mean()), "crs": dataset.crs.to_string(),
                "transform": list(dataset.transform)[:6]}


async def _lifespan(receive: Any, send: Any) -> None:
    """GDAL's drivers and settings for the process's life, not a request's (as the service's decode workers)."""
    with rasterio.Env(**_OPTIONS):
        await receive()  # startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # shutdown
    await send({"type": "lifespan.shutdown.complete"})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``POST`` any path: the upload read (``_read``) as JSON; ``GET`` any path (``/readyz``): 200, for readiness."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] != "http":
        return
    answer = json.dumps(_read(await _body(receive)) if scope["method"] == "POST" else {"ready": True}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


class BareServer:
    """``app`` under uvicorn on a free loopback port, in its own process; a context manager."""

    def __init__(self, ready_timeout: float = 60) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.bare:app", "--port", str(port), "--loop", "uvloop", "--http",
             "httptools", "--no-access-log", "--log-level", "warning"],
            cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + ready_timeout
        while not is_ready(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the bare server did not start (exit status {self.proc.returncode})")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def __enter__(self) -> BareServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def ceiling(requests: int, bare_cpu: float, engine_cpu: float, engine_tiles_s: float) -> float:
        """The ratio to the engine alone that ``requests`` single-tile requests could reach with every core busy, at
        ``bare_cpu`` seconds of server and client CPU for them all and ``engine_cpu`` seconds of engine for their
        tiles."""
        return requests / cpu_bound_seconds(bare_cpu + engine_cpu) / engine_tiles_s

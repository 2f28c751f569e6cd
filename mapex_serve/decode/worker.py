"""A decode worker process: serves the sessions the service starts on it, one message at a time.

One thread: a worker is meant to have a core to itself, and Python threads would only trade its
CPU for GIL hand-offs (each can wait out the 5 ms switch interval while the engine waits for an
answer). The work a step does after its answer (blend, read ahead) runs before the next message
is read; sessions interleave message by message.

Messages from the service are ``(id, kind, payload)``; answers ``(id, ok, payload)`` where a
failed call's payload is its exception (a MapexError keeps its class, so the service answers the
same 4xx as when it decodes in its own process). ``close`` is not answered. The worker exits when
the service closes the pipe or says ``exit``; anything else that ends it (a crash, the OOM
killer, a kill) is noticed by the service through the closed pipe.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.shutil import copy
from rasterio.vrt import WarpedVRT

from mapex_serve.decode.session import Opened, OpenRequest, Session, Stepped
from mapex_serve.errors import MapexError
from mapex_serve.repository import Manifest

__all__ = ["READY", "serve"]

log = logging.getLogger("mapex_serve.decode")

#: The id of the worker's first message: its imports are done and it takes sessions.
READY = -1

Reply = Callable[[bool, Any], None]


class _Worker:
    def __init__(self, conn: Connection, manifests: Mapping[str, Manifest], provider: Mapping[str, str]) -> None:
        self._conn, self._manifests, self._provider = conn, manifests, provider
        self._sessions: dict[int, Session] = {}

    def send(self, message_id: int, ok: bool, payload: Any) -> None:
        self._conn.send((message_id, ok, payload if ok else _portable(payload)))

    def open(self, request: OpenRequest, reply: Reply) -> None:
        session = Session(request, self._manifests, self._provider)
        self._sessions[request.session] = session
        self._started(request.session, session.open, reply)

    def start(self, sid: int, reply: Reply) -> None:
        """The service reserved the memory of a scene that ``open`` did not tile: tile it now."""
        self._started(sid, self._sessions[sid].start, reply)

    def _started(self, sid: int, begin: Callable[[], Opened], reply: Reply) -> None:
        try:
            opened = begin()
        except BaseException:
            self._drop(sid)
            raise
        reply(True, opened)
        if opened.first is not None:
            self._sessions[sid].read(1)  # read ahead while the engine runs batch 0

    def step(self, payload: tuple[int, int, tuple[int, ...]], reply: Reply) -> None:
        """Batch k's probabilities are in slot k % 2: answer with batch k + 1, then blend k and read k + 2."""
        sid, k, probs_shape = payload
        session = self._sessions[sid]
        slot = k % 2
        try:
            following = session.pending(1 - slot)
            if following == 0:
                session.blend(slot, probs_shape)
                reply(True, Stepped(0, session.finish()))
                self._drop(sid)
                return
        except BaseException:
            self._drop(sid)
            raise
        reply(True, Stepped(following))
        try:
            session.blend(slot, probs_shape)
            session.read(slot)
        except Exception as e:  # noqa: BLE001 - answered already: the next step raises it
            session.fail(e)

    def close(self, sid: int) -> None:
        """The request ended early (cancelled, refused): its files go. Unknown ids have ended already."""
        self._drop(sid)

    def _drop(self, sid: int) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            session.close()

    def handle(self, message_id: int, kind: str, payload: Any) -> None:
        """One message; its answer is sent once, by the handler or here when it fails."""
        answered = False

        def reply(ok: bool, value: Any) -> None:
            nonlocal answered
            answered = True
            self.send(message_id, ok, value)

        try:
            if kind == "open":
                self.open(payload, reply)
            elif kind == "start":
                self.start(payload, reply)
            elif kind == "step":
                self.step(payload, reply)
            elif kind == "close":
                self.close(payload)
            else:
                raise ValueError(f"unknown message {kind!r}")
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the waiting request
            if not isinstance(e, MapexError):
                log.exception("decode worker: %s failed", kind)
            if not answered and kind != "close":
                reply(False, e)


def _portable(error: BaseException) -> BaseException:
    """The error itself if it survives pickling, else a RuntimeError with its text (a 500, as in the service)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error.with_traceback(None)
    except Exception:  # noqa: BLE001 - any failure to pickle means: send its text
        return RuntimeError(f"{type(error).__name__}: {error}")


def _warm_up() -> None:
    """What GDAL and PROJ set up on first use (drivers, the CRS database, the COG writer), before the first request.

    Otherwise the first request on each new worker pays for it in time and memory (tens of MiB).
    """
    profile = dict(driver="GTiff", width=256, height=256, count=1, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(10, 0, 500000, 0, -10, 5000000), tiled=True, blockxsize=256, blockysize=256)
    with MemoryFile() as tmp:
        with tmp.open(**profile) as dst:
            dst.write(np.zeros((1, 256, 256), np.uint8))
        with tmp.open() as src:
            with WarpedVRT(src, crs="EPSG:4326") as vrt:
                vrt.read(1, out_shape=(64, 64))
            with MemoryFile() as out:
                copy(src, out.name, driver="COG", compress="deflate")


def serve(conn: Connection, manifests: dict[str, Manifest], provider: dict[str, str]) -> None:
    """The worker's main loop: one message at a time until the pipe closes or ``exit``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s decode-worker %(process)d %(levelname)s %(message)s")
    os.environ.setdefault("GDAL_CACHEMAX", "64")  # MiB; GDAL's default is 5% of RAM a process
    _warm_up()
    worker = _Worker(conn, manifests, provider)
    worker.send(READY, True, os.getpid())
    while True:
        try:
            message_id, kind, payload = conn.recv()
        except (EOFError, OSError):
            break
        if kind == "exit":
            break
        worker.handle(message_id, kind, payload)

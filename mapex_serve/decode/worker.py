"""A decode worker process: serves the sessions the service starts on it, one message at a time.

One thread: a worker is meant to have a core to itself, and Python threads would only trade its
CPU for GIL hand-offs (each can wait out the 5 ms switch interval while the engine waits for an
answer). Sessions interleave message by message; the engine never waits for a step, since it
holds the session's other batch meanwhile (``session``). The exception is a session whose upload
is still arriving (``decode.arriving``): it waits for bytes, so its messages run on a thread of its
own (``_Stream``) and the worker's other sessions go on meanwhile.

Messages from the service are ``(id, kind, payload)``; answers ``(id, ok, payload)`` where a
failed call's payload is its exception (a MapexError keeps its class, so the service answers the
same 4xx as when it decodes in its own process). ``close`` is answered once the session is gone, so
a job's files can be removed knowing that no step of it still writes there. The worker exits when
the service closes the pipe or says ``exit``; anything else that ends it (a crash, the OOM
killer, a kill) is noticed by the service through the closed pipe.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import numpy as np
import rasterio
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.shutil import copy
from rasterio.vrt import WarpedVRT

from mapex_serve import heap
from mapex_serve.decode.arriving import ArrivalGate
from mapex_serve.decode.job_session import JobOpened, JobOpenRequest, JobSession, JobStarted, JobStep
from mapex_serve.decode.parts import PartDone
from mapex_serve.decode.session import Opened, OpenRequest, Session
from mapex_serve.decode.slab import SlabSpaceError
from mapex_serve.errors import MapexError
from mapex_serve.repository import Manifest
from mapex_serve.responses import Encoded

__all__ = ["READY", "serve"]

log = logging.getLogger("mapex_serve.decode")

#: The id of the worker's first message: its imports are done and it takes sessions.
READY = -1

T = TypeVar("T")


class _Worker:
    def __init__(self, conn: Connection, manifests: Mapping[str, Manifest], provider: Mapping[str, str]) -> None:
        self._conn, self._manifests, self._provider = conn, manifests, provider
        self.sessions: dict[int, Session | JobSession] = {}
        self.streams: dict[int, _Stream] = {}  # sessions whose upload is still arriving, by id
        self._sending = threading.Lock()  # a stream's thread answers too

    def send(self, message_id: int, ok: bool, payload: Any) -> None:
        with self._sending:
            self._conn.send((message_id, ok, payload if ok else _portable(payload)))

    def dispatch(self, message_id: int, kind: str, payload: Any) -> None:
        """A message from the service: handled here, or by the thread of the session it is for (``_Stream``)."""
        if kind == "arrived":  # more of a stream's upload is in; nobody waits for an answer
            sid, arrived, whole = payload
            if (stream := self.streams.get(sid)) is not None:
                stream.gate.update(arrived, whole)
            return
        if kind == "open" and getattr(payload, "arrived", None) is not None:
            _name, _offset, size = payload.layout.files[0]
            self.streams[payload.session] = _Stream(self, payload.session, ArrivalGate(payload.arrived, size))
        if (stream := self.streams.get(_session_id(kind, payload))) is not None:
            if kind == "close":
                stream.gate.end()  # a wait for bytes gives up, so that the close is answered
            if stream.put((message_id, kind, payload)):
                return
        self.handle(message_id, kind, payload)

    def open(self, request: OpenRequest | JobOpenRequest) -> Opened | JobOpened:
        """A ``/predict`` request's session, or a whole-scene job's."""
        session: Session | JobSession
        if isinstance(request, JobOpenRequest):
            session = JobSession(request, self._manifests)
        else:
            stream = self.streams.get(request.session)
            session = Session(request, self._manifests, self._provider, stream.gate if stream else None)
        self.sessions[request.session] = session
        return self._ending_on_error(request.session, session.open)

    def start(self, sid: int, *args: Any) -> Opened | JobStarted:
        """Tile the scene: a request's once the service reserved its memory, a job's once it said where to resume."""
        return self._ending_on_error(sid, lambda: self.sessions[sid].start(*args))

    def step(self, sid: int, k: int, probs_shape: tuple[int, ...]) -> int | JobStep:
        return self._ending_on_error(sid, lambda: self.sessions[sid].step(k, probs_shape))

    def finish(self, sid: int, k: int | None, probs_shape: tuple[int, ...] | None,
               threads: int = 1) -> Encoded | JobStep | PartDone:
        session = self.sessions[sid]
        try:
            result = session.finish(k, probs_shape, threads)
        except BaseException:
            self._drop(sid)
            raise
        if not (isinstance(session, Session) and session.answers_later):
            self._drop(sid)
        return result

    def encode(self, sid: int, parts: list[PartDone]) -> Encoded:
        """The first part of a split scene answers for the scene, once every part is done."""
        try:
            return self.sessions[sid].encode(parts)
        finally:
            self._drop(sid)

    def _ending_on_error(self, sid: int, work: Callable[[], T]) -> T:
        """``work()``; a session that fails is over (the service hears why)."""
        try:
            return work()
        except BaseException:
            self._drop(sid)
            raise

    def close(self, sid: int) -> None:
        """The request ended early (cancelled, refused): its files go. Unknown ids have ended already."""
        self._drop(sid)

    def _drop(self, sid: int) -> None:
        session = self.sessions.pop(sid, None)
        if session is not None:
            session.close()

    def handle(self, message_id: int, kind: str, payload: Any) -> None:
        """One message, answered with its result or its error."""
        try:
            match kind:
                case "open":
                    result = self.open(payload)
                case "start":
                    result = self.start(*payload)
                case "step":
                    result = self.step(*payload)
                case "finish":
                    result = self.finish(*payload)
                case "encode":
                    result = self.encode(*payload)
                case "close":
                    result = self.close(payload)
                case _:
                    raise ValueError(f"unknown message {kind!r}")
        except Exception as e:  # noqa: BLE001 - every failure goes back to the waiting request
            if not isinstance(e, MapexError | SlabSpaceError):  # those are answers, not faults
                log.exception("decode worker: %s failed", kind)
            self.send(message_id, False, e)
            return
        self.send(message_id, True, result)


class _Stream:
    """A session whose upload is still arriving: its messages run in order on a thread of its own, which may wait
    for bytes (``ArrivalGate``) while the worker's main thread answers its other sessions."""

    def __init__(self, worker: _Worker, sid: int, gate: ArrivalGate) -> None:
        self.gate = gate
        self._worker, self._sid = worker, sid
        self._inbox: queue.SimpleQueue[tuple[int, str, Any]] = queue.SimpleQueue()
        self._taking = threading.Lock()
        self._open = True
        threading.Thread(target=self._run, name=f"mapex-session-{sid}", daemon=True).start()

    def put(self, message: tuple[int, str, Any]) -> bool:
        """Hand the thread a message; False once the session is over (the caller answers it)."""
        with self._taking:
            if self._open:
                self._inbox.put(message)
            return self._open

    def _run(self) -> None:
        """Each message in turn until the session is over (answered, failed or closed)."""
        with rasterio.Env():  # rasterio's environment is a thread's own
            while True:
                self._worker.handle(*self._inbox.get())
                with self._taking:
                    if self._sid in self._worker.sessions:
                        continue
                    self._open = False
                    self._worker.streams.pop(self._sid, None)
                break
            while not self._inbox.empty():  # put before the session ended (a close): answered too
                self._worker.handle(*self._inbox.get_nowait())


def _session_id(kind: str, payload: Any) -> int | None:
    """The session a message is for: ``close`` names it, ``open`` carries it, the others start with it."""
    if kind == "close":
        return payload
    if kind == "open":
        return payload.session
    return payload[0] if kind in ("start", "step", "finish", "encode") else None


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
    # GDAL's settings (GDAL_CACHEMAX 256 MiB unless set, HTTP retries) are jobs.sources' defaults, inherited from
    # the service and imported here too: a job's 512-row block row of a 20,000 px wide two-band float scene is
    # 80 MiB, reused by about 20 rows of tiles.
    # One GDAL environment for the worker's life: outside one, rasterio sets one up around every open
    # and read (0.06 ms of a single-tile request). One thread, so nothing shares it.
    with rasterio.Env():
        _warm_up()
        worker = _Worker(conn, manifests, provider)
        heap.settle()
        worker.send(READY, True, os.getpid())
        while True:
            try:
                message_id, kind, payload = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "exit":
                break
            worker.dispatch(message_id, kind, payload)

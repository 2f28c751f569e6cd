"""A decode worker process: serves the sessions the service starts on it, each in one of its threads.

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
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

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
        self._send_lock = threading.Lock()
        self._sessions: dict[int, Session] = {}
        self._begun: set[int] = set()  # opened and not yet ended; a ``close`` for anything else is ignored
        self._closed: set[int] = set()  # closed while their open was still running
        self._lock = threading.Lock()

    def begin(self, sid: int) -> None:
        """Called in message order, before ``open`` runs: a later ``close`` of ``sid`` is then known to be early."""
        with self._lock:
            self._begun.add(sid)

    def send(self, message_id: int, ok: bool, payload: Any) -> None:
        if not ok:
            payload = _portable(payload)
        with self._send_lock:
            self._conn.send((message_id, ok, payload))

    def open(self, request: OpenRequest, reply: Reply) -> None:
        try:
            session = Session(request, self._manifests, self._provider)
        except BaseException:
            self._drop(request.session)
            raise
        with self._lock:
            if request.session in self._closed:  # the request was cancelled while its files were opening
                self._closed.discard(request.session)
                self._begun.discard(request.session)
                session.close()
                return
            self._sessions[request.session] = session
        with session.lock:
            try:
                opened: Opened = session.open()
            except BaseException:
                self._drop(request.session)
                raise
            reply(True, opened)
            session.read(1)  # read ahead while the engine runs batch 0

    def step(self, payload: tuple[int, int, tuple[int, ...]], reply: Reply) -> None:
        """Batch k's probabilities are in slot k % 2: answer with batch k + 1, then blend k and read k + 2."""
        sid, k, probs_shape = payload
        session = self._sessions[sid]
        slot = k % 2
        with session.lock:
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
        with self._lock:
            if sid not in self._begun:  # already ended
                return
            if sid not in self._sessions:
                self._closed.add(sid)
                return
        self._drop(sid)

    def _drop(self, sid: int) -> None:
        with self._lock:
            self._begun.discard(sid)
            self._closed.discard(sid)
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


def serve(conn: Connection, manifests: dict[str, Manifest], provider: dict[str, str], threads: int) -> None:
    """The worker's main loop: read messages, hand each to a thread, until the pipe closes or ``exit``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s decode-worker %(process)d %(levelname)s %(message)s")
    os.environ.setdefault("GDAL_CACHEMAX", "64")  # MiB; GDAL's default is 5% of RAM a process
    worker = _Worker(conn, manifests, provider)
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        worker.send(READY, True, os.getpid())
        while True:
            try:
                message_id, kind, payload = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "exit":
                break
            if kind == "open":
                worker.begin(payload.session)
            pool.submit(worker.handle, message_id, kind, payload)

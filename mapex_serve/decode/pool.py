"""The service's side of the decode workers: start them, give each request to one, replace a worker that dies.

A request's files go into a slab (shared memory) and one worker opens, routes and tiles them; the
event loop only copies the upload into the slab, hands the worker's tiles to the batcher and its
probabilities back, and sends the encoded answer. A worker that dies (killed, out of memory, a
crash in GDAL) fails the requests it held: each is tried once more from its slab on another or a
fresh worker, and answered 503 with Retry-After if that fails too. The pool starts a replacement
at once, so it recovers by itself. A whole-scene job (``job``) runs the same way with a slab for its
tiles only (the worker reads its files where they are); a job whose worker dies resumes on another
after its last recorded strip, which the job runner decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import count
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, get_args

import numpy as np

from mapex_serve.batcher import Batcher, QueueFullError, request_ahead
from mapex_serve.budget import MemoryBudget, Reservation
from mapex_serve.cores import service_cores
from mapex_serve.decode.incoming import RESERVE_STEP, Reading, Upload, parts_room
from mapex_serve.decode.job_session import JobOpened, JobOpenRequest, JobStarted, JobStep
from mapex_serve.decode.parts import MaskSlab, PartDone, ScenePart, scene_parts
from mapex_serve.decode.session import Opened, OpenRequest
from mapex_serve.decode.slab import Layout, Slab, SlabPool, SlabSpaceError, batch_bytes, clean_stale, slab_folder
from mapex_serve.decode.worker import READY, serve
from mapex_serve.engine import CPU_EP
from mapex_serve.errors import MapexError
from mapex_serve.inputs import UploadedFile
from mapex_serve.jobs.scene import JobPlan
from mapex_serve.jobs.store import StripRecord
from mapex_serve.metrics import Metrics
from mapex_serve.predict import check_not_empty, overlap_for
from mapex_serve.repository import Manifest
from mapex_serve.responses import Encoded, Format
from mapex_serve.units import UnitOverrides
from mapex_serve.upload import RAW_NAME

__all__ = ["DecodePool", "DecodeUnavailableError", "NoRoomForTilesError", "WorkerJob", "WorkerLostError", "part_count",
           "run_all"]

log = logging.getLogger("mapex_serve.decode")

#: Uploads larger than this are copied into their slab in a thread, not on the event loop.
_COPY_IN_THREAD = 4 * 2**20

T = TypeVar("T")


class DecodeUnavailableError(MapexError, RuntimeError):
    """No decode worker could finish the request (one died under it twice, or none came up in time); retry."""


class WorkerLostError(RuntimeError):
    """The worker serving a request died before answering."""


class NoRoomForTilesError(SlabSpaceError):
    """The worker found no room in shared memory for the scene's tiles: ``files`` is the upload, to decode elsewhere."""

    def __init__(self, message: str, files: list[UploadedFile]) -> None:
        super().__init__(message)
        self.files = files


class _Worker:
    """One worker process and its pipe, read on the event loop itself (``add_reader``).

    No reader thread: a thread would need the GIL to pass each answer on, and could wait out the
    5 ms switch interval behind the busy loop while the engine sits idle. The pipe is non-blocking
    (uvloop makes it so anyway), so answers are read as bytes arrive and cut into messages here, in
    ``Connection``'s framing (a 4-byte big-endian length, or -1 and an 8-byte one, then a pickle):
    ``Connection.recv`` would fail on a large answer that has only partly arrived.
    """

    def __init__(self, index: int, process: multiprocessing.process.BaseProcess, conn: Connection,
                 loop: asyncio.AbstractEventLoop, on_lost: Callable[[_Worker], None]) -> None:
        self.index, self.process, self._conn, self._loop, self._on_lost = index, process, conn, loop, on_lost
        self.ready: asyncio.Future[int] = loop.create_future()
        self.sessions = 0
        self.alive = True
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = count()
        self._inbox = bytearray()
        os.set_blocking(conn.fileno(), False)
        loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        """Every whole answer that has arrived; a closed pipe means the worker is gone."""
        try:
            while chunk := os.read(self._conn.fileno(), 1 << 20):
                self._inbox += chunk
            gone = True  # end of file: the worker closed its end
        except BlockingIOError:
            gone = False  # all there is for now
        except OSError:  # reset: the worker was killed with answers unread
            gone = True
        for message in _messages(self._inbox):
            self._deliver(*message)
        if gone:
            self._lost()

    def _deliver(self, message_id: int, ok: bool, payload: Any) -> None:
        if message_id == READY:
            if not self.ready.done():
                self.ready.set_result(payload)
            return
        future = self._pending.pop(message_id, None)
        if future is not None and not future.done():
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(payload)

    def _lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self._conn.fileno())
        error = WorkerLostError(f"decode worker {self.index} (pid {self.process.pid}) exited")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: ``_pick`` looks at ``alive``, nobody awaits it
        self._on_lost(self)

    def _send(self, message: tuple) -> None:
        """Messages to a worker are small (the upload is in the slab): they fit the pipe's buffer whole."""
        if not self.alive:
            raise WorkerLostError(f"decode worker {self.index} is gone")
        try:
            self._conn.send(message)
        except BlockingIOError:  # a worker that has not read for a whole buffer's worth is stuck: replace it
            self.process.kill()
            raise WorkerLostError(f"decode worker {self.index} stopped reading its messages") from None
        except OSError as e:  # the worker died (its pipe may not have said so yet)
            self._lost()
            raise WorkerLostError(f"decode worker {self.index} is gone ({e})") from None

    async def call(self, kind: str, payload: Any) -> Any:
        message_id = next(self._ids)
        self._send((message_id, kind, payload))  # the answer is read on this loop: it cannot come before the await
        future = self._loop.create_future()
        self._pending[message_id] = future
        try:
            return await future
        finally:
            self._pending.pop(message_id, None)

    def tell(self, kind: str, payload: Any) -> None:
        """A message whose answer nobody waits for (``close``, ``exit``); lost with the worker if it is gone."""
        with contextlib.suppress(WorkerLostError):
            self._send((next(self._ids), kind, payload))

    async def close_session(self, sid: int, timeout_s: float = 10) -> None:
        """Close a session and wait until the worker has: none of its steps runs after this (or the worker is gone).

        The worker answers in message order, so a step it was running when the session ended is over by then.
        """
        with contextlib.suppress(WorkerLostError, TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.call("close", sid)

    def exit(self) -> None:
        """Stop listening and ask the worker to exit (on the loop; ``join`` then waits for it)."""
        if self.alive:
            self.tell("exit", None)
            self.alive = False
            self._loop.remove_reader(self._conn.fileno())

    def join(self, timeout: float) -> None:
        """Wait for the process to end, kill it after ``timeout``; blocking, so run in a thread."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()


class _TaskPlan(NamedTuple):
    """A task's largest batch of tiles and of outputs in bytes, the batches a request keeps in flight (slots), and
    the most parts a scene of it splits into."""

    tile_bytes: int
    out_bytes: int
    slots: int
    parts: int


class DecodePool:
    """``size`` decode worker processes: ``predict`` runs one ``/predict`` request on one of them, ``job`` a job."""

    def __init__(self, size: int, manifests: Mapping[str, Manifest], provider: Mapping[str, str], *,
                 metrics: Metrics, max_holding: int = 64, shm: Path = Path("/dev/shm"),
                 start_timeout_s: float = 60, runners: Mapping[str, int] | None = None,
                 predict_parts: int | None = None) -> None:
        self.size, self._manifests, self._provider = size, dict(manifests), dict(provider)
        self._cores = service_cores()
        #: The most parts a ``/predict`` mask scene of each specialist is split into (``part_count``).
        self._parts = {n: min(part_count(predict_parts, p, size, self._cores), size) for n, p in self._provider.items()}
        #: Engine runners of each specialist: a request's slab has a batch of tiles and of probabilities for
        #: each, and one the worker refills (``batcher.request_ahead``: fewer for large tiles).
        self._runners = dict(runners or {})
        self._plans: dict[tuple[tuple[str, ...], int], _TaskPlan] = {}  # by task (its specialists) and max batch
        #: Requests holding a slab, from ``prepare`` to ``Upload.discard``: the queue in front of the
        #: workers, bounded as the engine's is (a burst otherwise piles up here, each with its upload).
        self.holding, self._max_holding = 0, max_holding
        self._metrics, self._start_timeout = metrics, start_timeout_s
        for reading in get_args(Reading):  # every series shown from the start, at 0
            metrics.large_uploads.labels(reading)
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with engine threads
        self._workers: list[_Worker] = []
        self._sessions = count()
        self._stopping = False
        self.folder: Path = slab_folder(shm)
        clean_stale(self.folder)
        self._slabs = SlabPool(self.folder)
        self.restarts = 0

    def _spawn(self, index: int) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=serve, name=f"mapex-decode-{index}", daemon=True,
                                        args=(child, self._manifests, self._provider))
        process.start()
        child.close()
        return _Worker(index, process, parent, asyncio.get_running_loop(), self._replace)

    async def start(self) -> None:
        self._workers = [self._spawn(i) for i in range(self.size)]
        async with asyncio.timeout(self._start_timeout):
            await asyncio.gather(*(w.ready for w in self._workers))
        log.info("%d decode workers ready (pids %s)", self.size, ", ".join(str(w.process.pid) for w in self._workers))

    def _replace(self, lost: _Worker) -> None:
        """A worker died (or stopped answering): start its replacement at once (its requests retry on their own)."""
        if lost.process.is_alive():  # its pipe closed or failed, yet it runs: no request will reach it again
            lost.process.kill()
        lost.process.join(0.2)  # reaped, for its exit code; a killed process is gone at once
        if self._stopping:
            return
        self.restarts += 1
        self._metrics.decode_restarts.inc()
        log.warning("decode worker %d (pid %s) exited with %s; starting a new one", lost.index, lost.process.pid,
                    lost.process.exitcode)
        self._workers[lost.index] = self._spawn(lost.index)

    async def stop(self) -> None:
        self._stopping = True
        for w in self._workers:
            w.exit()
        await asyncio.gather(*(asyncio.to_thread(w.join, 10) for w in self._workers))
        self._slabs.clear()
        for slab in [*self.folder.glob("slab-*"), *self.folder.glob("pooled-*")]:
            slab.unlink(missing_ok=True)
        self.folder.rmdir()

    def _ready(self) -> list[_Worker]:
        """Workers that are up and take requests now."""
        return [w for w in self._workers if w.alive and w.ready.done() and w.ready.exception() is None]

    @property
    def ready_count(self) -> int:
        return len(self._ready())

    async def _pick(self, timeout: float) -> _Worker:
        """The ready worker with the fewest requests; waits for one to come up (after a death) for up to ``timeout``."""
        if ready := self._ready():  # nearly always: no time limit to set up
            return min(ready, key=lambda w: w.sessions)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if ready := self._ready():
                        return min(ready, key=lambda w: w.sessions)
                    starting = [w.ready for w in self._workers if w.alive and not w.ready.done()]
                    if starting:
                        await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
                    else:
                        await asyncio.sleep(0.05)
        except TimeoutError:
            raise DecodeUnavailableError(f"no decode worker came up within {timeout:g} s; retry shortly") from None

    def _layout(self, files: Sequence[tuple[str, int]], specialists: Sequence[str], max_batch: int,
                split: bool = True) -> Layout:
        """Room for the files and for the batches in flight of the task's largest tiles and outputs, for each part a
        ``/predict`` scene may ``split`` into (the slots of parts that never run are never reserved: the file is
        sparse); a job's scene is one part."""
        plan = self._plan(specialists, max_batch)
        return Layout.plan(files, plan.tile_bytes, plan.out_bytes, plan.slots * (plan.parts if split else 1))

    def _plan(self, specialists: Sequence[str], max_batch: int) -> _TaskPlan:
        """What a task's requests need, over every specialist of the task: worked out once a task, not once a
        request (a tenth of the event loop's profiled time on single tiles)."""
        key = (tuple(specialists), max_batch)
        if (plan := self._plans.get(key)) is None:
            tiles, outs = zip(*(batch_bytes(self._manifests[n], max_batch) for n in specialists), strict=True)
            slots = request_ahead(max(self._runners.get(n, 1) for n in specialists), max(tiles) + max(outs))
            parts = max(self._parts.get(n, 1) for n in specialists)
            plan = self._plans[key] = _TaskPlan(max(tiles), max(outs), slots, parts)
        return plan

    def prepare(self, files: Sequence[UploadedFile], specialists: Sequence[str], max_batch: int) -> Upload:
        """A slab for the request, made before any work starts: ``SlabSpaceError`` if the tmpfs has no room."""
        check_not_empty(len(f.data) for f in files)
        layout = self._layout([(f.name, len(f.data)) for f in files], specialists, max_batch)
        return self._hold(layout, list(files))

    def prepare_raw(self, size: int, specialists: Sequence[str], max_batch: int, name: str = RAW_NAME) -> Upload:
        """A slab for a raw body of ``size`` bytes (the file ``name``), which ``Upload.sink`` then receives as it
        streams in."""
        return self._hold(self._layout([(name, size)], specialists, max_batch), [])

    def prepare_parts(self, body: int, specialists: Sequence[str], max_batch: int, *, chunked: bool = False) -> Upload:
        """A slab for the file parts of a multipart body of ``body`` bytes, which ``Upload.part_sink`` writes there one
        after another as they stream in (their sizes are known only as each ends); ``chunked``: for a body sent chunked
        (raw or multipart), of at most ``body`` bytes, whose pages are reserved as they are written."""
        layout = self._layout([(RAW_NAME, parts_room(body))], specialists, max_batch)
        reserved = min(RESERVE_STEP, layout.files_end) if chunked else None  # the rest as it comes (``Upload.reserved``)
        upload = self._hold(layout, [], reserved)
        _name, offset, size = upload.layout.files[0]
        upload.open_ended, upload.region, upload.reserved = True, (offset, size), reserved
        return upload

    def _hold(self, layout: Layout, files: list[UploadedFile], reserve: int | None = None) -> Upload:
        """The request's slab, its files region reserved (or its first ``reserve`` bytes), counted until it is
        discarded; ``QueueFullError`` (503) when the workers hold enough."""
        if self.holding >= self._max_holding:
            raise QueueFullError(f"the decode workers hold {self.holding} requests, at most {self._max_holding} "
                                 f"(MAPEX_MAX_DECODING a worker); retry shortly")
        upload = Upload(self._slabs.take(layout.size, layout.files_end if reserve is None else reserve), layout, files,
                        self._release)
        self.holding += 1
        return upload

    def _release(self, slab: Slab, clean: bool) -> None:
        self.holding -= 1
        self._slabs.give(slab, clean)

    async def predict(
        self, upload: Upload, specialists: Sequence[str], batchers: Mapping[str, Batcher], *,
        bands: Sequence[str] | None, modality: str | None, overrides: UnitOverrides, max_pixels: int,
        max_unpacked: int, max_batch: int, budget: MemoryBudget, format: Format | None, accept: str, wait_s: float = 30,
    ) -> Encoded:
        """The encoded answer for one request: opened, tiled, blended and encoded by a worker, tried twice.

        A body still arriving whose first file is a TIFF with its directories first is read as it arrives (a scene
        split in parts: each part as its own rows arrive); if a second file comes after all (a multipart body), that
        session is dropped and the request read once every file is in, as any other.
        """
        options = dict(specialists=tuple(specialists), bands=tuple(bands) if bands else None, modality=modality,
                       overrides=overrides, max_pixels=max_pixels, max_unpacked=max_unpacked, max_batch=max_batch,
                       format=format, accept=accept)
        try:
            if upload.files and upload.layout.size > _COPY_IN_THREAD:
                await asyncio.to_thread(upload.fill)
            else:
                upload.fill()
            parts = self._plan(specialists, max_batch).parts
            if upload.arriving is not None:  # a large body, received while the request goes on
                reading = await upload.reading()
                self._metrics.large_uploads.labels(reading).inc()
                if reading == "while_arriving":
                    encoded = await self._while_arriving(upload, dict(options, parts=parts), batchers, budget, wait_s)
                    if encoded is not None:
                        return encoded
            if upload.arriving is not None:
                await upload.arriving  # all of it (or the error that cut it short)
            if upload.open_ended:
                check_not_empty(size for _name, _offset, size in upload.layout.files)
            layout = upload.layout.share(0, parts)
            return await self._attempts(upload, dict(options, layout=layout, parts=parts), batchers, budget, wait_s)
        except SlabSpaceError as e:  # raised by the worker before it wrote a tile: the upload goes back whole
            if upload.arriving is not None:
                await upload.arriving  # all of it (or the error that cut it short)
            raise NoRoomForTilesError(f"for its tiles: {e}", upload.read_files()) from None
        finally:
            upload.discard()

    async def _while_arriving(self, upload: Upload, options: dict[str, Any], batchers: Mapping[str, Batcher],
                              budget: MemoryBudget, wait_s: float) -> Encoded | None:
        """The answer of a session that reads the first file as it arrives; None when the body brought more files."""
        reading = asyncio.ensure_future(self._attempts(
            upload, dict(options, layout=upload.first_file().share(0, options["parts"])), batchers, budget, wait_s,
            arriving=True))
        upload.on_more_files(reading.cancel)
        try:
            encoded = await reading
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # this request itself was cancelled
                raise
            return None  # another file came: the session read the wrong scene
        except Exception:  # such as a 422 for bands the other files bring: the answer waits for them
            if not upload.open_ended:
                raise
            await upload.arriving
            if len(upload.layout.files) == 1:
                raise
            return None
        finally:
            upload.on_more_files(None)
        await upload.arriving
        return encoded if len(upload.layout.files) == 1 else None

    async def _attempts(self, upload: Upload, request: dict[str, Any], batchers: Mapping[str, Batcher],
                        budget: MemoryBudget, wait_s: float, arriving: bool = False) -> Encoded:
        """The request's session on a worker; once more on another if that worker dies (503 if the second does)."""
        for attempt in (1, 2):
            worker = await self._pick(wait_s)
            try:
                first_arriving = arriving and not upload.first_complete
                opening = OpenRequest(next(self._sessions), str(upload.slab.path), **request,
                                      room=budget.room(), arrived=upload.arrived if first_arriving else None)
                encoded = await self._session(worker, upload, opening, batchers, budget, wait_s)
                upload.clean = True  # its sessions are over: nothing writes to its slab any more
                return encoded
            except WorkerLostError as e:
                if attempt == 2:
                    raise DecodeUnavailableError(f"the decode worker died twice while reading this upload ({e}); "
                                                 f"retry; if it happens again the file may crash GDAL") from None
                log.warning("%s during a request; trying it again on a fresh worker", e)
        raise AssertionError("unreachable")

    async def _session(self, worker: _Worker, upload: Upload, request: OpenRequest, batchers: Mapping[str, Batcher],
                       budget: MemoryBudget, wait_s: float) -> Encoded:
        """Drive one request's session: its memory reserved, then its batches (``run_batches``), or its parts'."""
        worker.sessions += 1
        reservation, finished = Reservation(None, 0), False
        _tell_arrivals(upload, worker, request)
        try:
            opened: Opened = await worker.call("open", request)
            reservation = budget.reserve(opened.need, opened.what)
            batcher = batchers[opened.specialist]
            if opened.sizes is None:  # the worker waited for this reservation, or for the parts, before tiling
                split = await self._split(worker, upload, request, opened, batcher, budget, wait_s)
                if split is not None:
                    finished = True
                    return split
                opened = await worker.call("start", (request.session,))
            encoded: Encoded = await run_batches(
                worker, request.session, upload.slab, request.layout, (opened.tile_shape, self._outputs(batcher.name)),
                opened.sizes, lambda tiles, out, k: batcher.submit(tiles, admit=k == 0, out=out), lambda n: n,
                lambda: self._tail_threads(batcher))
            finished = True
            return encoded
        finally:
            upload.listen(request.session, None)
            reservation.release()
            worker.sessions -= 1
            if not finished:  # cancelled, refused by the batcher or budget, or failed: the worker lets it go, and a
                # retry may reuse its slots only once no step of it still writes there
                await worker.close_session(request.session)

    def _outputs(self, specialist: str) -> tuple[int, ...]:
        """The shape of one tile's outputs from ``specialist``."""
        return tuple(self._manifests[specialist].output.shape[1:])

    def _tail_threads(self, batcher: Batcher) -> int:
        """Threads for a scene's COG once its last batch is back: its worker's core, and the engine's when nothing
        else runs there (a lone 4096² scene's COG: 0.106 s on one thread, 0.060 s on two)."""
        return min(self._cores, 1 + batcher.runners) if batcher.idle else 1

    async def _split(self, first: _Worker, upload: Upload, request: OpenRequest, opened: Opened, batcher: Batcher,
                     budget: MemoryBudget, wait_s: float) -> Encoded | None:
        """A mask scene in parts on the idle workers, ``first`` encoding the answer; None when it stays whole (too
        small, no other worker idle, no memory for more parts, no room for the shared mask): ``start`` it on ``first``.

        Only idle workers take parts: a lone scene gets them all, while under load each scene runs
        whole and no worker pays for a second open. Each part is a session with its own slots in the
        upload's slab; they blend their rows into one shared mask and the first part's session
        answers from it. A worker lost under any part fails the request as a lost worker does
        (``predict`` tries it once more).
        """
        split, manifest = opened.split, self._manifests[opened.specialist]
        if split is None:
            return None
        size = manifest.tile_size
        affordable = 1 + budget.available // max(split.part_need, 1)
        idle = 1 + sum(w is not first and w.sessions == 0 for w in self._ready())
        rows = scene_parts(split.height, split.width, size, overlap_for(size), min(request.parts, affordable, idle))
        self._metrics.scene_parts.labels(opened.specialist).observe(len(rows))
        if len(rows) < 2:
            return None
        batcher.admit(request.max_batch)  # the request's admission: its parts' batches are never refused after
        try:
            mask = Slab.create(self.folder, MaskSlab.size(split.height, split.width))
        except SlabSpaceError as e:
            log.warning("a %d x %d scene runs whole on one decode worker: no shared memory for its mask (%s)",
                        split.width, split.height, e)
            return None
        extra = Reservation(None, 0)
        try:
            extra = budget.reserve((len(rows) - 1) * split.part_need, f"{opened.what} in {len(rows)} parts")
            log.info("a %d x %d scene runs in %d parts on the decode workers: rows %s", split.width, split.height,
                     len(rows), ", ".join(f"{r0}-{r1}" for r0, r1 in rows))
            return await self._run_parts(first, upload, request, opened.specialist, rows, mask, batcher, wait_s)
        finally:
            extra.release()
            mask.close()  # the workers keep their own mappings until their sessions close
            mask.unlink()

    async def _run_parts(self, first: _Worker, upload: Upload, request: OpenRequest, specialist: str,
                         rows: list[tuple[int, int]], mask: Slab, batcher: Batcher, wait_s: float) -> Encoded:
        """Each part's batches on its worker (the first on ``first``), then the first part's answer for the scene."""

        async def run_first() -> PartDone:
            started: Opened = await first.call("start", (request.session, ScenePart(rows[0], str(mask.path))))
            return await run_batches(first, request.session, upload.slab, request.layout,
                                     (started.tile_shape, self._outputs(batcher.name)), started.sizes,
                                     lambda tiles, out, _k: batcher.submit(tiles, admit=False, out=out), lambda n: n)

        async def run_other(i: int) -> PartDone:  # part of an admitted request (_split): its batches are never refused
            worker, done = await self._pick(wait_s), False
            arriving = request.arrived is not None and not upload.first_complete
            part = replace(request, session=next(self._sessions), part=ScenePart(rows[i], str(mask.path)),
                           layout=replace(upload.layout.share(i, request.parts), files=request.layout.files),
                           arrived=upload.arrived if arriving else None)
            worker.sessions += 1
            _tell_arrivals(upload, worker, part)
            try:
                started: Opened = await worker.call("open", part)
                if started.specialist != specialist:
                    raise RuntimeError(f"part {i} of a scene routed to {started.specialist}, the first to {specialist}")
                result = await run_batches(worker, part.session, upload.slab, part.layout,
                                           (started.tile_shape, self._outputs(batcher.name)), started.sizes,
                                           lambda tiles, out, _k: batcher.submit(tiles, admit=False, out=out),
                                           lambda n: n)
                done = True
                return result
            finally:
                upload.listen(part.session, None)
                worker.sessions -= 1
                if not done:
                    await worker.close_session(part.session)

        done = await run_all([run_first(), *(run_other(i) for i in range(1, len(rows)))])
        return await first.call("encode", (request.session, done))

    @contextlib.asynccontextmanager
    async def job(self, plan: JobPlan, specialists: Sequence[str], max_batch: int,
                  wait_s: float = 30) -> AsyncIterator[WorkerJob]:
        """A whole-scene job opened and routed on the least busy worker, with a slab for its tiles only.

        Not counted against ``MAPEX_MAX_DECODING`` (``MAPEX_JOB_CONCURRENCY`` bounds jobs). A
        ``WorkerLostError`` is the caller's to retry: a job resumes from the strips it recorded.
        """
        layout = self._layout([], specialists, max_batch, split=False)
        slab = Slab.create(self.folder, layout.size, reserve=0)
        worker: _Worker | None = None
        job: WorkerJob | None = None
        try:
            worker = await self._pick(wait_s)
            worker.sessions += 1
            request = JobOpenRequest(next(self._sessions), str(slab.path), layout, tuple(specialists), plan)
            opened: JobOpened = await worker.call("open", request)
            job = WorkerJob(worker, request, slab, opened, self._outputs(opened.specialist))
            yield job
        finally:
            slab.close()  # the worker keeps its own mapping until it closes the session
            slab.unlink()
            if worker is not None:
                worker.sessions -= 1
                if job is None or not job.finished:  # its files are removed next: wait out a step still writing
                    await worker.close_session(request.session)


@dataclass
class WorkerJob:
    """A job's session on one worker: ``start`` where it resumes, then ``run`` its batches to the summary."""

    worker: _Worker
    request: JobOpenRequest
    slab: Slab
    opened: JobOpened
    out_shape: tuple[int, ...]  # one tile's outputs
    started: JobStarted | None = None
    finished: bool = False

    async def start(self, rows: tuple[int, int] | None, known: Sequence[StripRecord]) -> JobStarted:
        """Tile rows ``[r0, r1)`` of the scene (None: none), ``known`` the strips recorded outside them."""
        self.started = await self.worker.call("start", (self.request.session, rows, list(known)))
        return self.started

    async def run(self, submit: Callable[[np.ndarray, np.ndarray], Awaitable[np.ndarray]],
                  stepped: Callable[[JobStep], int]) -> JobStep:
        """Every batch through ``submit`` (tiles, and where their outputs go); ``stepped`` hears each step's strips
        and progress. The final step."""
        if self.started is None:
            raise RuntimeError("start the job before running it")
        final: JobStep = await run_batches(self.worker, self.request.session, self.slab, self.request.layout,
                                           (self.opened.tile_shape, self.out_shape), self.started.sizes,
                                           lambda tiles, out, _k: submit(tiles, out), stepped)
        self.finished = True
        return final


async def run_batches(worker: _Worker, sid: int, slab: Slab, layout: Layout,
                      shapes: tuple[tuple[int, ...], tuple[int, ...]], sizes: Sequence[int],
                      submit: Callable[[np.ndarray, np.ndarray, int], Awaitable[np.ndarray]],
                      stepped: Callable[[Any], int], threads: Callable[[], int] = lambda: 1) -> Any:
    """A session's batches through the engine, each slot refilled as its output comes back; ``finish``'s answer.

    Batch k lives in tile slot k % S and its output in probability slot k % S (S slots,
    ``batcher.request_ahead``: one for each engine runner, and one more); ``submit(tiles, out, k)``
    has the engine write the outputs into ``out``, that slot (``shapes``: one tile's and one tile's
    outputs). Once batch k's output is back, ``step`` has the worker blend it and read batch k + S
    into the freed slot while the engine runs the others; ``stepped`` turns the step's answer into
    that batch's size (0: none). With no batch at all, ``finish`` gets no last batch. ``threads``:
    the cores the worker may take for what follows the last batch (compressing a COG), asked when
    it is back. On the way out, early, it waits until no batch of its own is in the engine: none
    writes to the slab after it (a retry of the request may use the same slots).
    """
    slots = len(layout.tiles)
    tile_shape, out_shape = shapes
    inflight: deque[tuple[int, asyncio.Future[np.ndarray]]] = deque()

    def send(k: int, n: int) -> None:
        tiles = slab.array(layout.tiles[k % slots], (n, *tile_shape))
        out = slab.array(layout.probs[k % slots], (n, *out_shape))
        inflight.append((k, asyncio.ensure_future(submit(tiles, out, k))))

    try:
        for k, n in enumerate(sizes):
            if n:
                send(k, n)
        if not inflight:
            return await worker.call("finish", (sid, None, None, threads()))
        while inflight:
            k, running = inflight.popleft()
            probs = await running  # in its slot already
            if not inflight:  # the last batch
                return await worker.call("finish", (sid, k, probs.shape, threads()))
            if n := stepped(await worker.call("step", (sid, k, probs.shape))):
                send(k + slots, n)
        raise AssertionError("unreachable: the loop returns at the last batch")
    finally:
        for _k, running in inflight:
            running.cancel()  # its tiles leave the queue unrun; a batch in the engine runs to its end
        if inflight:
            await asyncio.wait([running for _k, running in inflight])  # ``submit`` ends once its batch has


def _tell_arrivals(upload: Upload, worker: _Worker, request: OpenRequest) -> None:
    """A session that reads the upload as it arrives hears how much is in (its worker waits for those bytes)."""
    if request.arrived is not None:
        upload.listen(request.session, lambda arrived, whole: worker.tell("arrived", (request.session, arrived, whole)))


def _messages(inbox: bytearray) -> Iterator[tuple]:
    """The whole messages at the start of ``inbox`` (removed from it), in ``Connection.send``'s framing."""
    while len(inbox) >= 4:
        (size,), start = struct.unpack_from("!i", inbox), 4
        if size == -1:  # 2 GiB or more: an 8-byte length follows
            if len(inbox) < 12:
                return
            (size,), start = struct.unpack_from("!Q", inbox, 4), 12
        if len(inbox) < start + size:
            return
        message = pickle.loads(inbox[start : start + size])
        del inbox[: start + size]
        yield message


#: Service cores for each part of a scene on a CPU engine (``part_count``).
CPU_CORES_A_PART = 3


def part_count(setting: int | None, provider: str, workers: int, cores: int) -> int:
    """How many parts a scene is split into: the setting, else one a worker when the engine is off the CPU, and one
    for every ``CPU_CORES_A_PART`` of the service's ``cores`` on it (at most ``workers``, at least 1).

    On the CPU the engine shares the cores with the workers, and each part adds decoding (a second open, the
    tile row above it read twice): on 2 cores a 4096² scene took as long in two parts as whole. On a 16-core
    node one worker fed the demo's CPU engine only 0.36 of the time (the scene 2.6x the engine alone), while
    its decoding ran 2.1x faster in 4 parts and 3.3x in 8 (docs/performance.md): a part for every 3 cores (5
    there) is predicted to keep the lightest specialist fed, unmeasured in the service, and keeps scenes whole
    on up to 5 cores.
    """
    if setting is not None:
        return setting
    if provider != CPU_EP:
        return workers
    return max(1, min(workers, cores // CPU_CORES_A_PART))


async def run_all(work: Iterable[Awaitable[T]]) -> list[T]:
    """Every awaitable at once; on the first failure (or a cancellation) the others are cancelled and waited for."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

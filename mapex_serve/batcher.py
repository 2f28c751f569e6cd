"""Dynamic batching: tiles of concurrent requests for one specialist share engine batches.

Each request submits its tiles and awaits their results; one worker task per specialist hands an
idle engine what is queued at once (a lone request never waits for company), and while the engine
runs a batch it gathers the next one, up to ``max_batch`` tiles or ``max_delay_ms`` after its first
tile, to start the moment the engine is free. The engine runs in threads of its own (the event
loop never blocks on it), ``runners`` batches at once (``MAPEX_ENGINE_RUNNERS``: on CPU, two
single-threaded runs of a small specialist outdo one run on two threads), and each request gets
back its own rows (written by the engine's thread where the request says: its shared memory). The
queue is bounded: a request that would overflow it is refused at once. Tiles of a request that
was cancelled (timed out, client gone) are dropped before the engine sees them. On stop the queue
drains: every admitted tile is run, or, past the drain time, answered with ``ServiceStoppingError``
(503) instead of being left without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import count

import numpy as np

from mapex_serve.errors import MapexError
from mapex_serve.metrics import Metrics

__all__ = ["BACKGROUND", "INTERACTIVE", "REQUEST_BUFFER_BYTES", "Batcher", "QueueFullError", "ServiceStoppingError",
           "request_ahead"]


class QueueFullError(MapexError, RuntimeError):
    """The specialist's queue holds ``max_queue`` tiles already; retry after a moment."""


class ServiceStoppingError(MapexError, RuntimeError):
    """The service is shutting down and did not get to these tiles; retry (another replica will serve)."""


#: Priorities of ``submit``: interactive requests first, whole-scene jobs when the engine has room.
INTERACTIVE, BACKGROUND = 0, 1

#: Bytes of the buffers one request's batches in flight may hold (tiles and probabilities, in its
#: shared-memory slab or in memory; ``request_ahead``). With a runner a core, a scene of 128 px tiles
#: (6 bands, 10 classes: 32 MiB a batch of 32) on a 64-core node would otherwise hold 2 GiB; with this
#: bound it holds 8 batches. Other requests fill the other runners.
REQUEST_BUFFER_BYTES = 256 * 2**20


def request_ahead(runners: int, batch_bytes: int) -> int:
    """Batches one request keeps submitted: one for each runner and one queued behind them, so that a runner that
    frees up finds the request's next batch waiting; fewer when their buffers (``batch_bytes`` each: a batch of
    tiles and its probabilities) would pass ``REQUEST_BUFFER_BYTES``, but never fewer than two."""
    return max(2, min(runners + 1, REQUEST_BUFFER_BYTES // max(batch_bytes, 1)))


@dataclass(order=True)
class _Job:
    priority: int
    seq: int  # first come, first served within a priority
    tiles: np.ndarray = field(compare=False)
    future: asyncio.Future[np.ndarray] = field(compare=False)
    queued_at: float = field(compare=False)
    #: Where the engine's thread writes the job's outputs (``submit``'s ``out``), or None: a slice of the batch's.
    out: np.ndarray | None = field(default=None, compare=False)
    #: The batch that runs the job, once the engine has it: ``out`` may be written until it ends.
    batch: asyncio.Task[None] | None = field(default=None, compare=False)


class Batcher:
    """One engine's queue and the worker that feeds it batches, ``runners`` at once (``executor`` has that many threads)."""

    def __init__(
        self, name: str, run: Callable[[np.ndarray], np.ndarray], executor: Executor, *,
        max_batch: int, max_delay_ms: float, max_queue: int, metrics: Metrics, runners: int = 1,
        ahead: int | None = None, run_into: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> None:
        """``ahead``: batches one request keeps submitted (``request_ahead``; default ``runners`` + 1). ``run_into``:
        ``run`` writing its outputs into the array given (``Engine.run_into``); default: ``run``'s outputs copied there."""
        if runners < 1:
            raise ValueError(f"runners must be at least 1, got {runners}")
        self.name, self._run, self._executor, self.runners = name, run, executor, runners
        self._run_into = run_into or self._copy_into
        self.ahead = runners + 1 if ahead is None else ahead
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay_ms / 1000, max_queue
        self._metrics = metrics.of_specialist(name)
        self._queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
        self._seq = count()
        self._depth = 0
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Job | None = None  # a job that did not fit the last batch; it leads the next
        self._running: dict[int, list[_Job]] = {}  # the jobs of each batch the engine is running
        self._running_tiles = 0  # their tiles
        self._next: list[_Job] = []  # the jobs of the batch collected while they run
        self._inflight: set[asyncio.Task[None]] = set()
        self._freed: asyncio.Future[None] | None = None  # set when a runner frees up after all were busy
        self._idle: asyncio.Future[None] | None = None  # set when the last running batch ends
        self._stopping = False
        #: Tiles dropped because their request was cancelled before they reached the engine.
        self.dropped = 0

    @property
    def idle(self) -> bool:
        """No tile queued, gathered or running: the engine's cores are free."""
        return self._depth == 0 and not self._running and not self._next and self._carry is None

    @property
    def depth(self) -> int:
        """Tiles queued and not yet handed to the engine."""
        return self._depth

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.name}")

    async def stop(self, drain_s: float = 30.0) -> None:
        """Refuse new tiles, run what is queued for up to ``drain_s``, then answer the rest with a 503."""
        self._stopping = True
        deadline = time.perf_counter() + drain_s
        while (self._depth > 0 or self._running or self._next) and time.perf_counter() < deadline and self._worker:
            await asyncio.sleep(0.005)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for task in self._inflight:
            task.cancel()  # its engine call finishes in its thread; its jobs are answered below
        await asyncio.gather(*self._inflight, return_exceptions=True)
        left = [*(j for jobs in self._running.values() for j in jobs), *self._next,
                *([self._carry] if self._carry else [])]
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for job in left:
            if not job.future.done():
                job.future.set_exception(ServiceStoppingError(
                    f"specialist {self.name} stopped before running these tiles (the service is shutting down); retry"))
        self._running, self._running_tiles, self._next, self._carry, self._depth = {}, 0, [], None, 0

    def admit(self, tiles: int) -> None:
        """Admission of a request that brings ``tiles`` first: ``QueueFullError`` (503) when the queue has no room.
        ``submit`` checks it for a request's first batch; a scene split into parts checks it once, before any part
        submits, since its parts' batches together may pass ``max_queue``."""
        if self._depth + tiles > self.max_queue:
            raise QueueFullError(
                f"specialist {self.name} has {self._depth} tiles queued and this request brings {tiles}; "
                f"the queue holds at most {self.max_queue} (MAPEX_MAX_QUEUE); retry shortly"
            )

    async def submit(self, tiles: np.ndarray, *, admit: bool = True, priority: int = INTERACTIVE,
                     out: np.ndarray | None = None) -> np.ndarray:
        """Results for ``tiles`` (N, C, T, T), in order; chunks larger than a batch are split.

        ``admit=False`` is for a request's later batches: a request once admitted is finished,
        never refused half-way, so the queue can pass ``max_queue`` by what admitted requests hold.
        ``BACKGROUND`` tiles (whole-scene jobs) are taken only when no interactive tile is waiting.

        ``out`` (N, *outputs): the engine's thread writes the results there, and ``submit`` returns it.
        A request's shared memory gets its probabilities without a copy on the event loop (a batch's
        only job through ``run_into``, which a GPU engine binds as its output). Cancelled or failed
        while the engine runs its tiles, ``submit`` ends only once that run has, so that ``out`` may be
        reused (or another try of the request written there) as soon as ``submit`` is over.
        """
        if self._stopping:
            raise ServiceStoppingError(f"specialist {self.name} is stopping (the service is shutting down); retry")
        if admit:
            self.admit(len(tiles))
        loop = asyncio.get_running_loop()
        jobs = []
        for start in range(0, len(tiles), self.max_batch):
            chunk = tiles[start : start + self.max_batch]
            rows = None if out is None else out[start : start + self.max_batch]
            jobs.append(_Job(priority, next(self._seq), chunk, loop.create_future(), time.perf_counter(), rows))
            self._depth += len(chunk)
            self._queue.put_nowait(jobs[-1])
        self._metrics.queue_depth.set(self._depth)
        try:
            outputs = await asyncio.gather(*(j.future for j in jobs))
        except BaseException:
            for j in jobs:
                j.future.cancel()  # the request's other chunks leave the queue unrun
            if out is not None:
                await self._left_engine(jobs)
            raise
        if out is not None:
            return out
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    @staticmethod
    async def _left_engine(jobs: list[_Job]) -> None:
        """Until the batches that run any of ``jobs`` have ended (the jobs still queued never run: ``_live``)."""
        running = {j.batch for j in jobs if j.batch is not None and not j.batch.done()}
        if running:
            await asyncio.wait(running)

    def _live(self, job: _Job) -> bool:
        """False for a job whose request was cancelled: its tiles leave the queue without reaching the engine."""
        if job.future.done():
            self._depth -= len(job.tiles)
            self.dropped += len(job.tiles)
            self._metrics.tiles_dropped.inc(len(job.tiles))
            return False
        return True

    async def _next_live(self) -> _Job:
        while True:
            job = await self._queue.get()
            if self._live(job):
                return job

    async def _collect(self, busy: asyncio.Future | None) -> list[_Job]:
        """The next batch, gathered while the engine is busy (``busy`` resolves when gathering should stop).

        An idle engine gets what is queued at once: a lone request never waits for company. While
        the engine is busy, tiles arriving within ``max_delay`` of the batch's first join it, up to
        its share (``_share``); the batch closes when it has its share, the delay has passed or
        ``busy`` resolves: a runner freed up when all were busy, or the last running batch ended when
        some were.
        """
        first, self._carry = self._carry, None
        if first is not None and not self._live(first):
            first = None
        jobs = [first or await self._next_live()]
        size, deadline = len(jobs[0].tiles), time.perf_counter() + self.max_delay
        while size < self._share():
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if busy is None or busy.done() or remaining <= 0:
                    break
                getting = asyncio.ensure_future(self._queue.get())
                await asyncio.wait({getting, busy}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getting  # a job it took in that very step is kept, not lost
                    if asyncio.current_task().cancelling():
                        raise asyncio.CancelledError  # the worker itself is being stopped
                    if getting.cancelled():
                        continue
                job = getting.result()
            else:
                job = self._queue.get_nowait()
            if not self._live(job):
                continue
            if size + len(job.tiles) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            size += len(job.tiles)
        return jobs

    def _share(self) -> int:
        """The most tiles a batch gathers: ``max_batch``, or fewer while several runners would split the tiles in
        the service (queued and running) between them.

        Why: at concurrency 32 on binary ``/v2`` with two runners, requests came back in waves. One
        runner ran the wave's 31 tiles in one batch (10 ms on one core) while the other ran the
        stragglers one by one, and then the event loop answered the wave while the engine waited.
        Batches no larger than a runner's share of the tiles cut the waves in two, the engine and the
        loop overlap, and the service answered 14% more requests a second (docs/performance.md, stop
        32). One runner (a GPU) always gathers up to ``max_batch``.
        """
        if self.runners == 1:
            return self.max_batch
        return min(self.max_batch, -(-(self._depth + self._running_tiles) // self.runners))

    def _ended(self, jobs: list[_Job]) -> None:
        """A batch is out of the engine (answered or failed)."""
        if self._running.pop(id(jobs), None) is not None:
            self._running_tiles -= sum(len(j.tiles) for j in jobs)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        """Run one batch on the engine thread and hand each job its rows (or the engine's error)."""
        loop = asyncio.get_running_loop()
        # One job (a scene's batch, or a lone request): its tiles as they are, no copy on the event loop.
        batch = jobs[0].tiles if len(jobs) == 1 else np.concatenate([j.tiles for j in jobs])
        now = time.perf_counter()
        for j in jobs:
            self._metrics.queue_seconds.observe(now - j.queued_at)
        self._metrics.batch_size.observe(len(batch))
        try:
            out = await loop.run_in_executor(self._executor, self._compute, batch, jobs)
        except Exception as e:  # noqa: BLE001 - handed to every waiting request
            self._ended(jobs)
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        finally:
            self._metrics.compute_seconds.observe(time.perf_counter() - now)
        self._ended(jobs)
        start = 0
        for j in jobs:
            if not j.future.done():
                j.future.set_result(j.out if j.out is not None else out[start : start + len(j.tiles)])
            start += len(j.tiles)

    def _compute(self, batch: np.ndarray, jobs: list[_Job]) -> np.ndarray | None:
        """The engine on ``batch``, in a runner thread; each job with an ``out`` gets its rows there, written in
        this thread rather than on the event loop (a batch's only job through ``run_into``).

        Why: a scene's probabilities copied into its shared memory on the loop were a sixth of the
        loop's CPU a scene (docs/performance.md, stop 34).
        """
        if len(jobs) == 1 and jobs[0].out is not None:
            self._run_into(batch, jobs[0].out)
            return None
        out = self._run(batch)
        start = 0
        for j in jobs:
            if j.out is not None:
                j.out[...] = out[start : start + len(j.tiles)]
            start += len(j.tiles)
        return out

    def _copy_into(self, batch: np.ndarray, out: np.ndarray) -> None:
        out[...] = self._run(batch)

    async def _work(self) -> None:
        """Collect the next batch while the engine is busy; start it on a free runner."""
        while True:
            self._next = await self._collect(self._freed if len(self._inflight) >= self.runners else self._idle)
            if len(self._inflight) >= self.runners:
                await asyncio.shield(self._freed)
            jobs = [j for j in self._next if self._live(j)]  # a request may have left while its batch waited
            self._next = []
            if not jobs:
                continue
            size = sum(len(j.tiles) for j in jobs)
            self._depth -= size
            self._metrics.queue_depth.set(self._depth)
            self._running[id(jobs)] = jobs  # running from now on, for ``_share`` before its task's first step
            self._running_tiles += size
            task = asyncio.ensure_future(self._run_batch(jobs))
            for j in jobs:
                j.batch = task
            if not self._inflight:
                self._idle = asyncio.get_running_loop().create_future()
            self._inflight.add(task)
            task.add_done_callback(self._runner_free)
            if len(self._inflight) >= self.runners:
                self._freed = asyncio.get_running_loop().create_future()

    def _runner_free(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._freed is not None and not self._freed.done():
            self._freed.set_result(None)
        if not self._inflight and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mapex_serve.batcher import REQUEST_BUFFER_BYTES, Batcher, QueueFullError, ServiceStoppingError, request_ahead
from mapex_serve.metrics import Metrics


def engine(batch: np.ndarray) -> np.ndarray:
    """A real computation whose rows identify their input: the mean of each tile."""
    return batch.mean(axis=(1, 2, 3))


def tiles(n: int, start: float) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 4, 4), np.float32)


def run(coro):
    return asyncio.run(coro)


async def entered(event: threading.Event) -> None:
    """Until an engine's thread has set ``event`` on entering its batch: a sleep for it raced a loaded machine (two
    xdist workers on two cores), and the tests then measured the machine, not the batcher."""
    assert await asyncio.to_thread(event.wait, 5), "the engine never entered its batch"


def overlapping(target: list[int], seconds: float = 0.5):
    """An engine that counts how many of its calls overlap (``peak``) and holds each until ``target[0]`` did (or
    ``seconds`` passed): the overlap the batcher allows is then measured, not how fast a loaded machine started
    the calls."""
    lock, active, peak = threading.Condition(), [0], [0]

    def counting(batch: np.ndarray) -> np.ndarray:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            lock.notify_all()
            lock.wait_for(lambda: peak[0] >= target[0], timeout=seconds)
            active[0] -= 1
        return engine(batch)

    return counting, peak


def batch_sizes(metrics: Metrics, name: str) -> tuple[float, float]:
    count = metrics.registry.get_sample_value("mapex_batch_size_count", {"specialist": name})
    total = metrics.registry.get_sample_value("mapex_batch_size_sum", {"specialist": name})
    return count, total


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    metrics = Metrics()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", engine, pool, max_batch=16, max_delay_ms=20, max_queue=1000, metrics=metrics)
            b.start()
            results = await asyncio.gather(*(b.submit(tiles(3, 100 * i)) for i in range(20)))
            await b.stop()
        return results

    results = run(main())
    for i, r in enumerate(results):
        assert r.tolist() == [100 * i, 100 * i + 1, 100 * i + 2]
    count, total = batch_sizes(metrics, "s")
    assert total == 60 and count < 20, "tiles of concurrent requests must share batches"


def test_a_large_request_is_split_into_batches_in_order():
    metrics = Metrics()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", engine, pool, max_batch=8, max_delay_ms=1, max_queue=1000, metrics=metrics)
            b.start()
            out = await b.submit(tiles(50, 0))
            await b.stop()
        return out

    assert run(main()).tolist() == list(range(50))
    count, total = batch_sizes(metrics, "s")
    assert total == 50 and count == 7  # six full batches of 8 and the last 2


def test_a_full_queue_refuses_at_once_and_serves_again_later():
    metrics = Metrics()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", engine, pool, max_batch=4, max_delay_ms=1, max_queue=10, metrics=metrics)
            with pytest.raises(QueueFullError, match="at most 10"):
                await b.submit(tiles(11, 0))
            b.start()
            out = await b.submit(tiles(10, 0))
            await b.stop()
        return out

    assert run(main()).tolist() == list(range(10))


def test_an_admitted_request_is_never_refused_half_way():
    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", engine, pool, max_batch=4, max_delay_ms=1, max_queue=4, metrics=Metrics())
            first = asyncio.ensure_future(b.submit(tiles(4, 0)))  # queued, worker not started: the queue is full
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError):
                await b.submit(tiles(4, 10))  # a new request is refused
            later = asyncio.ensure_future(b.submit(tiles(4, 20), admit=False))  # an admitted one's next batch waits
            await asyncio.sleep(0)
            assert b.depth == 8
            b.start()
            out = await asyncio.gather(first, later)
            await b.stop()
        return out

    first, later = run(main())
    assert first.tolist() == [0, 1, 2, 3] and later.tolist() == [20, 21, 22, 23]


def test_admission_alone_refuses_what_the_queue_has_no_room_for_and_queues_nothing():
    """A scene split into parts is admitted this way once, before its parts submit with ``admit=False``."""
    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", engine, pool, max_batch=4, max_delay_ms=1, max_queue=8, metrics=Metrics())
            b.admit(8)  # room: nothing raised, nothing queued
            assert b.depth == 0
            queued = asyncio.ensure_future(b.submit(tiles(4, 0)))
            await asyncio.sleep(0)
            b.admit(4)
            with pytest.raises(QueueFullError, match="has 4 tiles queued and this request brings 5"):
                b.admit(5)
            b.start()
            out = await queued
            await b.stop()
        return out

    assert run(main()).tolist() == [0, 1, 2, 3]


def test_an_engine_error_reaches_every_waiting_request():
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("engine fault")

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", broken, pool, max_batch=4, max_delay_ms=5, max_queue=100, metrics=Metrics())
            b.start()
            results = await asyncio.gather(b.submit(tiles(2, 0)), b.submit(tiles(2, 5)), return_exceptions=True)
            await b.stop()
        return results

    results = run(main())
    assert all(type(r) is RuntimeError and str(r) == "engine fault" for r in results), results


class Recording:
    """An engine that records every row it ran (slowly, so that requests can be cancelled while it works)."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.rows: list[float] = []
        self.seconds = seconds

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        out = engine(batch)
        self.rows += out.tolist()
        return out


class Gated:
    """An engine that records its batch sizes and rows and holds its ``hold``-th batch until ``release`` is set;
    ``held`` is set once that batch is in the engine."""

    def __init__(self, hold: int) -> None:
        self.hold, self.sizes, self.rows = hold, [], []
        self.held, self.release = threading.Event(), threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        if len(self.sizes) == self.hold:
            self.held.set()
            self.release.wait(10)
        out = engine(batch)
        self.rows += out.tolist()
        return out


def test_tiles_of_a_cancelled_request_never_reach_the_engine():
    gated = Gated(hold=1)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", gated, pool, max_batch=4, max_delay_ms=1, max_queue=1000, metrics=Metrics())
            b.start()
            busy = asyncio.ensure_future(b.submit(tiles(4, 0)))  # the engine holds this one
            await entered(gated.held)
            doomed = asyncio.ensure_future(b.submit(tiles(8, 100)))  # queued behind it ...
            await asyncio.sleep(0.005)
            doomed.cancel()  # ... and cancelled, as a timed-out request is
            kept = asyncio.ensure_future(b.submit(tiles(4, 200)))
            await asyncio.sleep(0.005)
            gated.release.set()
            kept = await asyncio.wait_for(kept, 5)
            await busy
            await b.stop()
            return kept, b.dropped

    kept, dropped = run(main())
    assert kept.tolist() == [200, 201, 202, 203] and dropped == 8
    assert not [r for r in gated.rows if 100 <= r < 108], gated.rows


@pytest.mark.parametrize("runners", [1, 2])
def test_stop_runs_every_queued_tile_before_it_returns(runners):
    rec = Recording(0.01)

    async def main():
        with ThreadPoolExecutor(runners) as pool:
            b = Batcher("s", rec, pool, max_batch=4, max_delay_ms=1, max_queue=1000, metrics=Metrics(),
                        runners=runners)
            b.start()
            pending = [asyncio.ensure_future(b.submit(tiles(4, 10 * i))) for i in range(6)]
            await asyncio.sleep(0)
            await b.stop()
            with pytest.raises(ServiceStoppingError, match="stopping"):
                await b.submit(tiles(1, 0))
            return await asyncio.gather(*pending)

    results = run(main())
    assert [r.tolist() for r in results] == [[10 * i + k for k in range(4)] for i in range(6)]


@pytest.mark.parametrize("runners", [1, 2])
def test_stop_past_its_drain_time_answers_the_rest_instead_of_leaving_them_hanging(runners):
    """Every batch in the engine (one a runner) and every one queued gets a 503 once the drain time is over."""
    rec = Recording(0.2)

    async def main():
        with ThreadPoolExecutor(runners) as pool:
            b = Batcher("s", rec, pool, max_batch=4, max_delay_ms=1, max_queue=1000, metrics=Metrics(),
                        runners=runners)
            b.start()
            pending = [asyncio.ensure_future(b.submit(tiles(4, 10 * i))) for i in range(5)]
            await asyncio.sleep(0.01)
            await b.stop(drain_s=0.05)
            return await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)

    results = run(main())  # 0.2 s a batch, 0.05 s to drain: none finishes, every one is answered
    assert all(isinstance(r, ServiceStoppingError) for r in results), results


def test_a_slow_specialist_does_not_hold_up_another_with_its_own_engine_thread():
    """The service gives each specialist its own engine thread (app.lifespan): while one engine is stuck in a batch,
    another specialist's requests are answered (on one shared thread they would wait behind it)."""
    inside, release = threading.Event(), threading.Event()

    def stuck(batch: np.ndarray) -> np.ndarray:
        inside.set()
        release.wait(10)
        return engine(batch)

    async def main():
        with ThreadPoolExecutor(1) as slow_pool, ThreadPoolExecutor(1) as fast_pool:
            a = Batcher("slow", stuck, slow_pool, max_batch=4, max_delay_ms=0, max_queue=100, metrics=Metrics())
            b = Batcher("fast", engine, fast_pool, max_batch=4, max_delay_ms=0, max_queue=100, metrics=Metrics())
            a.start()
            b.start()
            held = asyncio.ensure_future(a.submit(tiles(4, 0)))
            await entered(inside)
            fast = await asyncio.wait_for(b.submit(tiles(4, 10)), 5)
            still_held = not held.done()
            release.set()
            await held
            await a.stop()
            await b.stop()
            return fast, still_held

    fast, still_held = run(main())
    assert fast.tolist() == [10, 11, 12, 13] and still_held


@pytest.mark.parametrize("runners", [1, 2])
def test_each_runner_runs_a_batch_at_once_and_every_request_gets_its_own_rows(runners):
    """MAPEX_ENGINE_RUNNERS: with two, a second batch starts while the first is still in the engine; with one, never."""
    counting, peak = overlapping([runners])

    async def main():
        with ThreadPoolExecutor(runners) as pool:
            b = Batcher("s", counting, pool, max_batch=4, max_delay_ms=0, max_queue=100, metrics=Metrics(),
                        runners=runners)
            b.start()
            out = await asyncio.wait_for(asyncio.gather(*(b.submit(tiles(4, 10 * i)) for i in range(6))), 10)
            await b.stop()
            return out

    out = run(main())
    assert [o.tolist() for o in out] == [[10 * i + j for j in range(4)] for i in range(6)]
    assert peak[0] == runners


def test_an_idle_engine_runs_a_lone_request_at_once_and_a_busy_one_gathers_the_next_batch():
    """No wait for company when the engine is idle (concurrency 1 pays no MAPEX_MAX_DELAY_MS); while it is busy,
    the tiles arriving meanwhile are gathered into the next batch."""
    gated = Gated(hold=2)  # the second batch holds the engine until the test lets it go
    sizes, release = gated.sizes, gated.release

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", gated, pool, max_batch=8, max_delay_ms=60_000, max_queue=100, metrics=Metrics())
            b.start()
            lone = await asyncio.wait_for(b.submit(tiles(2, 0)), 5)  # a 60 s delay would time this out
            held = asyncio.ensure_future(b.submit(tiles(2, 10)))
            await entered(gated.held)  # the engine is now busy with it
            later = [asyncio.ensure_future(b.submit(tiles(2, 20 + 10 * i))) for i in range(3)]
            await asyncio.sleep(0.05)
            release.set()
            out = await asyncio.wait_for(asyncio.gather(held, *later), 5)
            await b.stop()
            return lone, out

    lone, out = run(main())
    assert lone.tolist() == [0, 1] and [o.tolist() for o in out] == [[10, 11], [20, 21], [30, 31], [40, 41]]
    assert sizes == [2, 2, 6], "the three requests that came while the engine was busy share one batch"


def test_background_tiles_wait_while_interactive_ones_are_queued():
    """Whole-scene jobs submit at BACKGROUND priority: queued interactive tiles go to the engine first."""
    from mapex_serve.batcher import BACKGROUND

    order: list[float] = []
    inside, gate = threading.Event(), threading.Event()

    def recording_engine(batch: np.ndarray) -> np.ndarray:
        inside.set()
        gate.wait(5)
        order.extend(batch.mean(axis=(1, 2, 3)).tolist())
        return batch.mean(axis=(1, 2, 3))

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", recording_engine, pool, max_batch=2, max_delay_ms=0, max_queue=1000, metrics=Metrics())
            b.start()
            first = asyncio.ensure_future(b.submit(tiles(1, 0)))  # occupies the engine until the gate opens
            await entered(inside)
            job = asyncio.ensure_future(b.submit(tiles(4, 100), priority=BACKGROUND))
            await asyncio.sleep(0.01)
            interactive = asyncio.ensure_future(b.submit(tiles(4, 200)))
            await asyncio.sleep(0.05)
            gate.set()
            results = await asyncio.gather(first, job, interactive)
            await b.stop()
        return results

    first, job, interactive = run(main())
    assert job.tolist() == [100, 101, 102, 103] and interactive.tolist() == [200, 201, 202, 203]
    assert order.index(200) < order.index(102), f"interactive tiles ran after the job's queued ones: {order}"


def _two_runners_one_held(first: int, then: Callable[[Batcher], Awaitable[list]]) -> tuple[list[int], list[int], list]:
    """A batch of ``first`` tiles held on one of two runners while ``then`` submits more; the batch sizes seen while
    it was held, all of them (a lone tile last, once the engine is idle), and ``then``'s results."""
    gated = Gated(hold=1)

    async def main():
        with ThreadPoolExecutor(2) as pool:
            b = Batcher("s", gated, pool, max_batch=8, max_delay_ms=60_000, max_queue=100, metrics=Metrics(),
                        runners=2)
            b.start()
            held = asyncio.ensure_future(b.submit(tiles(first, 0)))
            await entered(gated.held)  # one runner is inside that batch now
            later = await then(b)
            await asyncio.sleep(0.3)  # what the free runner runs meanwhile
            while_held = list(gated.sizes)
            gated.release.set()
            out = await asyncio.wait_for(asyncio.gather(held, *later), 5)
            lone = await asyncio.wait_for(b.submit(tiles(1, 99)), 5)  # an idle engine: at once, whatever the delay
            await b.stop()
            return while_held, [o.tolist() for o in [*out, lone]]

    while_held, out = run(main())
    return while_held, gated.sizes, out


def test_with_a_runner_busy_the_free_one_gathers_tiles_arriving_one_by_one():
    """One runner in a batch of 4: three tiles trickling in are gathered on the free runner (its share is not
    reached: Batcher._share) instead of run one by one, and run when the engine goes idle."""
    async def trickle(b: Batcher) -> list:
        later = []
        for i in range(3):
            later.append(asyncio.ensure_future(b.submit(tiles(1, 10 * (i + 1)))))
            await asyncio.sleep(0.02)
        return later

    while_held, sizes, out = _two_runners_one_held(4, trickle)
    assert out == [[0, 1, 2, 3], [10], [20], [30], [99]]
    assert while_held == [4] and sizes == [4, 3, 1], sizes


def test_with_a_runner_busy_a_burst_is_split_between_the_runners():
    """One runner in a batch of 1: a burst of 8 queued at once is not taken whole by the free runner (one long
    batch on one core while the other idles) but in its share, ceil((8 + 1) / 2) = 5, and the rest on the next
    free runner: the waves of binary /v2 requests at concurrency 32 (Batcher._share)."""
    async def burst(b: Batcher) -> list:
        return [asyncio.ensure_future(b.submit(tiles(1, 100 + i))) for i in range(8)]

    while_held, sizes, out = _two_runners_one_held(1, burst)
    assert out == [[0], *([100 + i] for i in range(8)), [99]]
    assert while_held == [1, 5, 3] and sizes == [1, 5, 3, 1], sizes


@pytest.mark.parametrize("ahead", [1, 2, 3])
def test_the_pipeline_keeps_its_batches_in_flight_and_hands_their_outputs_back_in_order(ahead):
    """``predict.pipeline`` (requests and jobs): never more than ``ahead`` batches submitted, outputs consumed in
    the batches' order however the engine finishes them."""
    from mapex_serve.predict import pipeline
    from mapex_serve.tiling import TileBatch

    batches = [TileBatch([], tiles(2, 10 * i), np.ones((2, 4, 4), bool)) for i in range(7)]
    inflight, peak, submitted, got = [0], [0], [0], []

    async def all_in_flight(k: int) -> None:
        while submitted[0] < min(k + ahead, len(batches)):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)  # four reads' time: a pipeline that submits more than ``ahead`` has done so now

    async def submit(batch: TileBatch, k: int) -> np.ndarray:
        inflight[0] += 1
        submitted[0] += 1
        peak[0] = max(peak[0], inflight[0])
        # Batch k runs once the ``ahead - 1`` after it are submitted too: without this hold the peak measured how
        # fast the reads ran (a read outlasting the batch before it leaves fewer in flight), not the pipeline.
        await asyncio.wait_for(all_in_flight(k), timeout=5)
        await asyncio.sleep(0.001 * ((k * 7) % 3))  # later batches may finish first
        inflight[0] -= 1
        return engine(batch.data)

    async def consume(batch: TileBatch, out: np.ndarray) -> None:
        got.append(out.tolist())

    def read_slowly() -> Iterator[TileBatch]:  # a slow disk: each read outlasts the batch before it in the engine
        for batch in batches:
            time.sleep(0.005)
            yield batch

    run(pipeline(read_slowly(), submit, consume, ahead=ahead))
    assert got == [[10 * i, 10 * i + 1] for i in range(7)]
    assert peak[0] == ahead


def test_request_ahead_is_a_batch_a_runner_and_one_more_within_the_buffer_bytes():
    small = 32 * (3 + 7) * 32 * 32 * 4  # a batch of 32 px RGB tiles and their 7 classes: 1.3 MB
    assert [request_ahead(r, small) for r in (1, 2, 16, 64)] == [2, 3, 17, 65]
    large = 32 * (6 + 10) * 128 * 128 * 4  # 128 px, 6 bands, 10 classes: 32 MiB
    assert [request_ahead(r, large) for r in (1, 2, 16, 64)] == [2, 3, 8, 8]
    assert (request_ahead(64, large) * large <= REQUEST_BUFFER_BYTES) and request_ahead(64, 2**40) == 2


def test_one_request_keeps_its_ahead_batches_in_flight_however_many_runners():
    """A runner a core on a many-core node: one scene's pipeline (as /predict and jobs run it) keeps ``ahead``
    batches (and their buffers) in flight, not one a runner; other requests take runners of their own."""
    from mapex_serve.predict import pipeline
    from mapex_serve.tiling import TileBatch

    runners, ahead = 7, 3
    target = [ahead]
    counting, peak = overlapping(target)

    async def scene(b: Batcher, start: float) -> list[list[float]]:
        got: list[list[float]] = []

        async def consume(_batch: TileBatch, out: np.ndarray) -> None:
            got.append(out.tolist())

        batches = [TileBatch([], tiles(4, start + 10 * i), np.ones((4, 4, 4), bool)) for i in range(12)]
        await pipeline(iter(batches), lambda batch, k: b.submit(batch.data, admit=k == 0), consume, ahead=b.ahead)
        return got

    async def main(requests: int) -> list[list[list[float]]]:
        peak[0] = 0
        with ThreadPoolExecutor(runners) as pool:
            b = Batcher("s", counting, pool, max_batch=4, max_delay_ms=0, max_queue=1000, metrics=Metrics(),
                        runners=runners, ahead=ahead)
            b.start()
            out = await asyncio.wait_for(asyncio.gather(*(scene(b, 1000 * r) for r in range(requests))), 30)
            await b.stop()
            return out

    [one] = run(main(1))
    assert one == [[10 * i + j for j in range(4)] for i in range(12)]
    assert peak[0] == ahead  # not one a runner
    target[0] = runners
    three = run(main(3))
    assert three[2] == [[2000 + 10 * i + j for j in range(4)] for i in range(12)]
    assert peak[0] == runners  # three requests use every runner
    assert Batcher("s", engine, None, max_batch=4, max_delay_ms=0, max_queue=8, metrics=Metrics(), runners=3).ahead == 4


def test_idle_only_while_no_tile_is_queued_or_running():
    """What a scene's last batch asks before its COG takes the engine's cores (``DecodePool._tail_threads``)."""
    gates = [threading.Event(), threading.Event()]  # one a batch: each runs when its gate opens
    calls, inside = iter(gates), threading.Event()

    def held(batch: np.ndarray) -> np.ndarray:
        inside.set()
        next(calls).wait(10)
        return engine(batch)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", held, pool, max_batch=4, max_delay_ms=1, max_queue=100, metrics=Metrics())
            b.start()
            seen = [b.idle]
            first = asyncio.ensure_future(b.submit(tiles(2, 0)))
            await entered(inside)
            second = asyncio.ensure_future(b.submit(tiles(4, 10)))  # no room in the running batch: queued
            await asyncio.sleep(0.05)
            seen.append(b.idle)
            gates[0].set()
            await first
            seen.append(b.idle)  # the second batch is running now
            gates[1].set()
            await second
            seen.append(b.idle)
            await b.stop()
        return seen

    assert run(main()) == [True, False, False, True]


def test_outputs_go_into_out_straight_from_run_into_alone_and_row_by_row_in_a_shared_batch():
    """A request's shared memory gets its outputs in the engine's thread: a batch's only job through ``run_into``,
    jobs sharing a batch each their rows; ``submit`` returns ``out`` itself."""
    into: list[int] = []
    gated = Gated(hold=1)  # the first batch holds the engine until the test lets it go

    def run_into(batch: np.ndarray, out: np.ndarray) -> None:
        into.append(len(batch))
        out[...] = engine(batch)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", gated, pool, max_batch=8, max_delay_ms=60_000, max_queue=100, metrics=Metrics(),
                        run_into=run_into)
            b.start()
            held = asyncio.ensure_future(b.submit(tiles(2, 0)))  # holds the engine while the next ones gather
            await entered(gated.held)
            outs = [np.full(3, -1, np.float32), np.full(2, -1, np.float32)]
            shared = [asyncio.ensure_future(b.submit(tiles(len(o), 10 * (i + 1)), out=o)) for i, o in enumerate(outs)]
            await asyncio.sleep(0.05)
            gated.release.set()
            got = await asyncio.wait_for(asyncio.gather(*shared), 5)
            lone = np.full(4, -1, np.float32)
            alone = await asyncio.wait_for(b.submit(tiles(4, 100), out=lone), 5)
            await held
            await b.stop()
        return outs, got, lone, alone

    outs, got, lone, alone = run(main())
    assert outs[0].tolist() == [10, 11, 12] and outs[1].tolist() == [20, 21]  # their rows of the shared batch
    assert got[0] is outs[0] and got[1] is outs[1] and alone is lone
    assert lone.tolist() == [100, 101, 102, 103] and into == [4]  # only the lone job's batch ran into its out


def test_a_cancelled_request_with_out_ends_only_once_its_running_batch_has():
    """A request's slab may be written by its batch in the engine after the request was cancelled: ``submit`` ends
    once that batch has, so that a retry writing the same slots never sees a late write."""
    inside, gate = threading.Event(), threading.Event()

    def held(batch: np.ndarray, out: np.ndarray) -> None:
        inside.set()
        gate.wait(10)
        out[...] = engine(batch)

    async def main():
        with ThreadPoolExecutor(1) as pool:
            b = Batcher("s", engine, pool, max_batch=4, max_delay_ms=1, max_queue=100, metrics=Metrics(),
                        run_into=held)
            b.start()
            out = np.full(2, -1, np.float32)
            running = asyncio.ensure_future(b.submit(tiles(2, 5), out=out))
            await entered(inside)  # the engine has it
            running.cancel()
            await asyncio.sleep(0.1)
            ended_early = running.done()
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(running, 5)
            written_by_then = out.tolist()
            await b.stop()
        return ended_early, written_by_then

    ended_early, written = run(main())
    assert not ended_early, "submit ended while its batch could still write into out"
    assert written == [5, 6]  # the late write came before submit ended, not after

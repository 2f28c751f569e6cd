import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mapex_serve.batcher import Batcher, QueueFullError
from mapex_serve.metrics import Metrics


def engine(batch: np.ndarray) -> np.ndarray:
    """A real computation whose rows identify their input: the mean of each tile."""
    return batch.mean(axis=(1, 2, 3))


def tiles(n: int, start: float) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 4, 4), np.float32)


def run(coro):
    return asyncio.run(coro)


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
    assert total == 50 and count >= 7


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

    assert all(isinstance(r, RuntimeError) for r in run(main()))

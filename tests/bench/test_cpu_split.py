"""bench.cpu_split: the CPU of the service's places read from /proc, and the node model built on them."""

import os
import threading
import time

import pytest

from bench.cpu_split import Split, best_split, measured, node_rates


def spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_main_threads_cpu_is_the_loops_and_other_threads_are_apart():
    before = Split.now(os.getpid())
    spin(0.3)
    worker = threading.Thread(target=spin, args=(0.6,))
    worker.start()
    worker.join()
    spent = Split.now(os.getpid()) - before
    assert spent.loop == pytest.approx(0.3, abs=0.08)
    assert spent.threads == pytest.approx(0.6, abs=0.12)
    assert spent.workers == 0  # no decode worker is a child of this process


def test_measured_gives_ms_a_request_per_place():
    row = measured(os.getpid(), lambda: spin(0.4) or 0.5, 100)
    assert row["event loop"] == pytest.approx(4.0, abs=0.8)
    assert row["other threads"] == pytest.approx(0.0, abs=0.3) and row["decode workers"] == 0
    assert row["requests_s"] == 200


def test_the_least_place_binds_and_processes_share_the_cores():
    one = node_rates(loop_ms=1.0, worker_ms=5.0, engine=10_000, cores=16)
    assert one["event loop tiles/s"] == 1000 and one["decode workers tiles/s"] == 15 * 200
    assert one["predicted tiles/s"] == 1000 and one["bound"] == "event loop"
    four = node_rates(loop_ms=1.0, worker_ms=5.0, engine=10_000, cores=16, processes=4)
    assert four["event loop tiles/s"] == 4000 and four["decode workers tiles/s"] == 4 * 3 * 200  # 3 workers each
    assert four["bound"] == "decode workers"
    scene = node_rates(loop_ms=100, worker_ms=500, engine=1_000, cores=16, tiles=441, workers=1)
    assert scene["decode workers tiles/s"] == pytest.approx(882) and scene["bound"] == "decode workers"


def test_binary_tensors_have_no_decode_bound_and_the_best_split_balances_loop_and_workers():
    assert "decode workers tiles/s" not in node_rates(0.2, 0.0, engine=3_000, cores=16)
    assert best_split(0.2, 0.0, engine=3_000, cores=16)["their bound"] == "engine"
    split = best_split(loop_ms=1.0, worker_ms=3.0, engine=1e6, cores=16)
    assert split["processes"] == 4 and split["with them tiles/s"] == 4000  # 4 loops, 12 workers: both at 4,000

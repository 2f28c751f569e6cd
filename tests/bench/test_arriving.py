"""bench.arriving: the client held to a link's speed."""

import time

import pytest

from bench.arriving import paced


@pytest.mark.parametrize("size", [0, 1, 256 * 1024, 600_000])
def test_a_paced_body_is_sent_whole_no_faster_than_the_link(size):
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    sent: list[float] = []
    start = time.perf_counter()
    assert b"".join(paced(body, 80.0, sent)) == body  # 10 MB/s
    # the last piece leaves once the ones before it would have crossed the link
    before_last = max(0, (len(body) - 1) // (256 * 1024)) * 256 * 1024
    assert time.perf_counter() - start >= before_last / 10e6
    assert len(sent) == 1 and sent[0] <= time.perf_counter() - start

"""Python's garbage collector set for a server's steady state: start-up's objects frozen, young collections rarer.

Why: under single-tile load CPython's defaults cost the event loop and each decode worker about 25 µs a
request (docs/performance.md, stop 36). A young collection came every 700 net allocations, and every
hundredth of them led to a full collection that walked every object the imports had made: 10-23 ms,
a pause for every request in flight. Requests free what they make by reference counting; the
collector is only there for cycles, which it still collects, later.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle"]

#: Net allocations of tracked objects between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Once start-up is over: what it made is frozen (never walked again by a collection, never freed), and the
    young generation is collected every ``YOUNG_THRESHOLD`` net allocations, the older ones as CPython does."""
    gc.collect()  # start-up's garbage goes now, not frozen with the rest
    gc.freeze()
    _young, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)

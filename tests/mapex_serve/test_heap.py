"""The collector's steady-state settings (``heap.settle``): start-up frozen, young collections rarer, cycles still collected."""

import gc
import weakref

import pytest

from mapex_serve import heap


@pytest.fixture
def settled():
    before = gc.get_threshold()
    heap.settle()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class _Node:
    """A cycle's member (a weak reference says when it is gone)."""


def test_settle_freezes_start_up_and_raises_only_the_young_threshold(settled):
    assert gc.get_freeze_count() > 1000, "the objects made before settle() are frozen"
    young, older, oldest = gc.get_threshold()
    assert young == heap.YOUNG_THRESHOLD and (older, oldest) == (10, 10)


def test_cycles_made_after_settle_are_still_collected(settled):
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None, "a cycle is freed by a collection after settle()"

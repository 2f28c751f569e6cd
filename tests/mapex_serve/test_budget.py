import pytest

from mapex_serve.budget import MemoryBudget, MemoryBudgetError, OverBudgetError, Reservation, request_bytes

MIB = 2**20


def test_the_issues_7_class_request_at_the_default_pixel_limit_is_sized_before_it_allocates():
    """64 Mpx, 7 classes: labels, coverage, reasons and encoding a pixel, 8 float32 planes over 32 rows, batches.

    The whole-scene blender this replaced needed 7 + 1 float32 planes over all 64 Mpx (about 2.4 GB)."""
    need = request_bytes(8000, 8000, classes=7, head="mask", channels=3, tile=32, max_batch=32)
    assert need == 64_000_000 * 5 + 8 * 4 * 32 * 8000 + 3 * 32 * 3 * 32 * 32 * 4
    assert need < 0.2 * 64_000_000 * 8 * 4  # a sixth of what the whole-scene blend took
    assert request_bytes(8000, 8000, classes=2, head="class", channels=2, tile=32, max_batch=32) < need
    # Two engine runners: a batch and its engine copy more in flight.
    two = request_bytes(8000, 8000, classes=7, head="mask", channels=3, tile=32, max_batch=32, in_engine=2)
    assert two - need == 2 * 32 * 3 * 32 * 32 * 4


def test_reservations_admit_up_to_the_budget_and_release_once():
    budget = MemoryBudget(100 * MIB)
    first = budget.reserve(60 * MIB, "scene a")
    with pytest.raises(MemoryBudgetError, match=r"hold 60 of 100 MiB.*scene b needs 50 MiB; retry"):
        budget.reserve(50 * MIB, "scene b")
    second = budget.reserve(40 * MIB, "scene c")
    assert budget.used == 100 * MIB
    first.release()
    first.release()  # idempotent: a release on every path must not free memory twice
    assert budget.used == 40 * MIB
    second.release()
    assert budget.used == 0


def test_a_scene_larger_than_the_whole_budget_is_413_not_503():
    with pytest.raises(OverBudgetError, match="more than the whole memory budget of 10 MiB"):
        MemoryBudget(10 * MIB).reserve(11 * MIB, "this scene")


def test_a_held_upload_grows_until_the_budget_is_full_and_then_holds_no_more():
    """An upload received into memory holds its bytes as they arrive (``Reservation.grow``): past the budget a 503
    naming what holds it, nothing more held, and its release gives back all it held."""
    budget = MemoryBudget(10 * MIB)
    scene = budget.reserve(4 * MIB, "a scene")
    upload = Reservation(budget, 0)
    for _ in range(6):
        upload.grow(MIB, "by this upload")
    assert budget.used == 10 * MIB and upload.nbytes == 6 * MIB
    with pytest.raises(MemoryBudgetError, match=r"hold 10 of 10 MiB \(MAPEX_MEMORY_BUDGET_MB\), 7.0 MiB of them by this"):
        upload.grow(MIB, "by this upload")
    assert budget.used == 10 * MIB and upload.nbytes == 6 * MIB
    upload.release()
    upload.release()
    assert budget.used == 4 * MIB
    scene.release()
    unbudgeted = Reservation(None, 0)
    unbudgeted.grow(100 * MIB, "anything")  # no budget (a request outside the service): nothing to hold
    assert budget.used == 0

"""A memory budget for the requests in flight: what a request will allocate is reserved before it allocates.

A 100 KB deflate-compressed upload can declare 64 million pixels, and even with blending held to
one band of tile rows its mask, coverage and encoding take about 5 bytes a pixel (320 MB). Each
request's outputs are sized from its grid before any is allocated (:func:`request_bytes`) and admitted against ``MAPEX_MEMORY_BUDGET_MB``: past it a
request waits its turn as a 503 with ``Retry-After``; one that could never fit is a 413.
"""

from __future__ import annotations

from dataclasses import dataclass

from mapex_serve.errors import MapexError

__all__ = ["MemoryBudget", "MemoryBudgetError", "OverBudgetError", "Reservation", "Room", "request_bytes"]


class MemoryBudgetError(MapexError, RuntimeError):
    """The requests in flight already hold the memory budget; retry after a moment."""


class OverBudgetError(MapexError, ValueError):
    """One request that needs more memory than the whole budget."""


def request_bytes(height: int, width: int, *, classes: int, head: str, channels: int, tile: int, max_batch: int,
                  in_engine: int = 1) -> int:
    """Bytes a request allocates beyond its upload: reason raster, outputs, encoding, batches in flight
    (``in_engine`` of them in the engine at once: ``Batcher.ahead`` - 1)."""
    pixels = height * width
    reasons = pixels  # one uint8 reason per pixel
    if head == "mask":  # labels, coverage and the GeoTIFF encoding; K + 1 float32 planes over one band of tile rows
        outputs = 4 * pixels + (classes + 1) * 4 * min(tile, height) * width
    else:  # the class raster painted for a GeoTIFF answer and its encoding
        outputs = 2 * pixels
    # The one read ahead, those in the engine and the engine's copy of each.
    batches = (2 * in_engine + 1) * max_batch * channels * tile * tile * 4
    return reasons + outputs + batches


@dataclass
class Reservation:
    """Bytes held from a budget until ``release`` (idempotent)."""

    budget: MemoryBudget | None
    nbytes: int

    def grow(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` more (an upload arriving into memory): ``MemoryBudgetError`` (503) when the requests in flight
        leave no room; nothing is held then beyond what was."""
        if self.budget is None:
            return
        budget, mib = self.budget, 2**20
        if budget.used + nbytes > budget.limit:
            raise MemoryBudgetError(
                f"the requests in flight hold {budget.used / mib:,.0f} of {budget.limit / mib:,.0f} MiB "
                f"(MAPEX_MEMORY_BUDGET_MB), {(self.nbytes + nbytes) / mib:,.1f} MiB of them {what}; retry shortly")
        budget.used += nbytes
        self.nbytes += nbytes

    def release(self) -> None:
        """Give back all it holds (idempotent); it may ``grow`` again after."""
        if self.budget is not None:
            self.budget.used -= self.nbytes
        self.nbytes = 0


@dataclass(frozen=True)
class Room:
    """The budget as a request found it when it started, for what it allocates before its reservation (a decode
    worker unpacking its archives): the bytes then free, of the whole."""

    available: int
    limit: int

    def exceeded(self, what: str, fix: str) -> MemoryBudgetError | OverBudgetError:
        """The error for ``what`` needing more than ``available``: 413 (saying ``fix``) when that was the whole
        budget, else 503: the requests in flight may leave room for it later."""
        mib = 2**20
        if self.available >= self.limit:
            return OverBudgetError(f"{what} needs more than the whole memory budget of {self.limit / mib:,.0f} MiB "
                                   f"(MAPEX_MEMORY_BUDGET_MB): {fix}")
        return MemoryBudgetError(f"{what} needs more than the {self.available / mib:,.0f} of {self.limit / mib:,.0f} "
                                 f"MiB the requests in flight leave (MAPEX_MEMORY_BUDGET_MB); retry shortly")


class MemoryBudget:
    """Bytes the requests in flight may allocate; reserved and released on the event loop (no lock needed)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit, self.used = int(limit_bytes), 0

    @property
    def available(self) -> int:
        return max(self.limit - self.used, 0)

    def room(self) -> Room:
        return Room(self.available, self.limit)

    def reserve(self, nbytes: int, what: str, fix: str = "crop or split the scene") -> Reservation:
        """``nbytes`` held for ``what`` until released: 503 when the requests in flight leave no room, 413 (saying
        ``fix``) when the whole budget has none."""
        mib = 2**20
        if nbytes > self.limit:
            raise OverBudgetError(
                f"{what} needs about {nbytes / mib:,.0f} MiB, more than the whole memory budget "
                f"of {self.limit / mib:,.0f} MiB (MAPEX_MEMORY_BUDGET_MB): {fix}"
            )
        if self.used + nbytes > self.limit:
            raise MemoryBudgetError(
                f"the requests in flight hold {self.used / mib:,.0f} of {self.limit / mib:,.0f} MiB "
                f"(MAPEX_MEMORY_BUDGET_MB) and {what} needs {nbytes / mib:,.0f} MiB; retry shortly"
            )
        self.used += nbytes
        return Reservation(self, nbytes)

"""A whole-scene job inside a decode worker: its scene read by path, tiled into its slab, blended to strips on disk.

Driven like a ``/predict`` session (``session``), with two differences. ``open`` only opens and
routes the files: the service then decides which rows the session runs (it keeps the store: the
strips not yet recorded, or one part of them when a job is split across workers) and ``start``
cuts their tiles and fills the slots. Every ``step`` answers with the strips of final rows the
worker wrote meanwhile, for the service to record, and ``finish`` ends the part and, when the
strips then cover the scene, writes the result files and answers with the job's summary. The slab
holds only the tile and probability slots: the files stay where they are (the jobs volume, or HTTP
and S3 read by ranges).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mapex_serve.decode.session import Slots
from mapex_serve.decode.slab import Layout, Slab
from mapex_serve.jobs.scene import JobPlan, JobScene, scene_tiles
from mapex_serve.jobs.store import StripRecord
from mapex_serve.predict import unreadable_as_400
from mapex_serve.repository import Manifest

__all__ = ["JobOpenRequest", "JobOpened", "JobSession", "JobStarted", "JobStep"]


@dataclass(frozen=True)
class JobOpenRequest:
    """A job for a worker: its slab (slots only), the task's specialists and the plan of its scene."""

    session: int
    slab: str
    layout: Layout
    specialists: tuple[str, ...]
    plan: JobPlan


@dataclass(frozen=True)
class JobOpened:
    """The routed job: its specialist, the shape of its tiles, the scene's height and its tiles."""

    specialist: str
    tile_shape: tuple[int, int, int]
    height: int
    tiles: int


@dataclass(frozen=True)
class JobStarted:
    """The first batches' sizes (0: no such batch) and the tiles of the session's rows."""

    sizes: tuple[int, ...]
    total: int


@dataclass(frozen=True)
class JobStep:
    """A step's answer: the next batch's size (0: none), the session's tiles done, the strips written since the last
    answer; ``finish``'s also carries the job's summary once the scene is covered (None: other parts to come)."""

    size: int
    done: int
    strips: list[StripRecord]
    summary: dict[str, Any] | None = None


class JobSession:
    """A job's open scene and slots in one worker."""

    def __init__(self, request: JobOpenRequest, manifests: Mapping[str, Manifest]) -> None:
        self.request = request
        slab = Slab.attach(request.slab)
        try:
            self.scene = JobScene(request.plan, [manifests[n] for n in request.specialists])
        except BaseException:
            slab.close()
            raise
        self._slots = Slots(slab, request.layout)
        self.closed = False

    def open(self) -> JobOpened:
        manifest, g = self.scene.manifest, self.scene.reader.grid
        return JobOpened(manifest.name, (len(self.scene.route.bands), manifest.tile_size, manifest.tile_size),
                         g.height, scene_tiles(g.height, g.width, manifest.tile_size))

    def start(self, rows: tuple[int, int] | None, known: Sequence[StripRecord]) -> JobStarted:
        """The tiles of rows ``[r0, r1)`` (``JobScene.start``), a batch into each slot."""
        with unreadable_as_400():
            self.scene.start(rows, known)
        self._slots.reserve(self.scene.manifest, min(self.request.plan.max_batch, max(self.scene.total, 1)))
        sizes = tuple(self._slots.read(slot, self.scene.batches) for slot in range(self._slots.count))
        return JobStarted(sizes, self.scene.total)

    def step(self, k: int, probs_shape: tuple[int, ...]) -> JobStep:
        """Blend batch ``k`` (its final rows to strips), read the batch after the others in flight into its slot."""
        slot = k % self._slots.count
        with unreadable_as_400():
            self._slots.blend(slot, probs_shape, self.scene.add)
        size = self._slots.read(slot, self.scene.batches)
        return JobStep(size, self.scene.done, self.scene.take_strips())

    def finish(self, k: int | None, probs_shape: tuple[int, ...] | None, _threads: int = 1) -> JobStep:
        """Blend the last batch ``k`` (None: no tile to run), end the part; the results once the scene is covered
        (written as its strips came: nothing left to compress on more threads)."""
        with unreadable_as_400():
            if k is not None and probs_shape is not None:
                self._slots.blend(k % self._slots.count, probs_shape, self.scene.add)
            summary = self.scene.finish()
        return JobStep(0, self.scene.done, self.scene.take_strips(), summary)

    def close(self) -> None:
        """Close the files and unmap the slab."""
        if not self.closed:
            self.closed = True
            self.scene.close()
            self._slots.close()

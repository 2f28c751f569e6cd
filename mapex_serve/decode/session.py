"""One request inside a decode worker: open and route its files, read tiles into its slab, blend, encode.

The service drives a session with two messages (``protocol`` of ``worker``): ``open`` reads the
first batch into tile slot 0 and answers with what the service needs to run it; each ``step``
says that slot k % 2 holds batch k's probabilities and is answered at once with the size of
batch k + 1, already read into the other slot. Blending batch k and reading batch k + 2 happen
after the answer, while the engine runs batch k + 1: the engine waits for IPC, not for GDAL. The
last ``step`` is answered with the encoded response. A session's messages never overlap: the
service awaits each answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mapex_serve.budget import Reservation
from mapex_serve.decode.slab import Layout, Slab
from mapex_serve.inputs import UploadedFile
from mapex_serve.predict import SceneRun, next_batch, open_and_route, unreadable_as_400
from mapex_serve.repository import Manifest
from mapex_serve.responses import Encoded, Format, encode
from mapex_serve.tiling import TileBatch
from mapex_serve.units import UnitOverrides

__all__ = ["OpenRequest", "Opened", "Session", "Stepped"]


@dataclass(frozen=True)
class OpenRequest:
    """What a worker needs to start a request: its slab, the task's specialists and the query's options."""

    session: int
    slab: str
    layout: Layout
    specialists: tuple[str, ...]
    bands: tuple[str, ...] | None
    modality: str | None
    overrides: UnitOverrides
    max_pixels: int
    max_batch: int
    format: Format | None
    accept: str
    #: The memory budget left when the request was sent: a scene that needs more is not tiled before
    #: the service has reserved its memory (it may refuse it: 413 or 503).
    available: int


@dataclass(frozen=True)
class Opened:
    """The routed request: its specialist, the memory its outputs need, its tiles' shape and batch 0's size.

    ``first`` is None when the scene needed more than was available: nothing was tiled yet, and
    ``start`` follows once the service has reserved the memory.
    """

    specialist: str
    need: int
    what: str
    tile_shape: tuple[int, int, int]
    first: int | None


@dataclass(frozen=True)
class Stepped:
    """The size of the next batch (already in the other slot), or the response once the last batch is blended."""

    next: int
    encoded: Encoded | None = None


class Session:
    """A request's open scene and tiles in one worker."""

    def __init__(self, request: OpenRequest, manifests: Mapping[str, Manifest], provider: Mapping[str, str]) -> None:
        self.request, self._provider = request, provider
        self._slab = Slab.attach(request.slab)
        try:
            files = [UploadedFile(name, self._slab.read(offset, size)) for name, offset, size in request.layout.files]
            scene, route, reader = open_and_route(
                files, request.bands, [manifests[n] for n in request.specialists], request.modality,
                request.overrides, request.max_pixels)
            del files
            try:
                with unreadable_as_400():
                    self.run = SceneRun(scene, route, reader, request.max_batch)
            except BaseException:
                scene.close()
                raise
        except BaseException:
            self._slab.close()
            raise
        self._batches: list[TileBatch | None] = [None, None]
        self._error: BaseException | None = None
        self.closed = False

    def open(self) -> Opened:
        """Batch 0 into slot 0 if the scene's memory was available; a 400 when no tile has a valid pixel."""
        if self.run.need > self.request.available:
            return self._opened(None)
        return self.start()

    def start(self) -> Opened:
        """Tile the scene and read batch 0 into slot 0."""
        with unreadable_as_400():
            self.run.start()
        first = self.read(0)
        if first == 0:
            self.run.result(Reservation(None, 0))  # raises: the raster has no valid pixels
        return self._opened(first)

    def _opened(self, first: int | None) -> Opened:
        manifest = self.run.route.manifest
        return Opened(manifest.name, self.run.need, self.run.what,
                      (len(self.run.route.bands), manifest.tile_size, manifest.tile_size), first)

    def read(self, slot: int) -> int:
        """The next batch into tile slot ``slot``; its size, 0 at the end. A read error waits for the next step."""
        try:
            with unreadable_as_400():
                batch = next_batch(self.run.batches)
        except Exception as e:  # noqa: BLE001 - raised by the step that would have used the batch
            self.fail(e)
            batch = None
        self._batches[slot] = batch
        if batch is None:
            return 0
        n = len(batch.tiles)
        self._slab.array(self.request.layout.tiles[slot], batch.data.shape)[...] = batch.data
        return n

    def fail(self, error: BaseException) -> None:
        """Work after an answer failed: the next step raises ``error``."""
        self._error = self._error or error

    def pending(self, slot: int) -> int:
        """Size of the batch waiting in ``slot``; the error of the work since the last answer, if it failed."""
        if self._error is not None:
            raise self._error
        batch = self._batches[slot]
        return 0 if batch is None else len(batch.tiles)

    def blend(self, slot: int, probs_shape: tuple[int, ...]) -> None:
        """The probabilities the service wrote to probability slot ``slot`` into the result."""
        batch = self._batches[slot]
        assert batch is not None and probs_shape[0] == len(batch.tiles)
        probs = self._slab.array(self.request.layout.probs[slot], probs_shape)
        self.run.add(batch, np.array(probs))  # copied: the blender may keep no view of the slab
        self._batches[slot] = None

    def finish(self) -> Encoded:
        """The response, encoded as the client asked."""
        prediction = self.run.result(Reservation(None, 0))
        name = prediction.route.manifest.name
        return encode(prediction, self.request.format, self.request.accept, self._provider[name])

    def close(self) -> None:
        """Close the files and unmap the slab."""
        if not self.closed:
            self.closed = True
            self.run.scene.close()
            self._batches = [None, None]
            self._slab.close()

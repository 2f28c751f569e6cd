"""One request inside a decode worker: open and route its files, read tiles into its slab, blend, encode.

The service drives a session with three messages (see ``worker``; ``start`` and ``close`` serve
the rarer cases of a scene waiting for its memory and of a request that ends early). With S slots
in the slab's layout (``batcher.request_ahead``: a batch for each engine runner, and one more),
``open`` reads batches 0 .. S-1 into tile slots 0 .. S-1 and answers with what the service needs
to run them: all go to the engine at once, so it always has a batch queued. ``step(k)`` says that
probability slot k % S holds batch k's output: the worker blends it, reads batch k + S into the
freed tile slot and answers with its size, while the engine runs batches k + 1 .. k + S - 1.
``finish(k)`` blends the last batch and answers with the encoded response. A session's messages
never overlap: the service awaits each answer before it sends the session's next message.

A mask scene large enough to split (``OpenRequest.parts`` > 1) is opened and left untiled, its
values not yet checked against their units: the service decides the parts (``decode.parts``),
starts this session on the first part's rows (the check comes first then, while the other parts
start) and opens one session a part on other workers (``OpenRequest.part``). Each part's
``finish`` answers with what it counted (``PartDone``); ``encode`` then has the first session
answer for the scene.

A TIFF whose directories come first may still be arriving when its session opens
(``OpenRequest.arrived``): the session (each part's, when split) then waits for the bytes each read
needs (``decode.arriving``), and the first checks the values against their units once the last byte
is in (``step``; ``finish`` if its rows ran out first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from mapex_serve.budget import Reservation, Room, request_bytes
from mapex_serve.decode.arriving import ArrivalGate, directory_and_rows
from mapex_serve.decode.parts import MIN_PART_PIXELS, MaskSlab, PartDone, ScenePart
from mapex_serve.decode.slab import Layout, Slab, batch_bytes
from mapex_serve.geokeys import is_tiff
from mapex_serve.inputs import SIDECARS, UploadedFile, check_values
from mapex_serve.predict import SceneRun, next_batch, open_and_route, unreadable_as_400
from mapex_serve.repository import Manifest
from mapex_serve.responses import Encoded, Format, encode
from mapex_serve.tiling import TileBatch
from mapex_serve.units import UnitOverrides

__all__ = ["OpenRequest", "Opened", "Session", "Slots", "Splittable", "slab_files"]


def slab_files(slab: Slab, layout: Layout) -> list[UploadedFile]:
    """The request's files as its worker opens them: TIFFs where they lie in the slab, or every file copied.

    GDAL reads a TIFF through ``/vsisubfile/`` from the slab's own pages, shared by every worker: a 4096²
    scene's 128 MiB was copied twice a worker before (out of the slab, then into ``/vsimem/``), and once more for
    each part of a split scene. A request with any other part (a VRT or ENVI header naming the others, an
    ``.aux.xml``, a mask or overview sidecar, another format whose driver may want a file name's suffix) has all
    its files copied into its ``/vsimem/`` folder, where they find each other by name.
    """
    heads = [slab.view(offset, min(size, 4)) for _name, offset, size in layout.files]
    if heads and all(is_tiff(h) for h in heads) and not any(
            name.lower().endswith(SIDECARS) for name, _o, _s in layout.files):
        return [UploadedFile(name, slab.view(offset, size), in_place=f"/vsisubfile/{offset}_{size},{slab.path}")
                for name, offset, size in layout.files]
    return [UploadedFile(name, slab.read(offset, size)) for name, offset, size in layout.files]


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
    #: The bytes the request's archives may unpack to (MAPEX_MAX_UPLOAD_MB).
    max_unpacked: int
    max_batch: int
    format: Format | None
    accept: str
    #: The memory budget when the request was sent: a scene that needs more than was free is not tiled before
    #: the service has reserved its memory (it may refuse it: 413 or 503), and its archives unpack to no more.
    room: Room
    #: The most parts the service would split a mask scene into: above 1, a scene large enough is left untiled.
    parts: int = 1
    #: A part of a scene split across workers (not the first): its rows and the shared mask.
    part: ScenePart | None = None
    #: Bytes of the upload's first file in the slab when the request was sent, for a file still arriving (the service
    #: tells the worker as more come in: ``decode.arriving``); None: all of it is in.
    arrived: int | None = None


@dataclass(frozen=True)
class Splittable:
    """A mask scene the service may split: its size, and the memory each further part needs."""

    height: int
    width: int
    part_need: int


@dataclass(frozen=True)
class Opened:
    """The routed request: its specialist, the memory its outputs need, its tiles' shape, the first batches' sizes.

    ``sizes`` is None when the scene needed more than was available, or may be split (``split``):
    nothing was tiled yet, and ``start`` follows once the service has reserved the memory and
    decided the parts. A size of 0: no such batch.
    """

    specialist: str
    need: int
    what: str
    tile_shape: tuple[int, int, int]
    sizes: tuple[int, ...] | None
    split: Splittable | None = None


class Slots:
    """A session's tile and probability slots in its slab: batch k is read into tile slot k % S, and its output comes
    back in probability slot k % S. What ``/predict``'s sessions and whole-scene jobs' share."""

    def __init__(self, slab: Slab, layout: Layout) -> None:
        self.slab, self.layout = slab, layout
        self.count = len(layout.tiles)
        self._batches: list[TileBatch | None] = [None] * self.count

    def reserve(self, manifest: Manifest, tiles: int) -> None:
        """Reserve the slots a scene of ``tiles`` tiles fills (a batch at most): ``SlabSpaceError`` if the tmpfs has
        no room, before anything is written there."""
        tile_bytes, out_bytes = batch_bytes(manifest, tiles)
        self.slab.reserve([(o, tile_bytes) for o in self.layout.tiles] + [(o, out_bytes) for o in self.layout.probs])

    def read(self, slot: int, batches: Iterator[TileBatch]) -> int:
        """The next batch into tile slot ``slot``; its size, 0 at the end."""
        with unreadable_as_400():
            batch = next_batch(batches)
        self._batches[slot] = batch
        if batch is None:
            return 0
        self.slab.array(self.layout.tiles[slot], batch.data.shape)[...] = batch.data
        return len(batch.tiles)

    def blend(self, slot: int, probs_shape: tuple[int, ...], add: Callable[[TileBatch, np.ndarray], None]) -> None:
        """``add`` the probabilities the service wrote to probability slot ``slot`` (before the slot is written again)."""
        batch = self._batches[slot]
        if batch is None or probs_shape[0] != len(batch.tiles):
            raise RuntimeError(f"slot {slot} holds {0 if batch is None else len(batch.tiles)} tiles, "
                               f"the service sent {probs_shape[0]} outputs")
        add(batch, self.slab.array(self.layout.probs[slot], probs_shape))
        self._batches[slot] = None

    def close(self) -> None:
        """Drop the batches and unmap the slab."""
        self._batches = [None] * self.count
        self.slab.close()


class Session:
    """A request's open scene and tiles in one worker."""

    def __init__(self, request: OpenRequest, manifests: Mapping[str, Manifest], provider: Mapping[str, str],
                 gate: ArrivalGate | None = None) -> None:
        """``gate``: the upload is still arriving (``OpenRequest.arrived``); the session waits there for its bytes."""
        self.request, self._provider = request, provider
        slab = Slab.attach(request.slab)
        try:
            wait_rows = None
            if gate is not None:
                _name, offset, _size = request.layout.files[0]
                wait_rows = directory_and_rows(gate, lambda n: slab.view(offset, n))
            files = slab_files(slab, request.layout)
            # A scene still arriving has its values checked once it has all arrived (the check's windows are spread
            # over the scene); one the service may split, once it starts (the later parts start meanwhile); any
            # other, as it opens. Only the first part of a split scene checks: the others read the same bytes.
            self._arriving = gate if request.part is None else None
            self._unchecked = request.part is None and request.parts > 1 and gate is None
            scene, route, reader = open_and_route(
                files, request.bands, [manifests[n] for n in request.specialists], request.modality,
                request.overrides, request.max_pixels, max_unpacked=request.max_unpacked, room=request.room,
                check_units=request.part is None and not self._unchecked and gate is None)
            reader.wait_rows = wait_rows
            del files
            try:
                with unreadable_as_400():
                    self.run = SceneRun(scene, route, reader, request.max_batch, len(request.layout.tiles) - 1)
            except BaseException:
                scene.close()
                raise
        except BaseException:
            slab.close()
            raise
        self._slots = Slots(slab, request.layout)
        self._part: ScenePart | None = None
        self._mask: Slab | None = None
        self.closed = False

    def open(self) -> Opened:
        """A batch into each slot if the scene's memory was available and it is not to be split; a 400 when no tile
        has a valid pixel. A part of a split scene starts on its rows at once (the service reserved its memory)."""
        if self.request.part is not None:
            return self.start(self.request.part)
        split = self._splittable()
        if self.run.need > self.request.room.available or split is not None:
            return self._opened(None, split)
        return self.start()

    def _splittable(self) -> Splittable | None:
        """The scene's size when the service may split it: a mask scene of at least two parts' pixels."""
        manifest, g = self.run.route.manifest, self.run.reader.grid
        if self.request.parts < 2 or manifest.head != "mask" or g.height * g.width < 2 * MIN_PART_PIXELS:
            return None
        size = manifest.tile_size
        # A part holds a band of tile rows, its batches and its worker's copy of the files (none of TIFFs; an
        # archive's members as unpacked).
        part_need = request_bytes(min(2 * size, g.height), g.width, classes=len(manifest.classes), head="mask",
                                  channels=len(self.run.route.bands), tile=size, max_batch=self.request.max_batch,
                                  in_engine=len(self.request.layout.tiles) - 1)
        return Splittable(g.height, g.width, part_need + self.run.scene.held_bytes)

    def start(self, part: ScenePart | None = None) -> Opened:
        """Tile the scene (the rows of ``part``, when split) and read a batch into each slot."""
        self._part = part
        with unreadable_as_400():
            if self._unchecked:
                check_values(self.run.reader)
                self._unchecked = False
            if part is None:
                self.run.start()
            else:
                g = self.run.reader.grid
                self._mask = Slab.attach(part.mask)
                self.run.start(part.rows, MaskSlab.arrays(self._mask, g.height, g.width))
        self._slots.reserve(self.run.route.manifest, min(self.request.max_batch, max(len(self.run.tiles), 1)))
        sizes = tuple(self._slots.read(slot, self.run.batches) for slot in range(self._slots.count))
        if sizes[0] == 0 and part is None:
            self.run.result(Reservation(None, 0))  # raises: the raster has no valid pixels
        return self._opened(sizes)

    def _opened(self, sizes: tuple[int, ...] | None, split: Splittable | None = None) -> Opened:
        manifest = self.run.route.manifest
        return Opened(manifest.name, self.run.need, self.run.what,
                      (len(self.run.route.bands), manifest.tile_size, manifest.tile_size), sizes, split)

    def step(self, k: int, probs_shape: tuple[int, ...]) -> int:
        """Blend batch ``k``, read the batch after the others in flight into its slot; that batch's size (0: none)."""
        slot = k % self._slots.count
        self._slots.blend(slot, probs_shape, self.run.add)
        if self._arriving is not None and self._arriving.complete:
            self._check_arrived()  # as soon as the last byte is in, not after the rows the engine has yet to run
        return self._slots.read(slot, self.run.batches)

    def _check_arrived(self) -> None:
        """The values of a scene that arrived while it was read (its windows wait for their bytes if need be)."""
        self._arriving = None
        with unreadable_as_400():
            check_values(self.run.reader)

    def finish(self, k: int | None, probs_shape: tuple[int, ...] | None, threads: int = 1) -> Encoded | PartDone:
        """Blend the last batch, ``k`` (None: a part with no tile); the response, encoded as the client asked on
        ``threads`` (the cores the engine left idle), or what a part of a split scene counted."""
        if k is not None and probs_shape is not None:
            self._slots.blend(k % self._slots.count, probs_shape, self.run.add)
        if self._arriving is not None:
            self._check_arrived()
        if self._part is not None:
            return self.run.part_done()
        return self._encode([], threads)

    @property
    def answers_later(self) -> bool:
        """The first part of a split scene: once every part is done, ``encode`` answers for the scene."""
        return self._part is not None and self.request.part is None

    def encode(self, parts: list[PartDone]) -> Encoded:
        """The split scene's response, from the shared mask and what every part counted; a COG is compressed on as
        many threads as there were parts (their workers are idle now)."""
        return self._encode(parts, max(len(parts), 1))

    def _encode(self, parts: list[PartDone], threads: int) -> Encoded:
        prediction = self.run.result(Reservation(None, 0), parts)
        name = prediction.route.manifest.name
        return encode(prediction, self.request.format, self.request.accept, self._provider[name], threads=threads)

    def close(self) -> None:
        """Close the files and unmap the slab."""
        if not self.closed:
            self.closed = True
            self.run.scene.close()
            self._slots.close()
            if self._mask is not None:
                self._mask.close()

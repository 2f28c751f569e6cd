"""One prediction: open the request's files as one scene, route it, run its tiles through the batcher, blend.

Memory follows the batch, not the scene: tiles are read window by window and only ``max_batch``
of them exist as float32 at once; the outputs (a uint8 mask and coverage, blended one band of
tile rows at a time, or a small tile grid) are what the response needs anyway, and what they cost
is reserved against the memory budget before they are allocated.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from affine import AffineError
from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio exports no public base class for them
from rasterio.errors import RasterioError

from mapex_serve.batcher import Batcher
from mapex_serve.budget import MemoryBudget, Reservation, Room, request_bytes
from mapex_serve.decode.parts import PartDone, merge_masked
from mapex_serve.errors import MapexError
from mapex_serve.ground import GroundScale
from mapex_serve.inputs import RasterTooLargeError, RequestScene, UploadedFile, without_request_folder
from mapex_serve.repository import Manifest
from mapex_serve.routing import NoMatchingSpecialistError, Route, choose_route
from mapex_serve.scene_reader import SceneReader
from mapex_serve.tiling import (
    ClassAggregator,
    ClassResult,
    MaskBlender,
    MaskResult,
    RowBand,
    TileBatch,
    TileGrid,
    read_batches,
    tile_cells,
    tile_grid,
)
from mapex_serve.units import UnitOverrides

__all__ = [
    "Prediction", "RasterTooLargeError", "SceneRun", "UnreadableRasterError", "check_not_empty", "next_batch",
    "open_and_route", "predict", "route_scene", "tile_batches", "unreadable_as_400",
]


class UnreadableRasterError(MapexError, ValueError):
    """The upload is not a raster GDAL can read, or it has no valid pixels."""


@dataclass
class Prediction:
    route: Route
    profile: dict  # crs, transform, width, height of the scene grid
    mask: MaskResult | None = None
    classes: ClassResult | None = None
    tile_stride: int = 0
    #: The scene pixels ``[lo, hi)`` each row and column of tiles stands for (class heads' grid).
    tile_rows: list[tuple[int, int]] = field(default_factory=list)
    tile_cols: list[tuple[int, int]] = field(default_factory=list)
    #: Every band of every file: as found, what it was mapped to and by which rule, conversions applied.
    inputs: list[dict] = field(default_factory=list)
    #: Invalid pixels of the scene by reason (nodata, NaN, SCL cloud ...), each pixel counted once.
    masked: dict[str, int] = field(default_factory=dict)
    #: Files resampled onto the scene grid, and subdatasets that named no band.
    resampled: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    #: Files read as the tiles of one raster (``mapex_serve.mosaic``).
    mosaicked: list[str] = field(default_factory=list)
    #: The archives the upload held: each one's members read and left out (``Unpacked.report``).
    archives: list[dict] = field(default_factory=list)
    #: The pixel sizes on the ground of the scene, of the grid read and of the model's, if it records one.
    ground: GroundScale | None = None
    #: The memory reserved for this prediction's outputs: release it once the response is encoded.
    reservation: Reservation = field(default_factory=lambda: Reservation(None, 0))


#: What GDAL and rasterio raise on a corrupt file: bad structure, undecodable metadata, broken blocks,
#: a georeferencing that cannot be inverted.
_READ_ERRORS = (RasterioError, CPLE_BaseError, UnicodeDecodeError, AffineError)


@contextmanager
def unreadable_as_400() -> Iterator[None]:
    """A corrupt upload is the user's error (400), wherever GDAL notices it: opening, metadata or pixels."""
    try:
        yield
    except MapexError:
        raise
    except _READ_ERRORS as e:
        raise UnreadableRasterError(f"the upload is not a readable raster ({without_request_folder(str(e))}); send GeoTIFF, COG, NetCDF, HDF5, "
                                    f"JPEG 2000, ENVI or SRTM .hgt files (a .hgt under the name of its corner, as "
                                    f"N51W001.hgt: the format says nothing else), or a VRT over the other files of the "
                                    f"request") from None


def open_and_route(
    files: Sequence[UploadedFile], bands: Sequence[str] | None, manifests: Sequence[Manifest], modality: str | None,
    overrides: UnitOverrides, max_pixels: int, check_units: bool = True, *, max_unpacked: int, room: Room | None = None,
    items: bool = False,
) -> tuple[RequestScene, Route, SceneReader]:
    """Open the files, route them and decide their units (their values checked against them unless told not to: a
    part of a split scene, whose first part checks the same bytes, or a scene the service may split, checked once
    split: ``inputs.check_values``): GDAL work, done in one worker thread. ``room``: the memory budget as the request
    found it, which its archives may not unpack past; ``items``: as ``RequestScene``'s."""
    with unreadable_as_400():
        scene = RequestScene(files, bands, max_unpacked, room, items)
        try:
            route = route_scene(scene, manifests, modality)
            reader = scene.reader(route.bands, overrides, 64 if check_units else 0, max_pixels, route.manifest)
            return scene, route, reader
        except BaseException:
            scene.close()
            raise


def next_batch(batches: Iterator[TileBatch]) -> TileBatch | None:
    """The next batch of tiles (read in a worker thread), None at the end."""
    with unreadable_as_400():
        return next(batches, None)


def overlap_for(tile: int) -> int:
    """A quarter of the tile: enough for seams to blend away, cheap enough (about 1.8x the tiles)."""
    return tile // 4


def tile_batches(reader: SceneReader, manifest: Manifest, max_batch: int,
                 rows: tuple[int, int] | None = None) -> tuple[TileGrid, Iterator[TileBatch]]:
    """The scene's tile grid for the routed specialist (only the tiles rows ``[r0, r1)`` need, when given), and
    its tiles read in batches as the engine takes them."""
    size = manifest.tile_size
    tiles = tile_grid(reader.height, reader.width, size, overlap_for(size))
    if rows is not None:
        tiles = tiles.rows_between(*rows)
    fill = [b.mean for b in manifest.bands]  # invalid pixels look neutral to the model
    return tiles, read_batches(reader, tiles, max_batch, fill)


def route_scene(scene: RequestScene, manifests: Sequence[Manifest], modality: str | None) -> Route:
    """The specialist for the scene's bands; when none fits, the error also says which bands were not recognised."""
    try:
        return choose_route(manifests, scene.canonical_bands, modality)
    except NoMatchingSpecialistError as e:
        unknown = [f"{b.file} band {b.index}: {b.identity.found!r} ({b.identity.rule})"
                   for b in scene.bands if not b.identity.used]
        if unknown:
            raise NoMatchingSpecialistError(f"{e}; bands not recognised: {'; '.join(unknown)}; name them with bands= "
                                            f"(one name per band in file order, '-' to skip one)") from None
        raise


class SceneRun:
    """One routed scene from tiles to a Prediction: what the service process and a decode worker both drive.

    ``need`` is what the outputs will cost, known before anything is allocated, and what the scene's files hold in
    memory (``RequestScene.held_bytes``): reserve it against the memory budget, then ``start`` (the tile grid and the blender are scene-sized lists and
    arrays). ``batches`` then reads the tiles as the engine takes them; ``add`` blends (mask heads)
    or aggregates (class heads) each batch's probabilities; ``result`` reports.
    """

    def __init__(self, scene: RequestScene, route: Route, reader: SceneReader, max_batch: int, in_engine: int = 1) -> None:
        self.scene, self.route, self.reader, self.max_batch = scene, route, reader, max_batch
        manifest = route.manifest
        self.need = request_bytes(reader.height, reader.width, classes=len(manifest.classes), head=manifest.head,
                                  channels=len(route.bands), tile=manifest.tile_size, max_batch=max_batch,
                                  in_engine=in_engine) + scene.held_bytes
        self.what = f"this {reader.width} x {reader.height} scene" + (
            f" and its {scene.held_bytes / 2**20:,.0f} MiB of unpacked or copied files" if scene.held_bytes >= 2**20 else "")
        self.seen = 0

    def start(self, rows: tuple[int, int] | None = None, mask: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """The tile grid, the batches' reader and the blender or aggregator: once the memory is reserved.

        With ``rows`` (a part of a mask scene split across decode workers), only the tiles that rows
        ``[r0, r1)`` need: their final rows go into ``mask`` (the scene's labels and coverage, which
        the parts share); ``part_done`` then ends the part.
        """
        manifest, reader = self.route.manifest, self.reader
        size, k = manifest.tile_size, len(manifest.classes)
        self.tiles, self.batches = tile_batches(reader, manifest, self.max_batch, rows)
        self._rows, self._mask = rows, mask
        if rows is not None and mask is not None:
            self._blender = MaskBlender(reader.height, reader.width, k, size, overlap_for(size),
                                        sink=_rows_into(mask, rows), start_row=self.tiles[0].row_off)
        elif manifest.head == "mask":
            self._blender = MaskBlender(reader.height, reader.width, k, size, overlap_for(size))
        else:
            self._blender = None
        self._aggregator = ClassAggregator(*self.tiles.shape, k) if manifest.head == "class" else None

    def add(self, batch: TileBatch, probs: np.ndarray) -> None:
        """One batch's probabilities, in the batch's order."""
        (self._blender or self._aggregator).add_batch(batch.tiles, probs, batch.valid)
        self.seen += len(batch.tiles)

    def part_done(self) -> PartDone:
        """The part's last rows into the shared mask; what it counted, for the part that encodes."""
        if self._rows is None or self._blender is None:
            raise RuntimeError("part_done() ends a part of a split scene; call result() for a whole one")
        self._blender.finish(until=self._rows[1])
        return PartDone(self.seen, self.reader.masked(self._rows))

    def result(self, reservation: Reservation, parts: Sequence[PartDone] = ()) -> Prediction:
        """The Prediction with the report of the inputs; a 400 when no tile had a valid pixel.

        ``parts``: every part of a split scene (this one's included), whose rows are in the shared mask.
        """
        masked = merge_masked(p.masked for p in parts) if parts else self.reader.masked()
        if (sum(p.seen for p in parts) if parts else self.seen) == 0:
            reasons = ", ".join(f"{n:,} {why}" for why, n in masked.items())
            raise UnreadableRasterError(f"the raster has no valid pixels (all nodata, NaN or masked: {reasons})")
        g, size = self.reader.grid, self.route.manifest.tile_size
        report = Prediction(self.route, {"crs": g.crs, "transform": g.transform, "width": g.width, "height": g.height},
                            tile_stride=size - overlap_for(size), inputs=[b.report() for b in self.scene.bands],
                            tile_rows=tile_cells(g.height, size, overlap_for(size)),
                            tile_cols=tile_cells(g.width, size, overlap_for(size)),
                            masked=masked, resampled=self.reader.resampled, ignored=self.scene.ignored_subdatasets,
                            mosaicked=self.scene.mosaicked, ground=self.reader.ground,
                            archives=[a.report() for a in self.scene.archives], reservation=reservation)
        if parts and self._mask is not None:
            labels, covered = self._mask
            report.mask = MaskResult(labels, None, covered)
        elif self._blender is not None:
            report.mask = self._blender.result()
        else:
            report.classes = self._aggregator.result()
        return report


def _rows_into(mask: tuple[np.ndarray, np.ndarray], rows: tuple[int, int]) -> Callable[[RowBand], None]:
    """A blender's sink that keeps a part's own rows ``[r0, r1)`` (those above were blended without the tiles over
    them, which another part runs)."""
    labels, covered = mask
    r0, r1 = rows

    def keep(band: RowBand) -> None:
        lo, hi = max(band.row, r0), min(band.row + len(band.labels), r1)
        if lo < hi:
            labels[lo:hi] = band.labels[lo - band.row : hi - band.row]
            covered[lo:hi] = band.covered[lo - band.row : hi - band.row]

    return keep


async def predict(
    files: Sequence[UploadedFile], manifests: Sequence[Manifest], batchers: dict[str, Batcher], *,
    bands: Sequence[str] | None, modality: str | None, max_pixels: int, max_batch: int, max_unpacked: int,
    overrides: UnitOverrides | None = None, budget: MemoryBudget | None = None,
) -> Prediction:
    """Route the scene in ``files`` to one of ``manifests`` and run it in this process; errors are MapexErrors (4xx)."""
    check_not_empty(len(f.data) for f in files)
    scene, route, reader = await asyncio.to_thread(  # GDAL parses the files off the event loop
        open_and_route, files, bands, manifests, modality, overrides or UnitOverrides(), max_pixels,
        max_unpacked=max_unpacked, room=budget.room() if budget else None)
    with scene, unreadable_as_400():
        batcher = batchers[route.manifest.name]
        run = SceneRun(scene, route, reader, max_batch, batcher.ahead - 1)
        reservation = budget.reserve(run.need, run.what) if budget else Reservation(None, 0)
        try:
            run.start()
            return await _run(run, batcher, reservation)
        except BaseException:
            reservation.release()
            raise


def check_not_empty(sizes: Iterable[int]) -> None:
    """The upload's files by their sizes in bytes: a 400 when there is none, or none holds a byte."""
    if not any(sizes):
        raise UnreadableRasterError("the upload is empty; send a GeoTIFF file")


async def _run(run: SceneRun, batcher: Batcher, reservation: Reservation) -> Prediction:
    """Tiles through the batcher, a batch for each engine runner and one more in flight."""
    async def add(batch: TileBatch, probs: np.ndarray) -> None:
        run.add(batch, probs)

    with unreadable_as_400():
        await pipeline(run.batches, lambda batch, k: batcher.submit(batch.data, admit=k == 0), add,
                       ahead=batcher.ahead)
        return run.result(reservation)


async def pipeline(batches: Iterator[TileBatch], submit: Callable[[TileBatch, int], Awaitable[np.ndarray]],
                   consume: Callable[[TileBatch, np.ndarray], Awaitable[None]], *, ahead: int) -> None:
    """Every batch read in a thread, submitted (``submit(batch, k)``, k from 0) ``ahead`` at most in flight, and
    its output handed to ``consume`` in order: the engine always has the next batch queued.

    On an error or cancellation the batches in flight are cancelled (their tiles leave the queue
    unrun), and a read still in its thread is waited for: the caller closes the dataset after.
    """
    inflight: deque[tuple[TileBatch, asyncio.Future[np.ndarray]]] = deque()
    reading: asyncio.Future[TileBatch | None] | None = None
    more, k = True, 0
    try:
        while True:
            while more and len(inflight) < ahead:
                reading = asyncio.ensure_future(asyncio.to_thread(next_batch, batches))
                batch = await asyncio.shield(reading)  # a timeout must not abandon a thread still reading
                reading = None
                if batch is None:
                    more = False
                else:
                    inflight.append((batch, asyncio.ensure_future(submit(batch, k))))
                    k += 1
            if not inflight:
                return
            batch, running = inflight.popleft()
            await consume(batch, await running)
    finally:
        for _batch, running in inflight:
            running.cancel()
        await asyncio.gather(*(running for _batch, running in inflight), return_exceptions=True)
        if reading is not None:
            await asyncio.wait([reading])
            if not reading.cancelled():
                reading.exception()  # retrieved: the error that matters is already raised

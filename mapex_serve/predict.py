"""One prediction: open the upload, route it, run its tiles through the batcher, blend the result.

Memory follows the batch, not the scene: tiles are read window by window and only ``max_batch``
of them exist as float32 at once; the outputs (a uint8 mask plus K float32 probability planes,
or a small tile grid) are what the response needs anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import rasterio
from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio exports no public base class for them
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader, MemoryFile

from mapex_serve.batcher import Batcher
from mapex_serve.errors import MapexError
from mapex_serve.rasters import band_names, scale_offset
from mapex_serve.repository import Manifest
from mapex_serve.routing import Route, choose_route
from mapex_serve.tiling import (
    ClassAggregator,
    ClassResult,
    MaskBlender,
    MaskResult,
    Tile,
    TileBatch,
    grid_shape,
    read_batches,
    tile_grid,
)

__all__ = ["Prediction", "RasterTooLargeError", "UnreadableRasterError", "predict", "tile_batches"]


class UnreadableRasterError(MapexError, ValueError):
    """The upload is not a raster GDAL can read, or it has no valid pixels."""


class RasterTooLargeError(MapexError, ValueError):
    """The raster has more pixels than MAPEX_MAX_PIXELS."""


@dataclass
class Prediction:
    route: Route
    profile: dict  # crs, transform, width, height, nodata of the input
    mask: MaskResult | None = None
    classes: ClassResult | None = None
    tile_stride: int = 0


#: What GDAL and rasterio raise on a corrupt file: bad structure, undecodable metadata, broken blocks.
_READ_ERRORS = (RasterioError, CPLE_BaseError, UnicodeDecodeError)


@contextmanager
def _unreadable_as_400() -> Iterator[None]:
    """A corrupt upload is the user's error (400), wherever GDAL notices it: opening, metadata or pixels."""
    try:
        yield
    except MapexError:
        raise
    except _READ_ERRORS as e:
        raise UnreadableRasterError(f"the upload is not a readable GeoTIFF ({e}); send a GeoTIFF file") from None


def _open(data: bytes) -> tuple[MemoryFile, rasterio.io.DatasetReader]:
    """The upload as an open dataset (and the in-memory file that holds it)."""
    memfile = MemoryFile(data)
    try:
        return memfile, memfile.open()
    except ValueError as e:  # rasterio's answer to bytes it cannot take as a dataset at all
        memfile.close()
        raise UnreadableRasterError(f"the upload is not a readable GeoTIFF ({e}); send a GeoTIFF file") from None
    except BaseException:
        memfile.close()
        raise


def _next_batch(batches: Iterator[TileBatch]) -> TileBatch | None:
    """The next batch of tiles (read in a worker thread), None at the end."""
    with _unreadable_as_400():
        return next(batches, None)


def overlap_for(tile: int) -> int:
    """A quarter of the tile: enough for seams to blend away, cheap enough (about 1.8x the tiles)."""
    return tile // 4


def tile_batches(src: DatasetReader, route: Route, max_batch: int) -> tuple[list[Tile], Iterator[TileBatch]]:
    """The scene's tile grid for the routed specialist, and its tiles read in batches as the engine takes them."""
    manifest = route.manifest
    tiles = tile_grid(src.height, src.width, manifest.tile_size, overlap_for(manifest.tile_size))
    pairs = [scale_offset(src, i, b) for i, b in zip(route.band_indexes, route.bands, strict=True)]
    scales, offsets = [p[0] for p in pairs], [p[1] for p in pairs]
    fill = [b.mean for b in manifest.bands]  # invalid pixels look neutral to the model
    return tiles, read_batches(src, route.band_indexes, tiles, scales, offsets, max_batch, fill)


async def predict(
    data: bytes, manifests: Sequence[Manifest], batchers: dict[str, Batcher], *,
    bands: Sequence[str] | None, modality: str | None, max_pixels: int, max_batch: int,
) -> Prediction:
    """Route the GeoTIFF in ``data`` to one of ``manifests`` and run it; errors are MapexErrors (4xx)."""
    if not data:
        raise UnreadableRasterError("the upload is empty; send a GeoTIFF file")
    with _unreadable_as_400():
        memfile, src = await asyncio.to_thread(_open, data)  # GDAL parses the file off the event loop
    with memfile, src, _unreadable_as_400():
        if src.width * src.height == 0 or src.count == 0:
            raise UnreadableRasterError("the raster has no pixels or no bands")
        if src.width * src.height > max_pixels:
            raise RasterTooLargeError(f"the raster is {src.width} x {src.height} = {src.width * src.height:,} pixels; "
                                      f"at most {max_pixels:,} are accepted (MAPEX_MAX_PIXELS): crop or split the scene")
        route = choose_route(manifests, band_names(src, bands), modality)
        manifest = route.manifest
        size = manifest.tile_size
        tiles, batches = tile_batches(src, route, max_batch)
        k = len(manifest.classes)
        blender = MaskBlender(src.height, src.width, k, size, overlap_for(size)) if manifest.head == "mask" else None
        aggregator = ClassAggregator(*grid_shape(tiles), k) if manifest.head == "class" else None
        batcher = batchers[manifest.name]
        seen = 0
        reading = asyncio.ensure_future(asyncio.to_thread(_next_batch, batches))
        try:
            # Shielded: a timeout must not abandon a thread that is still reading from the dataset.
            while batch := await asyncio.shield(reading):
                reading = asyncio.ensure_future(asyncio.to_thread(_next_batch, batches))  # read ahead of the engine
                probs = await batcher.submit(batch.data, admit=seen == 0)
                for tile, p, valid in zip(batch.tiles, probs, batch.valid, strict=True):
                    (blender or aggregator).add(tile, p, valid)
                seen += len(batch.tiles)
        finally:
            await asyncio.wait([reading])  # the dataset closes only after its last read has ended
            if not reading.cancelled():
                reading.exception()  # retrieved: on this path the error that matters is already raised
        if seen == 0:
            raise UnreadableRasterError("the raster has no valid pixels (all nodata, NaN or masked)")
        profile = {"crs": src.crs, "transform": src.transform, "width": src.width, "height": src.height,
                   "nodata": src.nodata}
    stride = size - overlap_for(size)
    if blender is not None:
        return Prediction(route, profile, mask=blender.result(), tile_stride=stride)
    return Prediction(route, profile, classes=aggregator.result(), tile_stride=stride)


def pixel_area_m2(crs: rasterio.crs.CRS | None, transform: rasterio.Affine) -> float | None:
    """Area of one pixel in m², when the CRS is projected in metres; None otherwise."""
    if crs is None or not crs.is_projected or (crs.linear_units or "").lower() not in ("metre", "meter", "m"):
        return None
    return abs(transform.a * transform.e - transform.b * transform.d)

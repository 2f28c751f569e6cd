"""A catalogue's items of one acquisition on more than one grid, read on the first's.

The Sentinel-2 tiles a flood spans across a UTM zone's edge are each on their own zone's grid (``32UQU`` in
EPSG:32632, ``33UUP`` in EPSG:32633): a job by their items was refused, its files of a band not on one grid. Now a
band's file not on the grid of the band's first file is read through GDAL's warper onto that grid: its CRS and pixel
size, aligned to its pixels, over the box the file covers. The warped file is a VRT in the scene's own folder, which
the band's mosaic (``mapex_serve.mosaic``) takes as a tile like any other. Values are resampled bilinearly and
quality layers (classes, bits) by the nearest pixel, as the scene reader resamples.

The warper leaves the file's no data where the file does not reach; without a no-data value that would paint zeros
over the first item's pixels, so a file to warp needs one (its own, or its STAC item's ``raster:bands``).
"""

from __future__ import annotations

import math

import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling
from rasterio.io import DatasetReaderBase
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from mapex_serve.scene_reader import Grid

__all__ = ["aligned_grid", "on_grid", "warp_onto"]


def on_grid(grid: Grid, ref: Grid) -> bool:
    """Whether ``grid``'s pixels are ``ref``'s: one CRS and pixel size, north-up, whole pixels apart."""
    t, r = grid.transform, ref.transform
    if grid.crs != ref.crs or (t.a, t.b, t.d, t.e) != (r.a, r.b, r.d, r.e):
        return False
    col, row = (t.c - r.c) / r.a, (t.f - r.f) / r.e
    return abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6


def aligned_grid(grid: Grid, ref: Grid) -> Grid:
    """The grid of ``ref``'s CRS and pixels that covers ``grid``'s extent (its edges densified: a UTM zone's box is
    curved in its neighbour's)."""
    west, south, east, north = transform_bounds(grid.crs, ref.crs, *grid.extent(), densify_pts=21)
    r = ref.transform
    cols = sorted(((west - r.c) / r.a, (east - r.c) / r.a))
    rows = sorted(((north - r.f) / r.e, (south - r.f) / r.e))
    col0, row0 = math.floor(cols[0]), math.floor(rows[0])
    return Grid(ref.crs, r @ Affine.translation(col0, row0), math.ceil(cols[1]) - col0, math.ceil(rows[1]) - row0)


def warp_onto(dataset: DatasetReaderBase, grid: Grid, ref: Grid, path: str, nodata: float, quality: bool) -> Grid:
    """Write to ``path`` a VRT of ``dataset`` (on ``grid``, which GDAL may not have read from it) warped onto
    ``ref``'s pixels; the grid of that VRT. ``nodata``: the file's, kept where it does not reach; ``quality``: its
    values are classes or bits, taken from the nearest pixel."""
    onto = aligned_grid(grid, ref)
    with WarpedVRT(dataset, src_crs=grid.crs, src_transform=grid.transform, src_nodata=nodata, nodata=nodata,
                   crs=onto.crs, transform=onto.transform, width=onto.width, height=onto.height,
                   resampling=Resampling.nearest if quality else Resampling.bilinear) as vrt:
        rasterio.shutil.copy(vrt, path, driver="VRT")
    return onto

"""The area of interest a request reads of its scene: ``bbox=west,south,east,north`` in WGS84 degrees, as STAC's and
OGC API's ``bbox`` is.

A disaster team's flooded valley is a few kilometres of a 110 km Sentinel-2 tile or EOPF product. With a box only
the scene's pixels inside it are read, so a job by URL fetches only the COG blocks or Zarr chunks under it, and the
answer covers only it. The box is taken to the scene's CRS (its edges densified, so that a box whose sides curve in
UTM is covered whole) and widened to the scene's own pixel lines: the answer's pixels are the scene's. A box whose
west is east of its east crosses the antimeridian, as STAC's and GeoJSON's boxes do (``170,-20,-170,-15`` round
Fiji): its two sides of 180° are taken to the scene's CRS each, and the scene cut to what they cover of it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from rasterio.errors import CRSError
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from mapex_serve.errors import MapexError

if TYPE_CHECKING:  # units.py reads boxes, and the scene reader reads units
    from mapex_serve.scene_reader import Grid

__all__ = ["BboxError", "Bbox", "crop", "parse_bbox"]

#: ``(west, south, east, north)`` in degrees of WGS84 longitude and latitude.
Bbox = tuple[float, float, float, float]


class BboxError(MapexError, ValueError):
    """A ``bbox=`` that is not a box of longitudes and latitudes, or that the scene cannot be cut to."""


def parse_bbox(text: str | None) -> Bbox | None:
    """``"10.1,45.2,10.3,45.4"`` as a box; None for none. West east of east: a box across the antimeridian."""
    if not text:
        return None
    parts = text.split(",")
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError:
        raise BboxError(f"bbox={text} is not four numbers; give west,south,east,north in degrees of WGS84 longitude "
                        f"and latitude, e.g. bbox=10.10,45.20,10.30,45.35") from None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise BboxError(f"bbox={text} holds a number that is not finite")
    if not (-180 <= west <= 180 and -180 <= east <= 180 and west != east and -90 <= south < north <= 90):
        raise BboxError(f"bbox={text} is not west,south,east,north in degrees (longitudes -180..180, west east of east "
                        f"only for a box across the antimeridian; latitudes -90..90, south < north)")
    return west, south, east, north


def crop(grid: Grid, bbox: Bbox) -> Grid:
    """``grid`` cut to the pixels that ``bbox`` touches, on its own pixel lines."""
    if grid.crs is None:
        raise BboxError("the scene has no CRS, so bbox= cannot place the box on it; send it georeferenced, or crop it "
                        "yourself")
    west, south, east, north = bbox
    sides = [bbox] if west < east else [(west, south, 180.0, north), (-180.0, south, east, north)]
    cuts = [cut for side in sides if (cut := _pixels(grid, side)) is not None]
    if not cuts:
        west, south, east, north = transform_bounds(grid.crs, "EPSG:4326", *grid.extent(), densify_pts=21)
        raise BboxError(f"bbox={_text(bbox)} does not overlap the scene, which covers {west:.5f},{south:.5f},"
                        f"{east:.5f},{north:.5f} (west,south,east,north in degrees)")
    col0, row0 = min(c[0] for c in cuts), min(c[1] for c in cuts)
    col1, row1 = max(c[2] for c in cuts), max(c[3] for c in cuts)
    cut = Window(col0, row0, col1 - col0, row1 - row0)
    return replace(grid, transform=window_transform(cut, grid.transform), width=col1 - col0, height=row1 - row0)


def _pixels(grid: Grid, bbox: Bbox) -> tuple[int, int, int, int] | None:
    """``(col0, row0, col1, row1)`` of the scene's pixels the box (west < east) touches; None for none."""
    try:
        left, bottom, right, top = transform_bounds("EPSG:4326", grid.crs, *bbox, densify_pts=21)
    except CRSError as e:
        raise BboxError(f"bbox= cannot be taken to the scene's CRS ({e})") from None
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise BboxError(f"bbox={_text(bbox)} lies where the scene's CRS ({grid.crs}) has no coordinates")
    window = grid.window(left, bottom, right, top)
    col0, row0 = max(0, math.floor(window.col_off)), max(0, math.floor(window.row_off))
    col1 = min(grid.width, math.ceil(window.col_off + window.width))
    row1 = min(grid.height, math.ceil(window.row_off + window.height))
    return (col0, row0, col1, row1) if col0 < col1 and row0 < row1 else None


def _text(bbox: Bbox) -> str:
    return ",".join(f"{v:g}" for v in bbox)

"""The area of interest a request reads of its scene: ``bbox=west,south,east,north`` in WGS84 degrees, as STAC's and
OGC API's ``bbox`` is.

A disaster team's flooded valley is a few kilometres of a 110 km Sentinel-2 tile or EOPF product. With a box only
the scene's pixels inside it are read, so a job by URL fetches only the COG blocks or Zarr chunks under it, and the
answer covers only it. The box is taken to the scene's CRS (its edges densified, so that a box whose sides curve in
UTM is covered whole) and widened to the scene's own pixel lines: the answer's pixels are the scene's.
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
    """``"10.1,45.2,10.3,45.4"`` as a box; None for none. West may not exceed east: a box across the antimeridian is
    two requests."""
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
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise BboxError(f"bbox={text} is not west,south,east,north in degrees with west < east (-180..180) and south "
                        f"< north (-90..90); a box across the antimeridian is two requests, one each side")
    return west, south, east, north


def crop(grid: Grid, bbox: Bbox) -> Grid:
    """``grid`` cut to the pixels that ``bbox`` touches, on its own pixel lines."""
    if grid.crs is None:
        raise BboxError("the scene has no CRS, so bbox= cannot place the box on it; send it georeferenced, or crop it "
                        "yourself")
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
    if col0 >= col1 or row0 >= row1:
        west, south, east, north = transform_bounds(grid.crs, "EPSG:4326", *grid.extent(), densify_pts=21)
        raise BboxError(f"bbox={_text(bbox)} does not overlap the scene, which covers {west:.5f},{south:.5f},"
                        f"{east:.5f},{north:.5f} (west,south,east,north in degrees)")
    cut = Window(col0, row0, col1 - col0, row1 - row0)
    return replace(grid, transform=window_transform(cut, grid.transform), width=col1 - col0, height=row1 - row0)


def _text(bbox: Bbox) -> str:
    return ",".join(f"{v:g}" for v in bbox)

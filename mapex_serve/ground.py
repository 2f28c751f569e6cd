"""The size of a scene's pixels on the ground, against the size the specialist learned.

A specialist trained on 10 m pixels that is sent a 30 m scene (HLS, Landsat, a 30 m RTC) sees every field, river
and burn scar at a third of the size it learned, and answers as confidently as ever: a wrong scale is a silent
error, like a wrong unit. So a scene whose pixels differ from the model's by more than ``TOLERANCE`` either way is
refused (422) unless the caller says what to do: ``pixel_size=model`` reads it resampled onto a grid of the
model's pixel size (over the same extent; the answer comes on that grid), ``pixel_size=native`` runs it on its
own pixels. Manifests that record no pixel size (a model pre-trained on scale-free synthetic scenes) are not
checked, nor are files with no CRS, whose pixels have no size on the ground.

The size is measured on the ground, not in the CRS's units: at the scene's centre, one pixel step along each axis
taken to WGS84 and measured on its ellipsoid. That gives degrees (Earth Engine's EPSG:4326 exports), feet and Web
Mercator (whose map metres are 1/cos(latitude) ground metres: Planet's basemaps) their true size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform as transform_points

from mapex_serve.errors import MapexError
from mapex_serve.scene_reader import Grid
from mapex_serve.units import PixelSizeChoice

__all__ = ["TOLERANCE", "GroundScale", "PixelSizeError", "fit_to_model", "ground_pixel_size"]

#: How far a scene's pixel size may be from the model's, as a ratio either way, and be read as it is: wide enough
#: for a 10 m product in a UTM zone's edge or in degrees at 60 N (5 x 10 m), narrow enough to catch 20 m and 30 m.
TOLERANCE = 1.5
_A, _E2 = 6_378_137.0, 6.69437999014e-3  # WGS84: semi-major axis (m), first eccentricity squared


class PixelSizeError(MapexError, ValueError):
    """The scene's pixels are not the size the specialist learned, and the request did not say how to read them."""


@dataclass(frozen=True)
class GroundScale:
    """The pixel size on the ground of the scene's files and of the grid read, and the model's (all metres)."""

    model_m: float
    scene_m: tuple[float, float] | None  # (x, y) of the scene grid (its finest file's pixels); None: no CRS
    read_m: tuple[float, float] | None  # of the grid the model read (the model's own after pixel_size=model)

    def report(self) -> dict[str, Any]:
        return {"scene_m": _rounded(self.scene_m), "read_m": _rounded(self.read_m), "model_m": self.model_m}


def _rounded(xy: tuple[float, float] | None) -> list[float] | None:
    return None if xy is None else [round(v, 3) for v in xy]


def _distance_m(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    """Distance on the WGS84 ellipsoid over a pixel's length: the meridian and prime vertical radii of curvature at
    the mean latitude (a sphere's would be 0.3% off, and make a UTM grid's pixels look oblong)."""
    phi = math.radians((lat0 + lat1) / 2)
    w = 1 - _E2 * math.sin(phi) ** 2
    north = math.radians(lat1 - lat0) * _A * (1 - _E2) / w**1.5
    east = math.radians((lon1 - lon0 + 180) % 360 - 180) * _A / math.sqrt(w) * math.cos(phi)
    return math.hypot(north, east)


def ground_pixel_size(grid: Grid) -> tuple[float, float] | None:
    """``(x, y)`` metres on the ground of one pixel step near the grid's centre; None without a CRS, or one PROJ
    cannot take to WGS84.

    Measured at the centre of the cell of 1,000 x 1,000 pixels that holds the grid's, and kept per cell: a pixel's
    size changes by far less than the tolerance across such a cell, and building PROJ's transformation each time
    cost 0.19 ms of a single-tile request's 0.6 ms of reading (``python -m bench.stages``)."""
    if grid.crs is None:
        return None
    t = grid.transform
    x, y = t @ (grid.width / 2, grid.height / 2)
    cell = 1000 * math.hypot(t.a, t.d), 1000 * math.hypot(t.b, t.e)
    if not (cell[0] > 0 and cell[1] > 0):
        return None
    return _cell_pixel_size(grid.crs.to_wkt(), (t.a, t.b, t.d, t.e), round(x / cell[0]), round(y / cell[1]), cell)


@lru_cache(maxsize=1024)
def _cell_pixel_size(wkt: str, linear: tuple[float, float, float, float], i: int, j: int,
                     cell: tuple[float, float]) -> tuple[float, float] | None:
    a, b, d, e = linear
    x, y = i * cell[0], j * cell[1]
    xs, ys = [x, x + a, x + b], [y, y + d, y + e]
    try:
        lons, lats = transform_points(CRS.from_wkt(wkt), "EPSG:4326", xs, ys)
    except (RasterioError, ValueError):
        return None
    sizes = (_distance_m(lons[0], lats[0], lons[1], lats[1]), _distance_m(lons[0], lats[0], lons[2], lats[2]))
    return sizes if all(math.isfinite(s) and s > 0 for s in sizes) else None


def _factor(scene: float, model: float) -> float:
    """How many model pixels one scene pixel becomes along an axis; a whole number of them, or of scene pixels to
    a model pixel, where the sizes are that within 2% (a UTM grid's scale factor, the sphere): 30 m pixels become
    three of 10 m exactly, on the file's own pixel lines."""
    f = scene / model
    if (up := round(f)) >= 1 and abs(f - up) <= 0.02 * up:
        return up
    if (down := round(1 / f)) >= 1 and abs(1 / f - down) <= 0.02 * down:
        return 1 / down
    return f


def _resampled(grid: Grid, scene_m: tuple[float, float], model_m: float) -> Grid:
    """The grid over the same extent whose pixels are nearest ``model_m`` on the ground."""
    width = max(1, round(grid.width * _factor(scene_m[0], model_m)))
    height = max(1, round(grid.height * _factor(scene_m[1], model_m)))
    return Grid(grid.crs, grid.transform @ Affine.scale(grid.width / width, grid.height / height), width, height)


def fit_to_model(grid: Grid, model_name: str, model_m: float | None,
                 choice: PixelSizeChoice | None) -> tuple[Grid, GroundScale | None]:
    """The grid to read the scene on for a model trained on ``model_m`` pixels, and what was measured (module
    docstring); a ``PixelSizeError`` when they differ and ``choice`` does not say what to do."""
    if model_m is None:
        return grid, None
    scene_m = ground_pixel_size(grid)
    if scene_m is None:
        if choice == "model":
            raise PixelSizeError("pixel_size=model resamples the scene to the model's pixel size, but the files have "
                                 "no CRS, so their pixels have no size on the ground: add the CRS (gdal_edit -a_srs) "
                                 "or leave pixel_size= out")
        return grid, GroundScale(model_m, None, None)
    ratio = math.sqrt(scene_m[0] * scene_m[1]) / model_m
    if choice == "model" and abs(ratio - 1) > 0.01:
        fitted = _resampled(grid, scene_m, model_m)
        return fitted, GroundScale(model_m, scene_m, ground_pixel_size(fitted))
    if choice is None and not 1 / TOLERANCE <= ratio <= TOLERANCE:
        fitted = _resampled(grid, scene_m, model_m)
        raise PixelSizeError(
            f"the scene's pixels are {_size(scene_m)} on the ground, and {model_name} was trained on {model_m:g} m "
            f"pixels: it would see every field, river and scar at {1 / ratio:.2g}x the size it learned, and answer "
            f"as if nothing were wrong. Send pixel_size=model to read the scene resampled to {model_m:g} m pixels "
            f"(the answer comes on that grid: {fitted.width} x {fitted.height} pixels, from {grid.width} x "
            f"{grid.height}), or pixel_size=native to run it on its own pixels (accepted without either: within "
            f"{TOLERANCE:g}x of {model_m:g} m)"
        )
    return grid, GroundScale(model_m, scene_m, scene_m)


def _size(xy: tuple[float, float]) -> str:
    x, y = xy
    return f"{x:.3g} m" if abs(x - y) <= 0.01 * max(x, y) else f"{x:.3g} x {y:.3g} m"

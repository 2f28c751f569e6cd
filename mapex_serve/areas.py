"""Areas in m² of pixels, classes and polygons, for projected and geographic grids alike.

A projected CRS gives planar areas (its linear unit converted to metres): right to 0.1 % in UTM, but
a conformal projection far from its standard lines overstates them (Web Mercator by 1/cos²φ, x4 at
60°N); such rasters should be warped to an equal-area or UTM CRS first. A geographic CRS has no
planar area: a cell of 1° x 1° is about 12,309 km² at the equator and half that at 60°N. Its area is
the exact area on the CRS's ellipsoid between the cell's parallels and meridians, through the
authalic function q(φ) (Snyder 1987, *Map Projections: A Working Manual*, USGS PP 1395, eq. 3-12):
the band between φ1 and φ2 over Δλ radians has area a²/2 · Δλ · |q(φ2) − q(φ1)|. The same function
is the cylindrical equal-area projection, which :func:`equal_area_xy` uses for polygons. Rasterio
and numpy are enough; no pyproj.

Class areas are accumulated band of rows by band of rows, so that a whole scene is summed strip by
strip without holding it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from mapex_serve.errors import MapexError

__all__ = ["AreaError", "class_areas", "equal_area_xy", "known_row_areas_m2", "row_pixel_areas_m2"]

#: WGS84, the ellipsoid assumed when a geographic CRS's WKT does not state one.
_WGS84 = (6378137.0, 298.257223563)
_SPHEROID = re.compile(r'(?:SPHEROID|ELLIPSOID)\["[^"]*",\s*([0-9.eE+-]+),\s*([0-9.eE+-]+)')


class AreaError(MapexError, ValueError):
    """A grid whose pixel or polygon areas cannot be computed (a CRS neither projected nor geographic, a rotated
    geographic grid)."""


def _ellipsoid(crs: CRS) -> tuple[float, float]:
    """Semi-major axis (m) and eccentricity squared of a geographic CRS's ellipsoid, from its WKT."""
    m = _SPHEROID.search(crs.to_wkt())
    a, rf = (float(m.group(1)), float(m.group(2))) if m else _WGS84
    f = 0.0 if rf == 0 else 1.0 / rf  # WKT1 writes an inverse flattening of 0 for a sphere
    return a, f * (2.0 - f)


def _q(phi: np.ndarray, e2: float) -> np.ndarray:
    """Snyder's authalic q(φ) (φ in radians): band areas on the ellipsoid are a²/2 · Δλ · Δq."""
    s = np.sin(np.clip(phi, -math.pi / 2, math.pi / 2))
    if e2 == 0.0:
        return 2.0 * s
    e = math.sqrt(e2)
    return (1.0 - e2) * (s / (1.0 - e2 * s * s) - np.log((1.0 - e * s) / (1.0 + e * s)) / (2.0 * e))


def _kind(crs: CRS) -> str:
    if crs.is_geographic:
        return "geographic"
    if crs.is_projected:
        return "projected"
    raise AreaError(f"cannot compute areas in CRS {crs.to_string() or crs.to_wkt()[:80]!r}: it is neither projected "
                    "nor geographic; warp the raster to a projected (metres) or geographic CRS")


def row_pixel_areas_m2(crs: CRS | None, transform: Affine, height: int, width: int) -> np.ndarray | None:
    """Area in m² of one pixel of each row, shape ``(height,)``; None when there is no CRS.

    Per row because a geographic grid's pixels shrink towards the poles; a projected grid's rows are
    all ``|det(transform)|`` times the linear unit's factor squared. ``width`` is accepted so that the
    signature stays the same if a future CRS needs per-column areas; rows are enough for both kinds.
    """
    if crs is None:
        return None
    if _kind(crs) == "projected":
        _, factor = crs.linear_units_factor
        return np.full(height, abs(transform.determinant) * factor * factor, dtype=np.float64)
    if transform.b != 0 or transform.d != 0:
        raise AreaError("cannot compute pixel areas of a rotated or sheared geographic grid (its rows do not follow "
                        "parallels); warp the raster to a north-up grid")
    a, e2 = _ellipsoid(crs)
    _, to_radians = crs.units_factor
    edges = (transform.f + transform.e * np.arange(height + 1, dtype=np.float64)) * to_radians
    q = _q(edges, e2)
    return 0.5 * a * a * abs(transform.a * to_radians) * np.abs(np.diff(q))


def class_areas(labels: np.ndarray, row_areas: np.ndarray | None, n_classes: int, nodata: int = 255,
                row0: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Pixel counts (int64) and areas in m² (float64, or None without ``row_areas``) of classes ``0..n_classes-1``.

    ``labels`` is a band of rows ``(h, W)`` starting at scene row ``row0``, so that a scene can be summed
    strip by strip: the sums of the strips' results are the whole scene's. ``nodata`` pixels are not counted;
    any other value outside the classes is refused (a label out of range means a model/manifest mismatch).
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be a (rows, columns) array, got shape {labels.shape}")
    h = labels.shape[0]
    per_row = np.zeros((h, n_classes), dtype=np.int64)
    for c in range(n_classes):
        if c != nodata:  # a nodata value inside the class range is still nodata
            per_row[:, c] = np.count_nonzero(labels == c, axis=1)
    counts = per_row.sum(axis=0)
    stray = labels.size - int(counts.sum()) - int(np.count_nonzero(labels == nodata))
    if stray:
        values = np.unique(labels[(labels >= n_classes) | (labels < 0)])
        values = values[values != nodata][:10]
        raise ValueError(f"{stray} pixels have labels outside the {n_classes} classes and nodata {nodata}: "
                         f"{values.tolist()}")
    if row_areas is None:
        return counts, None
    if row0 < 0 or row0 + h > row_areas.shape[0]:
        raise ValueError(f"rows {row0}..{row0 + h} are outside the {row_areas.shape[0]} rows of row_areas")
    return counts, row_areas[row0:row0 + h] @ per_row


def equal_area_xy(crs: CRS) -> Callable[[np.ndarray], np.ndarray]:
    """A map of ``(N, 2)`` coordinates in ``crs`` to metres on a plane where planar areas are areas in m².

    Projected: the coordinates times the linear unit's factor. Geographic: the cylindrical equal-area
    projection of the CRS's ellipsoid (x = a·λ, y = a·q(φ)/2), exact for edges along parallels and
    meridians, which is every edge of a polygonised north-up pixel grid.
    """
    if _kind(crs) == "projected":
        _, factor = crs.linear_units_factor
        return lambda xy: xy * factor
    a, e2 = _ellipsoid(crs)
    _, to_radians = crs.units_factor

    def project(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([a * xy[:, 0] * to_radians, 0.5 * a * _q(xy[:, 1] * to_radians, e2)])

    return project


def known_row_areas_m2(crs: CRS | None, transform: Affine, height: int, width: int) -> np.ndarray | None:
    """:func:`row_pixel_areas_m2`, or None where areas cannot be computed: answers then give pixel counts only."""
    try:
        return row_pixel_areas_m2(crs, transform, height, width)
    except AreaError:
        return None

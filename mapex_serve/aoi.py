"""The area of interest a request reads of its scene: ``bbox=west,south,east,north`` in WGS84 degrees, as STAC's and
OGC API's ``bbox`` is, or ``aoi=`` a GeoJSON polygon, as STAC API's ``intersects`` and Sentinel Hub's and openEO's
geometries are.

A disaster team's flooded valley is a few kilometres of a 110 km Sentinel-2 tile or EOPF product. With a box only
the scene's pixels inside it are read, so a job by URL fetches only the COG blocks or Zarr chunks under it, and the
answer covers only it. The box is taken to the scene's CRS (its edges densified, so that a box whose sides curve in
UTM is covered whole) and widened to the scene's own pixel lines: the answer's pixels are the scene's. A box whose
west is east of its east crosses the antimeridian, as STAC's and GeoJSON's boxes do (``170,-20,-170,-15`` round
Fiji): its two sides of 180° are taken to the scene's CRS each, and the scene cut to what they cover of it.

A polygon (a river basin, a municipality, the AOI of a Copernicus EMS activation) reads the box around it, and the
pixels whose centres lie outside it are masked (``outside the area of interest``): the answer, its class areas and
its polygons cover the polygon alone. GeoJSON (RFC 7946) is WGS84 longitude and latitude; a polygon across the
antimeridian comes split in two at it, as the RFC has it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from mapex_serve.errors import MapexError

if TYPE_CHECKING:  # units.py reads boxes, and the scene reader reads units
    from mapex_serve.scene_reader import Grid

__all__ = ["Aoi", "AoiError", "BboxError", "Bbox", "crop", "parse_aoi", "parse_bbox"]

#: ``(west, south, east, north)`` in degrees of WGS84 longitude and latitude.
Bbox = tuple[float, float, float, float]


class BboxError(MapexError, ValueError):
    """A ``bbox=`` that is not a box of longitudes and latitudes, or that the scene cannot be cut to."""


class AoiError(BboxError):
    """An ``aoi=`` that is not a GeoJSON polygon in longitudes and latitudes."""


#: The most vertices a polygon may have: each window read rasterises it.
MAX_VERTICES = 100_000
_ACCEPTED = ("give a GeoJSON Polygon or MultiPolygon, a Feature of one, or a FeatureCollection of them, in WGS84 "
             "longitude and latitude (RFC 7946), e.g. "
             '{"type":"Polygon","coordinates":[[[10.1,45.2],[10.3,45.2],[10.3,45.35],[10.1,45.2]]]}')


@dataclass(frozen=True)
class Aoi:
    """A polygonal area of interest: its polygons as one GeoJSON MultiPolygon (WGS84) and the box around them."""

    geometry: Mapping[str, Any]
    bbox: Bbox

    def in_crs(self, crs: CRS) -> dict[str, Any]:
        """The polygon in ``crs``, where a scene's windows are masked by it."""
        try:
            return transform_geom("EPSG:4326", crs, self.geometry)
        except (CRSError, ValueError) as e:
            raise AoiError(f"aoi= cannot be taken to the scene's CRS ({e})") from None


def parse_aoi(value: str | Mapping[str, Any] | None) -> Aoi | None:
    """A GeoJSON polygon (text or object: a Polygon, a MultiPolygon, a Feature of one, a FeatureCollection of them)
    as an ``Aoi``; None for none."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise AoiError(f"aoi= is not JSON ({e.msg}); {_ACCEPTED}") from None
    crs = value.get("crs") if isinstance(value, Mapping) else None  # GeoJSON 2008's, as QGIS still writes
    named = str((crs.get("properties") or {}).get("name", "")) if isinstance(crs, Mapping) else ""
    if crs is not None and not named.upper().replace("::", ":").endswith(("CRS84", "EPSG:4326")):
        raise AoiError(f"aoi= states its CRS as {named or repr(crs)}; GeoJSON is WGS84 longitude and latitude: "
                       f"reproject it (ogr2ogr -t_srs EPSG:4326 aoi.geojson yours.geojson)")
    polygons = [_rings(polygon) for polygon in _polygons(value)]
    if not polygons:
        raise AoiError(f"aoi= holds no polygon; {_ACCEPTED}")
    points = [_position(p) for rings in polygons for ring in rings for p in ring]
    if len(points) > MAX_VERTICES:
        raise AoiError(f"aoi= has {len(points):,} vertices, more than {MAX_VERTICES:,}; simplify it (ogr2ogr "
                       f"-simplify, or shapely's simplify) first")
    geometry = {"type": "MultiPolygon", "coordinates": [[[list(p) for p in ring] for ring in rings]
                                                        for rings in polygons]}
    return Aoi(geometry, _bounds(points))


def _polygons(value: Any) -> Iterator[Any]:
    """The coordinates of each polygon of a GeoJSON object."""
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "FeatureCollection" and isinstance(value.get("features"), list):
        for feature in value["features"]:
            yield from _polygons(feature)
    elif kind == "Feature":
        yield from _polygons(value.get("geometry"))
    elif kind == "Polygon":
        yield value.get("coordinates")
    elif kind == "MultiPolygon" and isinstance(value.get("coordinates"), list):
        yield from value["coordinates"]
    else:
        what = f"a {kind}" if isinstance(kind, str) else "no geometry" if value is None else f"a {type(value).__name__}"
        raise AoiError(f"aoi= holds {what}, not a polygon; {_ACCEPTED}")


def _rings(polygon: Any) -> list[list[Any]]:
    if not isinstance(polygon, list) or not polygon or not all(isinstance(r, list) and len(r) >= 4 for r in polygon):
        raise AoiError(f"aoi= holds a polygon whose rings are not lists of 4 positions or more (the last the first); "
                       f"{_ACCEPTED}")
    return polygon


def _position(p: Any) -> tuple[float, float]:
    try:
        lon, lat = float(p[0]), float(p[1])
    except (TypeError, ValueError, IndexError):
        raise AoiError(f"aoi= holds a position {p!r} that is not [longitude, latitude]; {_ACCEPTED}") from None
    if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise AoiError(f"aoi= holds a position {p!r} outside longitudes -180..180 and latitudes -90..90: GeoJSON is "
                       f"WGS84 longitude, latitude (reproject it: ogr2ogr -t_srs EPSG:4326 aoi.geojson yours.shp)")
    return lon, lat


def _bounds(points: list[tuple[float, float]]) -> Bbox:
    """The box around ``points``; across the antimeridian (RFC 7946 splits a polygon there, leaving parts at both
    ends of the longitudes), from its eastern part's west to its western part's east."""
    lons, lats = [p[0] for p in points], [p[1] for p in points]
    west, east = min(lons), max(lons)
    if east - west > 180 and {-180.0, 180.0} <= set(lons):  # parts cut at both ends, not a polygon half a globe wide
        west, east = min(lon for lon in lons if lon >= 0), max(lon for lon in lons if lon < 0)
    if west == east or min(lats) == max(lats):
        raise AoiError(f"aoi= encloses no area (its positions lie on a line); {_ACCEPTED}")
    return west, min(lats), east, max(lats)


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


def crop(grid: Grid, bbox: Bbox, said: str = "bbox=") -> Grid:
    """``grid`` cut to the pixels that ``bbox`` touches, on its own pixel lines (``said``: the parameter it came by,
    for the messages)."""
    if grid.crs is None:
        raise BboxError(f"the scene has no CRS, so {said.strip()} cannot place the box on it; send it georeferenced, or "
                        f"crop it yourself")
    west, south, east, north = bbox
    sides = [bbox] if west < east else [(west, south, 180.0, north), (-180.0, south, east, north)]
    cuts = [cut for side in sides if (cut := _pixels(grid, side, said)) is not None]
    if not cuts:
        west, south, east, north = transform_bounds(grid.crs, "EPSG:4326", *grid.extent(), densify_pts=21)
        raise BboxError(f"{said}{_text(bbox)} does not overlap the scene, which covers {west:.5f},{south:.5f},"
                        f"{east:.5f},{north:.5f} (west,south,east,north in degrees)")
    col0, row0 = min(c[0] for c in cuts), min(c[1] for c in cuts)
    col1, row1 = max(c[2] for c in cuts), max(c[3] for c in cuts)
    cut = Window(col0, row0, col1 - col0, row1 - row0)
    return replace(grid, transform=window_transform(cut, grid.transform), width=col1 - col0, height=row1 - row0)


def _pixels(grid: Grid, bbox: Bbox, said: str) -> tuple[int, int, int, int] | None:
    """``(col0, row0, col1, row1)`` of the scene's pixels the box (west < east) touches; None for none."""
    try:
        left, bottom, right, top = transform_bounds("EPSG:4326", grid.crs, *bbox, densify_pts=21)
    except CRSError as e:
        raise BboxError(f"{said.strip()} cannot be taken to the scene's CRS ({e})") from None
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise BboxError(f"{said}{_text(bbox)} lies where the scene's CRS ({grid.crs}) has no coordinates")
    window = grid.window(left, bottom, right, top)
    col0, row0 = max(0, math.floor(window.col_off)), max(0, math.floor(window.row_off))
    col1 = min(grid.width, math.ceil(window.col_off + window.width))
    row1 = min(grid.height, math.ceil(window.row_off + window.height))
    return (col0, row0, col1, row1) if col0 < col1 and row0 < row1 else None


def _text(bbox: Bbox) -> str:
    return ",".join(f"{v:g}" for v in bbox)

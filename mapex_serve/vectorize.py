"""Mask classes as GeoJSON polygons (RFC 7946), for GIS users who want flood extents as vectors.

GDAL's polygonize (``rasterio.features.shapes``) works scanline by scanline and, given a rasterio
``Band``, reads the file through GDAL's block cache, so that a whole-scene label GeoTIFF is never
read into memory: memory follows the polygons' vertices, plus GDAL's block cache, which keeps up to
``GDAL_CACHEMAX`` (by default 5 % of RAM) of the file: a caller bounds it around the call (20,000 x
20,000 labels: +422 MiB peak RSS with the default cache on a 24 GiB machine, +38 MiB with 16 MiB). Inside
another GDAL environment (a decode worker lives in one), with ``jobs.outputs.block_cache_at_most``: a
nested ``rasterio.Env(GDAL_CACHEMAX=...)`` leaves the process's cache at the smaller size. An array source is copied by GDAL (about 5
bytes a pixel more): it is for masks already in memory.
Simplification and the minimum area are applied in the source CRS, where the pixels are square;
then the polygons are reprojected to WGS84 (longitude, latitude), rounded, oriented (exteriors
counter-clockwise, holes clockwise) and repaired if rounding made one invalid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
import rasterio.features
import rasterio.warp
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import DatasetReaderBase

from mapex_serve.areas import equal_area_xy
from mapex_serve.errors import MapexError

__all__ = ["NotGeoreferencedError", "mask_polygons"]

_WGS84 = CRS.from_epsg(4326)
_CHUNK = 4096  # polygons converted, simplified and reprojected together: vectorised, memory per chunk


class NotGeoreferencedError(MapexError, ValueError):
    """A mask without a CRS: GeoJSON coordinates are WGS84, and pixels cannot be placed on the Earth."""


def mask_polygons(source: np.ndarray | rasterio.Band, *, classes: Sequence[str], crs: CRS | None, transform: Affine,
                  nodata: int = 255, include: Sequence[int] | None = None, simplify: float = 0.0,
                  min_area_m2: float = 0.0, precision: int = 7) -> dict[str, Any]:
    """The connected regions of the mask's classes as a GeoJSON FeatureCollection in WGS84.

    ``source`` is a ``(H, W)`` integer label array, or ``rasterio.band(ds, 1)`` of an open label
    file, which is polygonised from the file without reading it whole. ``include`` limits the class
    indexes (default: all of ``classes``); ``nodata`` pixels are never polygons. One Feature per
    4-connected region, with properties ``class``, ``class_index`` and ``area_m2``: the region's
    area as polygonised (pixels times pixel area, so the features of a class sum to its class area),
    measured before simplification. ``simplify`` is a Douglas-Peucker tolerance in CRS units that
    keeps each polygon valid (shared edges of neighbouring regions are simplified independently);
    regions under ``min_area_m2`` are dropped. Features are ordered by class, then largest first.
    """
    if crs is None:
        raise NotGeoreferencedError("the mask has no CRS, so its polygons cannot be written as GeoJSON (which is "
                                    "WGS84 longitude/latitude): georeference the input file (a CRS and a "
                                    "geotransform) and run it again")
    wanted = _included(classes, include, nodata)
    to_m = equal_area_xy(crs)
    features: list[tuple[tuple, dict[str, Any]]] = []
    for chunk in _chunks(_regions(source, wanted, transform, nodata)):
        values = np.array([v for _, v in chunk], dtype=np.int64)
        geoms = np.array([shapely.geometry.shape(g) for g, _ in chunk], dtype=object)
        areas = shapely.area(shapely.transform(geoms, to_m))
        keep = areas >= min_area_m2
        geoms, values, areas = geoms[keep], values[keep], areas[keep]
        if not len(geoms):
            continue
        if simplify > 0:
            geoms = shapely.simplify(geoms, simplify, preserve_topology=True)
        bounds = shapely.bounds(geoms)
        reprojected = rasterio.warp.transform_geom(crs, _WGS84, [shapely.geometry.mapping(g) for g in geoms])
        for g, value, area, b in zip(reprojected, values, areas, bounds, strict=True):
            out = _clean(shapely.geometry.shape(g), precision)
            if out is None:
                continue
            key = (int(value), -float(area), float(b[0]), -float(b[3]))
            features.append((key, {"type": "Feature", "geometry": shapely.geometry.mapping(out), "properties": {
                "class": classes[int(value)], "class_index": int(value), "area_m2": round(float(area), 3)}}))
    features.sort(key=lambda kf: kf[0])
    return {"type": "FeatureCollection", "features": [f for _, f in features]}


def _included(classes: Sequence[str], include: Sequence[int] | None, nodata: int) -> frozenset[int]:
    """The class indexes to polygonise, checked against ``classes``; ``nodata`` is never one."""
    indexes = range(len(classes)) if include is None else [int(i) for i in include]
    bad = [i for i in indexes if not 0 <= i < len(classes)]
    if bad:
        raise ValueError(f"include names class indexes {bad} outside the {len(classes)} classes "
                         f"{list(classes)} (indexes 0..{len(classes) - 1})")
    return frozenset(i for i in indexes if i != nodata)


def _regions(source: np.ndarray | rasterio.Band, wanted: frozenset[int], transform: Affine,
             nodata: int) -> Iterator[tuple[dict[str, Any], int]]:
    """(GeoJSON-like polygon in CRS coordinates, class index) of each region of a wanted class.

    An array is masked to the wanted classes first (GDAL then skips the rest). A Band is polygonised
    whole and filtered by value: a mask array would be as large as the file, and a mask band would
    need a second file; the regions of unwanted classes cost time and their own vertices only.
    """
    if isinstance(source, rasterio.Band):
        if not isinstance(source.ds, DatasetReaderBase):
            raise TypeError("a Band source must come from a dataset opened for reading: rasterio.band(ds, 1)")
        mask = None
    else:
        source = np.asarray(source)
        if source.ndim != 2:
            raise ValueError(f"the label array must be (rows, columns), got shape {source.shape}")
        if source.dtype not in (np.uint8, np.int16, np.uint16, np.int32):
            source = source.astype(np.int32)
        mask = np.isin(source, list(wanted))
    for geom, value in rasterio.features.shapes(source, mask=mask, connectivity=4, transform=transform):
        if int(value) in wanted:
            yield geom, int(value)


def _chunks(items: Iterable[tuple[dict[str, Any], int]]) -> Iterator[list[tuple[dict[str, Any], int]]]:
    it = iter(items)
    while chunk := list(islice(it, _CHUNK)):
        yield chunk


def _clean(geom: shapely.Geometry, precision: int) -> shapely.Geometry | None:
    """``geom`` rounded to ``precision`` decimals, oriented as RFC 7946 says and valid; None if nothing is left.

    Rounding or reprojection can pinch a ring or make two rings touch along a segment; such a geometry is
    snapped to the same grid by GEOS (``set_precision``, which returns valid output), and if that fails,
    repaired by ``make_valid``, keeping only its polygonal parts.
    """
    rounded = shapely.transform(geom, lambda xy: np.round(xy, precision))
    if not shapely.is_valid(rounded):
        rounded = shapely.transform(shapely.set_precision(geom, 10.0 ** -precision),
                                    lambda xy: np.round(xy, precision))
        if not shapely.is_valid(rounded):
            rounded = _polygonal(shapely.make_valid(rounded))
    rounded = _polygonal(rounded)
    if rounded is None or rounded.is_empty or not rounded.is_valid:
        return None
    return shapely.orient_polygons(rounded, exterior_cw=False)


def _polygonal(geom: shapely.Geometry | None) -> shapely.Geometry | None:
    """The Polygon or MultiPolygon made of ``geom``'s polygonal parts (make_valid can add lines and points)."""
    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, shapely.Polygon | shapely.MultiPolygon):
        return geom
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, shapely.Polygon | shapely.MultiPolygon)]
    polys = [q for p in parts for q in (p.geoms if isinstance(p, shapely.MultiPolygon) else [p])]
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else shapely.union_all(polys)  # the union: parts may share edges

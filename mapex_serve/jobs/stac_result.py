"""A finished job's results as a STAC Item, for the catalogues and tools that read STAC.

A flood map a response team publishes goes into a STAC catalogue (stac-fastapi, pgSTAC) or straight to the tools
that read STAC: GDAL's STACIT driver, odc-stac, stackstac, QGIS. ``GET /jobs/{id}/result?format=stac`` describes
the job's result files as one Item, each fact read from the files themselves:

- its footprint in WGS84 (``geometry``, ``bbox``; none for a scene without a CRS): the part of its ``aoi`` polygon
  the raster covers, where the job had one;
- each raster's grid in the projection extension's fields (``proj:code``, ``proj:shape``, ``proj:transform``,
  ``proj:bbox``), what GDAL needs to read an asset without opening it first;
- the labels' classes in the classification extension's (value, name, the COG's own colour; 255 no data), the
  probabilities' scale and no data in the raster extension's;
- hrefs at this service, which GDAL reads by ranges.

Its ``datetime`` is the scene's acquisition where the job's STAC item, its files' names or their SNAP headers gave it
(the item linked as ``derived_from``; a name that gives the day only, the day as ``start_datetime``/``end_datetime``;
a SNAP header, its scene's start and stop), else the job's finish, which ``created`` always states.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rasterio
import shapely
from rasterio.io import DatasetReaderBase
from rasterio.warp import transform_bounds, transform_geom
from shapely.geometry import mapping, shape

from mapex_serve.aoi import Aoi, parse_aoi
from mapex_serve.jobs.outputs import NODATA_LABEL
from mapex_serve.jobs.store import JobRecord

__all__ = ["STAC_EXTENSIONS", "result_item"]

STAC_EXTENSIONS = {
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "classification": "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
}
_COG = "image/tiff; application=geotiff; profile=cloud-optimized"
_EDGE_POINTS = 21  # a UTM scene's edges are curves in WGS84


def result_item(record: JobRecord, folder: Path, href: Callable[[str], str]) -> dict[str, Any]:
    """The Item of a done job whose files are in ``folder``; ``href(format)``: the URL of its result in a format."""
    summary = record.summary or {}
    outputs = summary.get("outputs", [])
    with rasterio.open(folder / "result.tif") as labels:
        geometry, bbox = _footprint(labels, parse_aoi((record.request.get("options") or {}).get("aoi")))
        assets: dict[str, Any] = {"labels": {
            "href": href("geotiff"), "type": _COG, "roles": ["data"], "title": f"{record.task}: class labels",
            "classification:classes": _classes(labels),
            "raster:bands": [{"nodata": NODATA_LABEL, "data_type": "uint8"}], **_grid(labels)}}
    if "probabilities" in outputs:
        with rasterio.open(folder / "probabilities.tif") as probabilities:
            assets["probabilities"] = {
                "href": href("probabilities"), "type": _COG, "roles": ["data"],
                "title": f"{record.task}: probability of each class, one band a class in the labels' order",
                "raster:bands": [{"nodata": NODATA_LABEL, "data_type": "uint8", "scale": scale, "offset": 0.0}
                                 for scale in probabilities.scales], **_grid(probabilities)}
    if "geojson" in outputs:
        assets["polygons"] = {"href": href("geojson"), "type": "application/geo+json", "roles": ["data"],
                              "title": f"{record.task}: the labels as polygons"}
    assets["summary"] = {"href": href("json"), "type": "application/json", "roles": ["metadata"],
                         "title": "the job's summary: classes and areas, inputs, masked pixels"}
    finished = _iso(record.finished or record.created)
    sources = record.request.get("sources") or {}
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": list(STAC_EXTENSIONS.values()),
        "id": f"{record.task}-{record.id}", "geometry": geometry, **({"bbox": bbox} if bbox else {}),
        "properties": {**_when(sources.get("acquired"), finished), "created": finished,
                       "proj:code": assets["labels"]["proj:code"],
                       "mapex:task": record.task, "mapex:specialist": summary.get("specialist"),
                       "mapex:version": summary.get("version")},
        "links": [{"rel": "self", "href": href("stac"), "type": "application/geo+json"},
                  *({"rel": "derived_from", "href": url, "type": "application/geo+json"}
                    for url in sources.get("item_urls", []))],
        "assets": assets}


def _when(acquired: str | None, finished: str) -> dict[str, str | None]:
    """STAC's ``datetime``: the acquisition's instant; for a span (``start/end``: the day a name gives, a SNAP
    header's start and stop) none, and the span as ``start_datetime`` and ``end_datetime``; the finish where nothing
    says."""
    start, _, end = (acquired or finished).partition("/")
    return {"datetime": None, "start_datetime": start, "end_datetime": end} if end else {"datetime": start}


def _footprint(ds: DatasetReaderBase, aoi: Aoi | None = None) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The raster's outline and bounds in WGS84, its edges densified, or where the job had an ``aoi`` the part of
    the polygon the raster covers (its pixels outside are no data); (None, None) without a CRS."""
    if ds.crs is None:
        return None, None
    west, south, east, north = ds.bounds
    steps = [i / (_EDGE_POINTS - 1) for i in range(_EDGE_POINTS - 1)]  # each edge up to the next one's start
    ring = ([(west + (east - west) * s, north) for s in steps] + [(east, north - (north - south) * s) for s in steps]
            + [(east - (east - west) * s, south) for s in steps] + [(west, south + (north - south) * s) for s in steps])
    outline = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    geometry = transform_geom(ds.crs, "EPSG:4326", outline, antimeridian_cutting=True, precision=7)
    bbox = [round(v, 7) for v in transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=_EDGE_POINTS)]
    if aoi is not None and not (covered := shape(geometry).intersection(shape(aoi.geometry))).is_empty:
        geometry = mapping(shapely.set_precision(covered, 1e-7))
        if bbox[0] <= bbox[2]:  # a box across the antimeridian stays the raster's
            bbox = [round(v, 7) for v in covered.bounds]
    return geometry, bbox


def _code(ds: DatasetReaderBase) -> str | None:
    """``EPSG:32633``, or None for a CRS with no EPSG code (then ``proj:wkt2`` says it) or none at all."""
    epsg = ds.crs.to_epsg() if ds.crs else None
    return f"EPSG:{epsg}" if epsg else None


def _grid(ds: DatasetReaderBase) -> dict[str, Any]:
    """The projection extension's fields of one raster."""
    grid: dict[str, Any] = {"proj:code": _code(ds), "proj:shape": [ds.height, ds.width],
                            "proj:transform": list(ds.transform)[:6], "proj:bbox": list(ds.bounds)}
    if ds.crs is not None and grid["proj:code"] is None:
        grid["proj:wkt2"] = ds.crs.to_wkt()
    return grid


def _classes(ds: DatasetReaderBase) -> list[dict[str, Any]]:
    """The classification extension's classes of the labels COG: its ``classes`` tag (``0=water,1=land``) and its
    colour table, and its no data."""
    text = ds.tags().get("classes") or ds.tags(1).get("classes", "")
    colours = ds.colormap(1) if ds.colorinterp[0].name == "palette" else {}
    classes = []
    for entry in filter(None, text.split(",")):
        value, _, name = entry.partition("=")
        described = {"value": int(value), "name": _machine_name(name), "description": name}
        if int(value) in colours:
            described["color_hint"] = "".join(f"{c:02X}" for c in colours[int(value)][:3])
        classes.append(described)
    return [*classes, {"value": NODATA_LABEL, "name": "no_data", "nodata": True,
                       "description": "no valid input there (nodata, masked or outside the scene)"}]


def _machine_name(name: str) -> str:
    """A class name as the classification extension's ``name`` takes it (letters, digits, - and _)."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", name.strip()) or "class"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

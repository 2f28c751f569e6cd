"""Turning a prediction into what the user asked for: a georeferenced GeoTIFF (COG) or JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.shutil import copy

from mapex_serve.areas import class_areas, known_row_areas_m2
from mapex_serve.errors import MapexError
from mapex_serve.ground import GroundScale
from mapex_serve.predict import Prediction
from mapex_serve.vectorize import mask_polygons

__all__ = [
    "Encoded", "GeoJSONNotAvailableError", "as_geojson", "as_geotiff", "as_json", "choose_format", "encode",
    "grid_report", "inputs_summary", "palette",
]

NODATA_LABEL = 255


def inputs_summary(p: Prediction) -> list[dict[str, Any]]:
    """The bands the model read: as found, mapped to, by which rule, converted how (also the X-Mapex-Inputs header)."""
    return [{"found": i["found"], "band": i["mapped_to"], "rule": i["rule"], "conversions": i.get("conversions", [])}
            for i in p.inputs if i["used"]]


@lru_cache(maxsize=256)
def _crs_string(wkt: str) -> str:
    """``EPSG:32633`` (or the WKT): finding a CRS's code searches PROJ's database, 0.08 ms a request otherwise."""
    return CRS.from_wkt(wkt).to_string()


def grid_report(crs: CRS | None, transform: Affine, width: int, height: int, resampled: list[str],
                mosaicked: list[str] | None = None, ground: GroundScale | None = None) -> dict[str, Any]:
    """The scene grid as answers and job results state it (``mosaicked``: the files read as the tiles of one;
    ``ground``: pixel sizes on the ground, where the model records the one it learned)."""
    return {"crs": _crs_string(crs.to_wkt()) if crs else None, "width": width, "height": height,
            "pixel_size": [abs(transform.a), abs(transform.e)], "resampled": resampled,
            **({"mosaicked": mosaicked} if mosaicked else {}),
            **({"ground_pixel_size": ground.report()} if ground else {})}


def _reading(p: Prediction) -> dict[str, Any]:
    """How the files were read: every band, the grid, resampling, masks."""
    g = p.profile
    return {
        "inputs": p.inputs,
        "grid": grid_report(g["crs"], g["transform"], g["width"], g["height"], p.resampled, p.mosaicked, p.ground),
        "masked_pixels": {"total": sum(p.masked.values()), "by_reason": p.masked},
        **({"ignored_subdatasets": p.ignored} if p.ignored else {}),
        **({"archives": p.archives} if p.archives else {}),
    }


def as_json(p: Prediction, provider: str) -> dict[str, Any]:
    """Mask tasks: class fractions and areas of the valid pixels; class tasks: label, probabilities, tile grid."""
    m = p.route.manifest
    body: dict[str, Any] = {
        "task": m.task, "specialist": m.name, "version": m.version, "bands": p.route.bands,
        "provider": provider, "data": f"model trained on {m.data} data", **_reading(p),
    }
    if p.mask is not None:
        g = p.profile
        rows = known_row_areas_m2(g["crs"], g["transform"], g["height"], g["width"])
        counts, areas = class_areas(p.mask.labels, rows, len(m.classes), nodata=NODATA_LABEL)
        total = max(int(counts.sum()), 1)
        body["classes"] = {
            name: {"pixels": int(n), "fraction": n / total}
            | ({"area_m2": float(areas[i]), "area_km2": float(areas[i]) / 1e6} if areas is not None else {})
            for i, (name, n) in enumerate(zip(m.classes, counts.tolist(), strict=True))
        }
        body["valid_pixels"] = int(counts.sum())
        return body
    c = p.classes
    body["label"] = m.classes[c.label]
    body["probabilities"] = dict(zip(m.classes, c.probabilities.round(6).tolist(), strict=True))
    body["tiles"] = {
        "rows": int(c.tile_labels.shape[0]), "cols": int(c.tile_labels.shape[1]), "stride_px": p.tile_stride,
        "row_px": [list(r) for r in p.tile_rows], "col_px": [list(r) for r in p.tile_cols],
        "labels": [[m.classes[v] if v != NODATA_LABEL else None for v in row] for row in c.tile_labels.tolist()],
    }
    return body


class GeoJSONNotAvailableError(MapexError, ValueError):
    """Polygons were asked of a class task (one answer per tile, not a mask)."""


def as_geojson(p: Prediction, include: list[int] | None = None) -> dict[str, Any]:
    """The mask's classes as WGS84 polygons (RFC 7946): the positive class of a two-class mask, else every class."""
    m = p.route.manifest
    if p.mask is None:
        raise GeoJSONNotAvailableError(f"{m.task} answers one class per tile, not a mask: ask for format=json or "
                                       f"geotiff; GeoJSON polygons are for mask tasks (flood, segmentation)")
    if include is None:
        include = [1] if len(m.classes) == 2 else list(range(len(m.classes)))
    return mask_polygons(p.mask.labels, classes=m.classes, crs=p.profile["crs"], transform=p.profile["transform"],
                         nodata=NODATA_LABEL, include=include)


#: Deflate level of the answer's COG. A model's 4096^2 mask (with its overviews): 0.26-0.28 s and 1.99 MB at 5,
#: 0.64-0.66 s and 1.84 MB at GDAL's default 6; the engine waits for the encoding at the end of a lone scene.
_DEFLATE_LEVEL = 5


def as_geotiff(p: Prediction, threads: int = 1) -> bytes:
    """A COG on the input's grid: the mask, or each tile's class over the pixels the tile stands for.

    ``threads`` compress its blocks (GDAL's ``NUM_THREADS``): a scene split across decode workers
    has that many idle once its parts are done, and a scene's last batch leaves the engine's cores
    idle when no other request is queued (a 4096² mask: 0.106 s on one, 0.060 s on two, the same
    bytes; before its overviews were built here, two threads did not help); one otherwise, the cores
    being the engine's and other requests'.
    """
    m = p.route.manifest
    if p.mask is not None:
        data = p.mask.labels[None]
        transform, (height, width) = p.profile["transform"], data.shape[1:]
    else:
        # Each tile's class over the pixels it stands for (tile_cells), on the input's own grid: exact
        # georeferencing whatever the edge tiles' shift, at a byte a pixel that compresses to almost nothing.
        rows = np.repeat(np.arange(len(p.tile_rows)), [hi - lo for lo, hi in p.tile_rows])
        cols = np.repeat(np.arange(len(p.tile_cols)), [hi - lo for lo, hi in p.tile_cols])
        data = p.classes.tile_labels[np.ix_(rows, cols)][None]
        transform, (height, width) = p.profile["transform"], data.shape[1:]
    # The COG's source is a GDAL in-memory dataset (MEM), not a GeoTIFF: writing one and opening it again had GDAL
    # encode the CRS as GeoKeys and rebuild it from them, a third of a single tile's answer (3.2 -> 2.2 ms of CPU;
    # the same bytes, a 4096² mask as fast). Only the COG copy compresses (compressing twice doubled the cost).
    with rasterio.open("mask", "w", driver="MEM", width=width, height=height, count=1, dtype="uint8",
                       crs=p.profile["crs"], transform=transform, nodata=NODATA_LABEL) as src:
        src.write_colormap(1, {i: tuple(int(v) for v in rgb) + (255,) for i, rgb in enumerate(palette(len(m.classes)))})
        src.set_band_description(1, f"{m.task} class")
        src.update_tags(1, classes=",".join(f"{i}={c}" for i, c in enumerate(m.classes)))
        src.update_tags(specialist=m.name, version=str(m.version), bands=",".join(p.route.bands),
                        inputs=json.dumps(inputs_summary(p)), masked_pixels=json.dumps(p.masked))
        src.write(data)
        if factors := cog_overview_factors(width, height):
            src.build_overviews(factors, Resampling.nearest)
        with MemoryFile() as out:
            copy(src, out.name, driver="COG", compress="deflate", level=_DEFLATE_LEVEL, num_threads=str(threads))
            return out.read()


def cog_overview_factors(width: int, height: int, block: int = 512) -> list[int]:
    """The overviews GDAL's COG driver makes of a ``width`` x ``height`` raster in ``block`` px tiles, as factors:
    halving until both sides fit a block.

    Built in the in-memory source (nearest, as the driver does for a paletted band), the COG copies
    them: left to the driver, it writes them to a compressed temporary file first and reads them
    back. The benchmark's 4096² mask: 0.141 -> 0.106 s on one thread, 0.146 -> 0.060 s on two, the
    same bytes (docs/performance.md, stop 34). Where the driver would halve an odd side down
    (1101 -> 550), GDAL's factors round it up (551): that overview is a pixel wider, the labels the same.
    """
    factors, w, h = [], width, height
    while w > block or h > block:
        w, h = max(w // 2, 1), max(h // 2, 1)
        factors.append(2 ** (len(factors) + 1))
    return factors


def palette(n: int) -> np.ndarray:
    """Colours of the first ``n`` classes (RGB uint8), the same in every answer."""
    return np.array([[31, 119, 180], [44, 160, 44], [188, 189, 34], [255, 127, 14], [214, 39, 40],
                     [140, 86, 75], [23, 190, 207], [148, 103, 189]] * 32, dtype=np.uint8)[:n]


Format = Literal["json", "geotiff", "geojson"]


@dataclass(frozen=True)
class Encoded:
    """A response ready to send: made wherever the prediction lives (the service or a decode worker)."""

    body: bytes
    media_type: str
    headers: dict[str, str]


def choose_format(format: Format | None, accept: str, has_mask: bool) -> Format:
    """``format=`` if given; else masks default to GeoTIFF and classes to JSON, unless Accept says otherwise."""
    if format is not None:
        return format
    return "geotiff" if "image/tiff" in accept or (has_mask and "application/json" not in accept) else "json"


def _json_bytes(body: Any) -> bytes:
    """As Starlette's JSONResponse renders it."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


def encode(p: Prediction, format: Format | None, accept: str, provider: str, threads: int = 1) -> Encoded:
    """The prediction as the GeoTIFF, JSON or GeoJSON the client asked for, with the X-Mapex-* headers (a GeoTIFF
    compressed on ``threads``)."""
    m = p.route.manifest
    headers = {"X-Mapex-Specialist": m.name, "X-Mapex-Version": str(m.version), "X-Mapex-Bands": ",".join(p.route.bands),
               "X-Mapex-Inputs": json.dumps(inputs_summary(p), ensure_ascii=True, separators=(",", ":"))}
    match choose_format(format, accept, p.mask is not None):
        case "geotiff":
            return Encoded(as_geotiff(p, threads), "image/tiff", headers)
        case "geojson":
            return Encoded(_json_bytes(as_geojson(p)), "application/geo+json", headers)
        case _:
            return Encoded(_json_bytes(as_json(p, provider)), "application/json", headers)

"""ESA's EOPF Zarr products (Sentinel-2 Level-1C and Level-2A, ``S2B_MSIL2A_<...>.zarr``), read by GDAL's Zarr driver.

The Copernicus programme moves its products from SAFE to Zarr (the EOPF Sentinel Zarr Samples Service, its STAC at
``stac.core.eopf.eodc.eu``). A product is one Zarr store whose arrays GDAL lists as subdatasets
(``ZARR:"<store>":/measurements/reflectance/r10m/b04``). What of it is read, and why:

- Reflectance lies under ``/measurements/reflectance/r10m``, ``r20m`` and ``r60m``, and every band again at each
  coarser resolution (``b02`` at 10, 20 and 60 m): only each band's finest is read, as the product's STAC item
  offers it. Read all, each band would be given three times.
- Beside them lie angles, masks, quicklooks and the atmospheric correction's inputs; among those a ``dem`` or
  ``aot`` array would be taken for a band by its name. Only the Level-2A scene classification (``scl``) is read,
  the cloud mask every Sentinel-2 file gets.
- Values are uint16 with CF's ``scale_factor`` 0.0001 and ``add_offset`` -0.1 and ``_FillValue`` 0 on each array,
  which GDAL applies as the band's scale, offset and nodata: reflectance, as the service reads any file that says
  its scale.
- The CRS is in no attribute GDAL reads (its ``_CRS``): each array states it in the STAC projection extension's
  ``proj:epsg`` (``proj:code`` in later products). GDAL builds the geotransform from the ``x``/``y`` coordinate
  arrays. Without the CRS the scene would be read in pixels, and its pixel size and its answer's place lost.

The product's name (``MSIL2A``, ``MSIL1C``) says its processing level (``mapex_serve.reflectance``).

Zarr v2 only: GDAL reads Zarr v3's final codec names from 3.11 (the wheel here has 3.10), and no GDAL release reads
the ``scale_offset`` codec of EOPF's newest products (GDAL issue 15170, open).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.io import DatasetReaderBase

__all__ = ["product_arrays", "radar_geometry", "stated_crs", "unreadable"]

#: A reflectance array of a product, and where its resolution and band name are: ``/measurements/reflectance/r20m/b8a``.
_REFLECTANCE = re.compile(r":/measurements/reflectance/r(\d+)m/(b\d[\da]?)$", re.I)
#: The Level-2A scene classification, read at the resolution Sen2Cor made it.
_SCL = re.compile(r":/conditions/mask/l2a_classification/r\d+m/scl$", re.I)


def product_arrays(subdatasets: Sequence[str]) -> list[str] | None:
    """The subdatasets of an EOPF Sentinel-2 product to read: each reflectance band at its finest resolution, then
    the scene classification (``scl``) at its finest; None when the subdatasets are not such a product's."""
    finest: dict[str, tuple[int, str]] = {}
    scl: list[tuple[int, str]] = []
    for sub in subdatasets:
        path = sub.rstrip('"')
        if m := _REFLECTANCE.search(path):
            resolution, band = int(m.group(1)), m.group(2).lower()
            if band not in finest or resolution < finest[band][0]:
                finest[band] = resolution, sub
        elif _SCL.search(path):
            scl.append((int(re.findall(r"/r(\d+)m/", path)[-1]), sub))
    if not finest:
        return None
    chosen = [sub for _, sub in sorted(finest.values())]
    return chosen + [min(scl)[1]] if scl else chosen


def radar_geometry(subdatasets: Sequence[str]) -> bool:
    """Whether the subdatasets are a Sentinel-1 GRD product's (``/S01SIWGRD_<...>_VV/measurements/grd``): digital
    numbers in the radar's geometry, neither calibrated nor on a map grid."""
    return any(sub.rstrip('"').endswith("/measurements/grd") for sub in subdatasets)


def stated_crs(ds: DatasetReaderBase) -> CRS | None:
    """The CRS an array states in the STAC projection extension's fields (``proj:epsg``, ``proj:code``,
    ``proj:wkt2``) where GDAL found none of its own; None where it states none, or none GDAL knows."""
    if ds.crs is not None:
        return None
    for key in ("proj:epsg", "proj:code", "proj:wkt2"):
        value = (ds.get_tag_item(key) or "").strip()
        if not value or value.lower() in ("none", "null"):
            continue
        try:
            return CRS.from_epsg(int(value)) if value.isdigit() else CRS.from_user_input(value)
        except (CRSError, ValueError):
            return None
    return None


def unreadable(name: str, message: str) -> str:
    """Why GDAL could not open a Zarr store or array (its ``message``), and what to send instead."""
    return (f"{name}: GDAL {rasterio.__gdal_version__} cannot read this Zarr store ({message}); the service reads "
            f"Zarr v2 stores with consolidated metadata (.zmetadata), as EOPF's Sentinel-2 Level-1C and Level-2A "
            f"products are. A Zarr v3 store (zarr.json) needs GDAL 3.11 or later, and one whose chunks are sharded or "
            f"scale_offset-coded (EOPF's newest products) a GDAL that reads those codecs: send its bands as GeoTIFFs "
            f"instead (xarray: ds[band].rio.to_raster('b04.tif'))")

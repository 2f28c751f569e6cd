"""FORCE's Level-2 analysis ready data (Frantz's Framework for Operational Radiometric Correction for Environmental
monitoring), the data cubes many European research groups build from Landsat and Sentinel-2.

``force-level2`` writes, a date and sensor a tile, a reflectance file (``20230815_LEVEL2_SEN2A_BOA.tif``; ``TOA``
without atmospheric correction): int16, reflectance x 10000, no data -9999, every band on one grid, described by
FORCE's names. A Sentinel-2 file holds BLUE, GREEN, RED, REDEDGE1-3, BROADNIR, NIR, SWIR1, SWIR2, where FORCE's NIR
is band 8A (865 nm) and BROADNIR band 8 (842 nm); a Landsat file holds BLUE, GREEN, RED, NIR, SWIR1, SWIR2, its NIR
OLI's 865 nm (LND08, LND09) or TM/ETM+'s 835 nm (LND04, LND05, LND07). Each band's ``FORCE`` metadata domain states
its wavelength, scale (10000) and sensor, the file's states ``FORCE_version`` and ``FORCE_product``. Beside it,
``..._QAI.tif`` holds the quality bits: 0 no data, 1-2 the cloud state (1 buffered, 2 opaque, 3 cirrus), 3 cloud
shadow, 4 snow, 5 water, then aerosol, subzero, saturation, illumination and slope flags.

Read the common way, a FORCE Sentinel-2 file's NIR (band 8A) was taken for B08 and its BROADNIR (band 8) left
unread, silently. Here a FORCE file's bands are identified by the wavelength its FORCE metadata states, else by
FORCE's names for its sensor (a file renamed, or its FORCE domain dropped by a copy); a file whose bands include
BROADNIR, a name only FORCE gives, is FORCE's Sentinel-2 naming.
Sources: FORCE's documentation (Level 2 output format), and the metadata its ``write_brick`` sets.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from rasterio.io import DatasetReaderBase

from mapex_serve.bands import ProductBand, band_for_wavelength

__all__ = ["ForceFile", "force_file", "stated_scale"]

#: ``YYYYMMDD_LEVEL2_<sensor>_<product>.tif`` (ENVI: ``.dat``).
_NAME = re.compile(r"^\d{8}_LEVEL2_(?P<sensor>SEN2[A-D]|LND0[4-9])_(?P<product>BOA|TOA|QAI)\.(?:tiff?|dat)$", re.I)
_COMMON = {"BLUE": "B02", "GREEN": "B03", "RED": "B04", "SWIR1": "B11", "SWIR2": "B12"}
_SENTINEL2 = {**_COMMON, "REDEDGE1": "B05", "REDEDGE2": "B06", "REDEDGE3": "B07", "BROADNIR": "B08", "NIR": "B8A"}
#: Landsat's near infrared by sensor: OLI's 865 nm is band 8A's, TM/ETM+'s 835 nm band 8's.
_LANDSAT_NIR = {"LND08": "B8A", "LND09": "B8A", "LND04": "B08", "LND05": "B08", "LND07": "B08"}
_UNIT_NM = {"micrometers": 1000.0, "micrometer": 1000.0, "um": 1000.0, "µm": 1000.0, "nanometers": 1.0, "nm": 1.0}


@dataclass(frozen=True)
class ForceFile:
    """A file FORCE wrote: its sensor (``SEN2A``, ``LND08``; None if unsaid) and product (``BOA``, ``TOA``, ``QAI``)."""

    sensor: str | None
    product: str | None

    def band(self, src: DatasetReaderBase, index: int) -> ProductBand | None:
        """What band ``index`` is: the quality bits of a QAI file, else the band of its stated wavelength, else of
        FORCE's name for it on this sensor; None where neither says."""
        if self.product == "QAI":
            return ProductBand(src.descriptions[index - 1] or "QAI", "FORCE QAI quality bits", quality="FORCE_QAI")
        tags = src.tags(index, ns="FORCE")
        if (nm := _wavelength_nm(tags)) is not None:
            found = f"{tags['Wavelength']} {tags.get('Wavelength_unit', '')}".strip()
            return ProductBand(found, f"FORCE band at {nm:g} nm (its FORCE metadata)", band_for_wavelength(nm))
        name = (src.descriptions[index - 1] or tags.get("Domain") or "").strip().upper()
        if (canonical := self._by_name(name)) is not None:
            return ProductBand(name, f"FORCE band name on {self.sensor or 'Sentinel-2'} ({name}: {canonical})",
                               canonical)
        return None

    def _by_name(self, name: str) -> str | None:
        if self.sensor is None or self.sensor.startswith("SEN2"):
            return _SENTINEL2.get(name)
        return _LANDSAT_NIR.get(self.sensor) if name == "NIR" else _COMMON.get(name)



def force_file(src: DatasetReaderBase, filename: str | None) -> ForceFile | None:
    """The FORCE file ``src`` is, by its FORCE metadata, its name, or FORCE's Sentinel-2 band names; None: another."""
    stated = src.tags(ns="FORCE")
    named = _NAME.match(os.path.basename(filename or ""))
    broad_nir = any((d or "").strip().upper() == "BROADNIR" for d in src.descriptions)
    if not stated.get("FORCE_version") and named is None and not broad_nir:
        return None
    sensor = src.tags(1, ns="FORCE").get("Sensor") or (named and named.group("sensor"))
    product = stated.get("FORCE_product") or (named and named.group("product"))
    return ForceFile(sensor.upper() if sensor else None, product.upper() if product else None)


def stated_scale(src: DatasetReaderBase, index: int) -> float | None:
    """The factor from band ``index``'s stored values to physical ones, 1 / its FORCE ``Scale`` (10000); None where
    no FORCE metadata states one."""
    try:
        stated = float(src.tags(index, ns="FORCE").get("Scale", ""))
    except ValueError:
        return None
    return 1.0 / stated if stated > 0 else None


def _wavelength_nm(tags: dict[str, str]) -> float | None:
    try:
        value = float(tags.get("Wavelength", ""))
    except ValueError:
        return None
    factor = _UNIT_NM.get(tags.get("Wavelength_unit", "micrometers").strip().lower())
    return value * factor if factor is not None and value > 0 else None

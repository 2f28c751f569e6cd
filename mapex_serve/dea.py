"""Digital Earth Australia's analysis ready data: Geoscience Australia's Collection 3 Sentinel-2 and Landsat.

DEA names its measurements by colour (``nbart_red``; ``nbar_`` without the terrain correction) and counts the
short-wave infrared bands across its sensors: on Sentinel-2 (``ga_s2am_ard_3``) ``nbart_swir_2`` (alias ``swir_2``,
``swir2``) is B11 at 1610 nm and ``nbart_swir_3`` is B12, where on Landsat (``ga_ls8c_ard_3``) ``nbart_swir_1`` is
1610 nm and ``nbart_swir_2`` 2200 nm, as everyone else counts. Read the common way, a DEA Sentinel-2 file's B11 was
taken for B12. Its Fmask (``oa_fmask``, alias ``fmask``) holds Fmask's classes (0 no data, 1 valid, 2 cloud, 3 shadow,
4 snow, 5 water), not HLS's Fmask bits under the same name: read as bits, every valid pixel was masked as cirrus.

Sources: DEA's product definitions (their measurements, aliases and ``flags_definition``) and the file layout
eodatasets3 writes (``ga_s2am_nbart_3-2-1_53JQJ_2020-10-31_final_band11.tif``, ``..._final_8a.tif``,
``ga_s2am_oa_3-2-1_..._final_fmask.tif``). DEA stores reflectance x 10000 (int16, no data -999), the scale the service
takes for integer reflectance that states none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

from mapex_serve.bands import OLI_WAVELENGTHS_NM, TM_ETM_WAVELENGTHS_NM, ProductBand, band_for_wavelength
from mapex_serve.errors import MapexError

__all__ = ["DeaNameError", "DeaProduct", "dea_product", "is_dea_name", "measurement"]

Sensor = Literal["Sentinel-2", "Landsat"]

#: A product or file name: ``ga_s2am_ard_3``, ``ga_ls8c_nbart_3-2-1_...``; Collection 2's ``s2a_ard_granule``.
_PRODUCT = re.compile(r"(?:^|[/_.])(?:ga_(s2[a-c]m|ls[5789][a-z])_|(s2[ab])_ard_granule)", re.I)
_LANDSAT_WAVELENGTHS = {"ls5": TM_ETM_WAVELENGTHS_NM, "ls7": TM_ETM_WAVELENGTHS_NM, "ls8": OLI_WAVELENGTHS_NM,
                        "ls9": OLI_WAVELENGTHS_NM}
#: The band file's measurement: ``..._final_band11.tif``, ``..._final_8a.tif``, ``..._oa_..._final_fmask.tif``.
_FILE = re.compile(r"^ga_\w+?_(?:nbart|nbar|oa)_[\d-]+_\w+?_[\d-]+_(?:final|interim|nrt|provisional)_([\w-]+)\.tiff?$",
                   re.I)
_PREFIX = re.compile(r"^(?:nbart|nbar)_", re.I)

#: Sentinel-2 measurements (prefix removed) and their aliases.
_S2 = {"coastal_aerosol": "B01", "blue": "B02", "green": "B03", "red": "B04", "red_edge_1": "B05",
       "red_edge_2": "B06", "red_edge_3": "B07", "nir_1": "B08", "nir_2": "B8A", "swir_2": "B11", "swir_3": "B12",
       "swir2": "B11", "common_nir": "B08", "common_swir_1": "B11", "common_swir_2": "B12", "8a": "B8A",
       "band8a": "B8A", **{f"band{n:02d}": f"B{n:02d}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 11, 12)}}
#: Landsat measurements by their sensor's band number (near infrared is 865 nm on OLI, 835 nm on TM and ETM+).
_LANDSAT = {"blue": 2, "green": 3, "red": 4, "nir": 5, "swir_1": 6, "swir1": 6, "swir_2": 7, "swir2": 7,
            "coastal_aerosol": 1}
_TM_NUMBER = {2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 7}  # OLI's number -> TM/ETM+'s for the same colour
#: Names only DEA gives, which say which sensor a file is without its product name.
_S2_ONLY = {"swir_3", "nir_1", "nir_2", "red_edge_1", "red_edge_2", "red_edge_3", "common_nir", "common_swir_1",
            "common_swir_2"}
_SAME_ON_BOTH = {"coastal_aerosol", "blue", "green", "red"}  # Landsat 5-7 have no coastal band
_LANDSAT_ONLY = {"nir", "swir_1", "panchromatic"}
#: Quality layers (``mapex_serve.bands.QUALITY_LAYERS``) by measurement, alias and file-name form.
_QUALITY = {"oa_fmask": "DEA_FMASK", "fmask": "DEA_FMASK", "oa_s2cloudless_mask": "DEA_S2CLOUDLESS",
            "s2cloudless_mask": "DEA_S2CLOUDLESS", "s2cloudless-mask": "DEA_S2CLOUDLESS",
            "oa_s2cloudless_prob": "DEA_S2CLOUDLESS_PROB", "s2cloudless_prob": "DEA_S2CLOUDLESS_PROB",
            "s2cloudless-prob": "DEA_S2CLOUDLESS_PROB",
            **{f"{oa}{kind}{sep}contiguity": "DEA_CONTIGUITY" for oa in ("", "oa_") for kind in ("nbart", "nbar")
               for sep in "_-"}}


class DeaNameError(MapexError, ValueError):
    """A DEA measurement whose band depends on the sensor, in a file that does not say which."""


@dataclass(frozen=True)
class DeaProduct:
    """A DEA product a file belongs to: its sensor where known, and what said so."""

    sensor: Sensor | None
    told_by: str
    #: Landsat only: the band numbers' central wavelengths (nm) of its sensor, None where the mission is not known.
    landsat_nm: dict[int, float] | None = None

    def band_of_file(self, file_name: str) -> ProductBand | None:
        """The band a DEA band file holds, by its name (``..._final_band11.tif``); None for any other file name."""
        if (m := _FILE.match(PurePath(file_name).name)) is None:
            return None
        unread = ProductBand(m.group(1), f"Digital Earth Australia band file ({self.told_by}): not a band the model "
                                         f"reads")  # its angles, terrain shadow, time delta
        return self.band(m.group(1)) or unread

    def band(self, name: str) -> ProductBand | None:
        """The band DEA means by ``name`` (a measurement or an alias); None where it is not DEA's. Raises
        DeaNameError where it depends on a sensor the file does not tell."""
        word = name.strip().lower()
        rule = f"Digital Earth Australia {self.sensor or 'ARD'} measurement ({self.told_by})"
        if word in _QUALITY:
            return ProductBand(name, rule, quality=_QUALITY[word])
        word = measurement(word)
        if self.sensor == "Landsat":
            return self._landsat(name, word, rule)
        if self.sensor == "Sentinel-2" or word in _SAME_ON_BOTH:
            return ProductBand(name, f"{rule}: {_S2[word]}", _S2[word]) if word in _S2 else None
        if word in ("swir_2", "swir2") and _PREFIX.match(name.strip()):
            raise DeaNameError(
                f"{name} is a Digital Earth Australia measurement whose band depends on the satellite: B11 (1610 nm) "
                f"on Sentinel-2, 2200 nm (B12) on Landsat; the file does not say which: keep the product's name in "
                f"the file name (ga_s2am_nbart_..., ga_ls8c_nbart_...), or pass bands= with the bands' names "
                f"(bands=B11,B12)")
        return None

    def _landsat(self, name: str, word: str, rule: str) -> ProductBand | None:
        number = int(word[4:]) if re.fullmatch(r"band\d\d", word) else _LANDSAT.get(word)
        if number is None:
            return None
        if self.landsat_nm is None:
            if word in _SAME_ON_BOTH:
                return ProductBand(name, f"{rule}: {_S2[word]}", _S2[word])
            raise DeaNameError(
                f"{name} is a Digital Earth Australia Landsat measurement whose wavelength depends on the satellite "
                f"(near infrared: 865 nm on Landsat 8-9, 835 nm on Landsat 5-7); keep the product's name in the file "
                f"name (ga_ls8c_nbart_..., ga_ls7e_nbart_...), or pass bands= with the bands' names")
        if self.landsat_nm is TM_ETM_WAVELENGTHS_NM and not word.startswith("band"):
            number = _TM_NUMBER.get(number)
        nm = self.landsat_nm.get(number) if number else None
        canonical = band_for_wavelength(nm) if nm else None
        if canonical is None:
            return ProductBand(name, f"{rule}: not a band the model knows")
        return ProductBand(name, f"{rule}: band {number}, {nm:g} nm within {canonical}", canonical)


def measurement(name: str) -> str:
    """``name`` without DEA's product prefix: ``nbart_red`` and ``nbar_red`` are both ``red``."""
    return _PREFIX.sub("", name.strip().lower())


def is_dea_name(name: str) -> bool:
    """True for a name only DEA gives (``nbart_red``, ``oa_fmask``), whatever its sensor."""
    word = name.strip().lower()
    return word in _QUALITY and word != "fmask" or bool(_PREFIX.match(word))


def dea_product(where: Sequence[str | None], names: Sequence[str | None]) -> DeaProduct | None:
    """The DEA product a file is, by the product's name in ``where`` (its file name, path, URL or STAC collection),
    else by its band ``names`` (``nbart_swir_3`` or ``swir_3`` only on Sentinel-2, ``nbart_swir_1`` only on
    Landsat); None for a file with neither."""
    for text in where:
        if text and (m := _PRODUCT.search(text)):
            product = (m.group(1) or m.group(2)).lower()
            told_by = f"{m.group(0).strip('/_.')} in its name"
            if product.startswith("s2"):
                return DeaProduct("Sentinel-2", told_by)
            return DeaProduct("Landsat", told_by, _LANDSAT_WAVELENGTHS[product[:3]])
    words = [(n or "").strip().lower() for n in names]
    prefixed = {measurement(w) for w in words if _PREFIX.match(w)}
    s2 = prefixed & _S2_ONLY or {w for w in words if w in ("swir_3", "nir_1", "nir_2")}
    landsat = prefixed & _LANDSAT_ONLY
    if s2 and not landsat:
        return DeaProduct("Sentinel-2", f"its band names ({', '.join(sorted(s2))}: DEA's Sentinel-2 only)")
    if landsat and not s2:
        return DeaProduct("Landsat", f"its band names ({', '.join(sorted(landsat))}: DEA's Landsat only)")
    if prefixed or any(w in _QUALITY and w != "fmask" for w in words):
        return DeaProduct(None, "its band names (DEA's measurements)")
    return None

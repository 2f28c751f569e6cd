"""Planet's PlanetScope and SkySat files: which asset a file is, which band is which, and what its values are.

Planet names every file it delivers after its item and asset (``20230912_175450_00_2439_3B_AnalyticMS_SR_8b.tif``,
``..._3B_udm2.tif``; the Orders API adds ``_harmonized`` and ``_clip``) and states the bands only in its
documentation (docs.planet.com, PSScene assets): the files may carry the band names as descriptions or nothing at
all, and GIS users index them by position. Two assets look alike to GDAL and differ by a factor of about three:

- the surface reflectance assets (``_SR``) hold reflectance x 10000 and carry the inputs of their atmospheric
  correction as JSON in ``TIFFTAG_IMAGEDESCRIPTION``;
- the analytic assets without ``_SR`` hold at-sensor radiance x 100, which read as reflectance x 10000 looks
  plausible and is wrong, so they are refused with the way to reflectance.

Planet's basemaps come as quads (``1465-1146_quad.tif``, as the Basemaps API names its downloads, or with the
mosaic's name before it: ``planet_medres_normalized_analytic_2021-06_mosaic_1465-1146_quad.tif``, NICFI's tropical
basemaps): the surface reflectance ones 16-bit blue, green, red, near infrared and alpha, the visual ones 8-bit red,
green, blue and alpha; no band names.

The usable data mask (UDM2, 8 bands of 0/1 a class) masks cloud, cloud shadow and UDM2.0's heavy haze; snow and
light haze stay valid, as Planet rates them usable (and as Sentinel-2's SCL keeps snow). Planet's PlanetScope bands
map to the Sentinel-2 bands whose passbands they match; green I (513-549 nm) and yellow (600-620 nm) match none.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from rasterio.io import DatasetReaderBase

from mapex_serve.bands import ProductBand

__all__ = ["PlanetProduct", "planet_product"]

Kind = Literal["surface reflectance", "radiance", "visual", "udm2", "udm"]

#: PSScene (``20230912_175450_00_2439_3B_...``; before 2019 without the subsecond field) and SkySat
#: (``20210913_211131_ssc15_u0001_...``, ``..._ssc3d1_...``) file names, and the ``_clip`` the Orders API appends.
_ITEM = re.compile(r"^\d{8}_\d{6}_(?:\d{2}_[0-9a-f]{4}_[13]B|[0-9a-f]{4}_[13]B|ssc\d+(?:d\d)?_u\d{4})_(?P<asset>.+?)"
                   r"(?:_clip)?\.tiff?$", re.I)
_COMPOSITE_UDM2 = re.compile(r"(?:\w+_)?udm2(?:_clip)?\.tiff?", re.I)
_QUAD = re.compile(r"^(?:.+_)?\d+-\d+_quad\.tiff?$", re.I)
_ANALYTIC = re.compile(r"^analytic(?:ms)?(?P<sr>_sr)?(?:_[358]b)?(?P<harmonized>_harmonized)?$", re.I)
_ASSET_KINDS: dict[str, Kind] = {"visual": "visual", "udm2": "udm2", "analyticms_dn_udm": "udm", "dn_udm": "udm",
                                 "udm": "udm"}

#: Band names by position where a file carries none (Planet's asset tables; the radiance assets' order is the
#: surface reflectance ones').
_BY_POSITION: dict[tuple[Kind, int], tuple[str, ...]] = {
    ("surface reflectance", 3): ("red", "green", "blue"),  # ortho_analytic_3b
    ("surface reflectance", 4): ("blue", "green", "red", "nir"),
    ("surface reflectance", 5): ("blue", "green", "red", "nir", "alpha"),  # a basemap quad
    ("surface reflectance", 8): ("coastal_blue", "blue", "green_i", "green", "yellow", "red", "rededge", "nir"),
    ("visual", 3): ("red", "green", "blue"),
    ("visual", 4): ("red", "green", "blue", "alpha"),
    ("udm2", 8): ("clear", "snow", "shadow", "haze_light", "haze_heavy", "cloud", "confidence", "udm1"),
    ("udm", 1): ("udm",),
}
_SPECTRAL: dict[str, tuple[str | None, str]] = {
    "coastal_blue": ("B01", "coastal blue"), "blue": ("B02", "blue"), "green_i": (None, "green I, 513-549 nm"),
    "green": ("B03", "green"), "yellow": (None, "yellow, 600-620 nm"), "red": ("B04", "red"),
    "rededge": ("B05", "red edge, 697-713 nm"), "nir": ("B08", "near infrared"),
}
#: UDM2 bands -> (quality layer in ``mapex_serve.bands``, or None with why the band is not read).
_UDM2: dict[str, tuple[str | None, str]] = {
    "clear": (None, "masked by its cloud, shadow and heavy haze bands instead"),
    "snow": (None, "snow stays valid"),
    "shadow": ("UDM2_SHADOW", "cloud shadow"),
    "haze_light": (None, "light haze (all haze since UDM2.1) stays valid"),
    "haze_heavy": ("UDM2_HEAVY_HAZE", "heavy haze (UDM2.0)"),
    "cloud": ("UDM2_CLOUD", "cloud"),
    "confidence": (None, "a confidence, not a class"),
    "udm1": (None, "the legacy mask's bits; the image's own no-data marks its blackfill"),
    "udm": ("PLANET_UDM", "legacy unusable data mask bits"),
}


@dataclass(frozen=True)
class PlanetProduct:
    """The Planet asset a file is, and what said so."""

    kind: Kind
    #: What told the asset: the file name, or the surface reflectance JSON.
    told_by: str
    harmonized: bool = False
    basemap: bool = False  # a basemap's quad, not a scene's asset

    @property
    def what(self) -> str:
        extra = ", harmonized to Sentinel-2" if self.harmonized else ""
        return f"Planet {self.kind} {'basemap quad' if self.basemap else 'asset'}{extra} ({self.told_by})"

    @property
    def reflectance_to_order(self) -> str:
        """What to order from Planet instead, for the surface reflectance the specialists take."""
        if self.basemap:
            return ("a surface reflectance basemap's quads (NICFI's planet_medres_normalized_analytic_..._mosaic, or "
                    "a Select Basemap of surface reflectance)")
        return "the surface reflectance asset (ortho_analytic_4b_sr or ortho_analytic_8b_sr: ..._AnalyticMS_SR.tif)"

    def band(self, src: DatasetReaderBase, index: int) -> ProductBand | None:
        """Band ``index`` by its description in Planet's words, else by its position; None when neither names it."""
        description = src.descriptions[index - 1]
        by_position = _BY_POSITION.get((self.kind if self.kind != "radiance" else "surface reflectance", src.count))
        if description:
            name, where = _planet_word(description), "description"
        elif by_position:
            name, where = by_position[index - 1], f"band {index} of {src.count} in Planet's asset table"
        else:
            return None
        rule = f"{self.what}: {where}"
        if self.kind in ("udm2", "udm"):
            if name not in _UDM2:
                return None
            quality, meaning = _UDM2[name]
            return ProductBand(description or name, f"{rule} ({meaning})", quality=quality)
        if name == "alpha":
            return ProductBand(name, f"{rule} (alpha: 0 is no data)", quality="ALPHA")
        if name not in _SPECTRAL:
            return None
        canonical, meaning = _SPECTRAL[name]
        tail = meaning if canonical else f"{meaning}: within no Sentinel-2 band the model knows"
        return ProductBand(description or name, f"{rule} ({tail})", canonical)


def _planet_word(text: str) -> str:
    """``'Coastal Blue'``, ``'green_i'``, ``'Red Edge'`` -> Planet's asset-table name."""
    word = "_".join(text.strip().lower().replace("-", " ").split())
    return {"red_edge": "rededge", "near_infrared": "nir", "coastal": "coastal_blue"}.get(word, word)


def _surface_reflectance_json(src: DatasetReaderBase) -> bool:
    """True when the file carries Planet's surface reflectance metadata: ``atmospheric_correction`` as JSON in
    ``TIFFTAG_IMAGEDESCRIPTION``."""
    text = src.tags().get("TIFFTAG_IMAGEDESCRIPTION", "")
    if not text.lstrip().startswith("{") or "atmospheric_correction" not in text:
        return False
    try:
        return isinstance(json.loads(text).get("atmospheric_correction"), dict)
    except (ValueError, AttributeError):
        return False


def planet_product(src: DatasetReaderBase, filename: str | None) -> PlanetProduct | None:
    """The Planet asset ``src`` is, by its file name, else by its surface reflectance JSON; None for other files."""
    name = (filename or "").rsplit("/", 1)[-1]
    if name[:8].isdigit() and (m := _ITEM.match(name)):
        asset = m.group("asset").lower()
        told_by = "by its file name"
        if a := _ANALYTIC.match(asset):
            kind: Kind = "surface reflectance" if a.group("sr") else "radiance"
            return PlanetProduct(kind, told_by, harmonized=bool(a.group("harmonized")))
        if asset in _ASSET_KINDS:
            return PlanetProduct(_ASSET_KINDS[asset], told_by)
    if _QUAD.match(name) and src.count in (4, 5):
        kind = "visual" if src.dtypes[0] == "uint8" else "surface reflectance"
        return PlanetProduct(kind, "by its file name", basemap=True)
    if src.count == 8 and _COMPOSITE_UDM2.fullmatch(name):  # the Orders API composite tool's
        return PlanetProduct("udm2", "by its file name")
    if _surface_reflectance_json(src):
        return PlanetProduct("surface reflectance", "by the atmospheric_correction JSON in its TIFFTAG_IMAGEDESCRIPTION")
    if src.count == 8 and [_planet_word(d or "") for d in src.descriptions] == list(_BY_POSITION[("udm2", 8)]):
        return PlanetProduct("udm2", "by its band descriptions")
    return None

"""Units, never guessed silently: from stored values to the physical units the model was trained on.

Each canonical band has one unit (``bands.Band.unit``: reflectance 0..1, sigma0 in dB, metres).
What a file's values are comes from, in order: the caller (``units=``, ``scale=``, ``offset=``),
then metadata that states it (GDAL scale/offset, ``scale_factor``/``add_offset`` tags, Sentinel-2
L2A ``BOA_QUANTIFICATION_VALUE``/``BOA_ADD_OFFSET``, a SNAP band name, GDAL's ``UNITTYPE`` or a
``units`` tag, a Planet surface reflectance asset), and only then the band table's convention (Sentinel-2 L2A integers are reflectance
x 10000, Sentinel-1 is dB, a DEM is metres). Whatever was assumed is checked against the values
(:func:`check_plausible`): values that do not fit the assumption get a 422 that says what was seen
and which parameter fixes it, instead of an answer in the wrong units.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from rasterio.enums import MaskFlags
from rasterio.io import DatasetReaderBase

from mapex_serve.aoi import Aoi, AoiError, Bbox, parse_aoi, parse_bbox
from mapex_serve.bands import BANDS, QUALITY_LAYERS, canonical_or_none, quality_layer
from mapex_serve.dimap import SnapBand
from mapex_serve.earth_engine import catalogue_id
from mapex_serve.errors import MapexError
from mapex_serve.force import stated_scale as force_scale_of
from mapex_serve.planet import PlanetProduct
from mapex_serve.theia import reflectance_product as theia_product
from mapex_serve.thresholds import MaskThresholdError, check_cut, layers_text

__all__ = [
    "SAFE_BAND_FILE",
    "ZERO_IS_NODATA",
    "BackscatterChoice",
    "Conversion",
    "ImplausibleValuesError",
    "PixelSizeChoice",
    "ReflectanceChoice",
    "UnitError",
    "UnitOverrides",
    "ValueStats",
    "check_plausible",
    "check_stated_units",
    "conversion_for",
    "landsat_level1",
    "parse_mask_threshold",
    "parse_unit",
    "zero_is_nodata",
]

StatedUnit = Literal["reflectance", "dB", "linear", "amplitude", "m", "ft"]


class UnitError(MapexError, ValueError):
    """A unit, scale or offset that cannot apply to the band it was given for, or cannot be read."""


class ImplausibleValuesError(MapexError, ValueError):
    """Values that do not fit the unit they were taken in: the caller must say what they are."""


_UNIT_WORDS: dict[str, StatedUnit] = {
    "db": "dB", "decibel": "dB", "decibels": "dB", "intensity_db": "dB",  # the last: SNAP's unit of Sigma0_VV_db
    "linear": "linear", "power": "linear", "intensity": "linear", "linear power": "linear",
    "amplitude": "amplitude",
    "reflectance": "reflectance", "1": "reflectance", "unitless": "reflectance", "dimensionless": "reflectance",
    "m": "m", "metre": "m", "metres": "m", "meter": "m", "meters": "m",
    "ft": "ft", "foot": "ft", "feet": "ft", "us survey foot": "ft",
}
#: Units a band's values may be stated in, by the band's own unit.
_COMPATIBLE: dict[str, tuple[StatedUnit, ...]] = {
    "reflectance": ("reflectance",), "dB": ("dB", "linear", "amplitude"), "m": ("m", "ft"),
}
_ASSUMED_SCALE = "reflectance x 10000"
#: A band file as a Sentinel-2 SAFE names it (L2A ``T33UUP_20240830T100559_B04_10m.jp2``, L1C without the
#: resolution; the Planetary Computer's COGs keep the name as ``.tif``) and the day from which every product carries
#: processing baseline 04.00's reflectance offset of -1000 (-0.1); products sensed earlier carry it only if
#: reprocessed (Collection-1), which the file cannot say, but the product's name in its path can (``..._N0500_...``).
SAFE_BAND_FILE = re.compile(r"^T\d{2}[A-Z]{3}_(?P<date>\d{8})T\d{6}_B[0-9A]{2}(?P<resolution>_\d{2}m)?\.(?:jp2|tiff?)$",
                            re.I)
_SAFE_PRODUCT = re.compile(r"\bS2[A-D]_MSIL(?:1C|2A)_\d{8}T\d{6}_N(\d{2})(\d{2})_", re.I)
_BASELINE_04_FROM = "20220125"
#: Sentinel Hub's EO Browser (and the Copernicus Browser's) download of a raw Sentinel-2 band,
#: ``2023-04-23-00_00_2023-04-23-23_59_Sentinel-2_L2A_B04_(Raw).tiff``: as a 32-bit float TIFF it holds reflectance
#: 0..1; as an 8- or 16-bit one, integers the layer's script chose, which the file does not say. Sentinel Hub's own
#: FAQ: 0..1 stretched to 0..255 or 0..65535 ("1 -> 65535"), unless the script returns digital numbers (x 10000).
#: Such a download's name begins with its time range (``2023-04-23-00:00_2023-04-23-23:59_``); parentheses and colons
#: come as ``_`` in an upload's name (``..._00_00_..._B04__Raw_.tiff``), as the service keeps it.
_SENTINEL_HUB = r"\d{4}-\d\d-\d\d-\d\d[_:]\d\d_\d{4}-\d\d-\d\d-\d\d[_:]\d\d_Sentinel-2_L(?:1C|2A)_"
_SENTINEL_HUB_RAW = re.compile(_SENTINEL_HUB + r"B[0-9A]{2}_[(_]Raw[)_](?:[ _]?[(_]\d+[)_])?\.tiff?$", re.I)
#: Its download of any other layer (``..._Sentinel-2_L2A_True_color.tiff``, ``_NDVI``, ``_False_color_(urban)``): a
#: rendering of the bands (True color is 2.5 x reflectance), not their reflectance.
_SENTINEL_HUB_LAYER = re.compile(_SENTINEL_HUB + r"(?P<layer>.+?)\.tiff?$", re.I)
#: A Landsat Collection 2 Level-1 band file (``LC09_L1TP_044034_20220111_20220123_02_T1_B4.TIF``): digital numbers
#: of top-of-atmosphere radiance, not the Level-2 surface reflectance whose scale the 422 for Landsat integers names.
_LANDSAT_LEVEL1 = re.compile(r"^L[COTEM]0\d_L1(?:TP|GT|GS)_", re.I)
#: Earth Engine names a Landsat image by its scene id (``LC08_044034_20220111``) in each of its collections, and the
#: bands of its Level-1 and TOA ones ``B4``, of its Level-2 ones ``SR_B4``.
_EE_LANDSAT_IMAGE = re.compile(r"^L[COTE]0\d_\d{6}_\d{8}(?![0-9])", re.I)
_LEVEL1_BAND = re.compile(r"B\d{1,2}", re.I)
#: A Landsat Collection 2 Level-2 surface reflectance band's name, which no other product gives: USGS's file
#: (``LC09_L2SP_044034_20220111_20220113_02_T1_SR_B4.TIF``) and Earth Engine's band (``SR_B4`` of
#: ``LANDSAT/LC09/C02/T1_L2``). Its integers are reflectance by the product's fixed scale and offset (USGS's Landsat
#: 8-9 and 4-7 Collection 2 Level-2 Science Product Guides, Earth Engine's catalogue), which no tag of the file states.
_LANDSAT_LEVEL2_SR = re.compile(r"SR_B\d+", re.I)
_LANDSAT_LEVEL2_SCALE, _LANDSAT_LEVEL2_OFFSET = 0.0000275, -0.2
_CONVERSION_WORDS = {"linear": "10·log10 (linear power -> dB)", "amplitude": "20·log10 (amplitude -> dB)",
                     "ft": "x 0.3048 (feet -> m)"}


def parse_unit(word: str) -> StatedUnit | None:
    """``'dB'``, ``'linear'``, ``'Metres'`` ... as a stated unit, or None for words that state none."""
    return _UNIT_WORDS.get(" ".join(str(word).strip().lower().split()))


#: ``pixel_size=``: read a scene whose pixels are not the model's size resampled to the model's, or as it is.
PixelSizeChoice = Literal["model", "native"]
#: ``reflectance=``: run a Sentinel-2 file of the other processing level than the model learned as it is.
ReflectanceChoice = Literal["as-is"]
#: ``backscatter=``: run a Sentinel-1 file of the other backscatter (sigma0, gamma0) than the model learned as it is.
BackscatterChoice = Literal["as-is"]


@dataclass(frozen=True)
class UnitOverrides:
    """What the caller says about the values: ``units=``, ``scale=``, ``offset=``, each for all bands or per band;
    ``pixel_size=``, how to read pixels of another size than the model's (``mapex_serve.ground``);
    ``reflectance=``, whether to read reflectance of another processing level (``mapex_serve.reflectance``);
    ``backscatter=``, whether to read the other radar backscatter (``mapex_serve.backscatter``); ``bbox=`` or
    ``aoi=``, the part of the scene to read (``mapex_serve.aoi``); and ``mask_threshold=``, where cloud probabilities
    and clear scores mask (``mapex_serve.thresholds``).

    Keys are canonical band names, or None for "every band the value applies to".
    """

    units: Mapping[str | None, StatedUnit] = field(default_factory=dict)
    scale: Mapping[str | None, float] = field(default_factory=dict)
    offset: Mapping[str | None, float] = field(default_factory=dict)
    pixel_size: PixelSizeChoice | None = None
    reflectance: ReflectanceChoice | None = None
    backscatter: BackscatterChoice | None = None
    bbox: Bbox | None = None
    #: Where continuous quality layers mask (``mapex_serve.thresholds``): by layer name, None for the request's one.
    mask_threshold: Mapping[str | None, float] = field(default_factory=dict)
    #: A polygon whose outside is masked, read by the box around it (``mapex_serve.aoi``).
    aoi: Aoi | None = None

    @classmethod
    def parse(cls, units: str | None = None, scale: str | None = None, offset: str | None = None,
              pixel_size: PixelSizeChoice | None = None, reflectance: ReflectanceChoice | None = None,
              backscatter: BackscatterChoice | None = None, bbox: str | None = None,
              mask_threshold: str | None = None, aoi: str | Mapping[str, Any] | None = None) -> UnitOverrides:
        """From query strings: ``linear`` (all bands) or ``VV:linear,VH:dB``; ``0.0001`` or ``B04:0.0001``;
        ``bbox=west,south,east,north``; ``mask_threshold=0.5`` or ``cs_cdf:0.5``; ``aoi=`` GeoJSON."""
        if bbox and aoi:
            raise AoiError("give bbox= or aoi=, not both: aoi= reads the box around its polygon")
        return cls(_per_band(units, "units", _unit_value), _per_band(scale, "scale", _float_value),
                   _per_band(offset, "offset", _float_value), pixel_size, reflectance, backscatter, parse_bbox(bbox),
                   parse_mask_threshold(mask_threshold), parse_aoi(aoi))

    def get(self, which: Literal["units", "scale", "offset"], canonical: str) -> object | None:
        table = getattr(self, which)
        return table.get(canonical, table.get(None))


def _unit_value(text: str) -> StatedUnit:
    unit = parse_unit(text)
    if unit is None:
        raise UnitError(f"unknown unit {text!r} in units=; accepted: dB, linear (power), amplitude, reflectance (0..1), "
                        f"m, ft")
    return unit


def _float_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UnitError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise UnitError(f"{text!r} is not a finite number")
    return value


def parse_mask_threshold(text: str | None) -> dict[str | None, float]:
    """``mask_threshold=0.5`` (the request's one cloud probability or clear score layer) or ``cs_cdf:0.5,CLP:80`` as
    ``{None: 0.5}`` or ``{"CS_CDF": 0.5, "CLP": 80.0}`` (``mapex_serve.thresholds``)."""
    stated = _per_band(text, "mask_threshold", _float_value, _layer_key)
    for key, value in stated.items():
        if key is not None:
            check_cut(QUALITY_LAYERS[key], value)
    return stated


def _band_key(name: str, what: str, text: str) -> str:
    if (key := canonical_or_none(name)) is None:
        raise UnitError(f"{what}={text}: {name!r} is not a band name; use {what}=VALUE for every band or "
                        f"{what}=BAND:VALUE,... (e.g. {what}=VV:{'linear' if what == 'units' else '1'})")
    return key


def _layer_key(name: str, what: str, text: str) -> str:
    if (layer := quality_layer(name)) is None or layer.threshold is None:
        raise MaskThresholdError(f"{what}={text}: {name!r} is no cloud probability or clear score layer; accepted: "
                                 f"{layers_text()}")
    return layer.name


def _per_band(text: str | None, what: str, value_of, key_of=_band_key) -> dict:  # noqa: ANN001 - parser callables
    """``VALUE`` (key None: every band, or layer, it applies to) or ``KEY:VALUE,...``, each key named by ``key_of``."""
    if not text:
        return {}
    out: dict = {}
    for part in text.split(","):
        name, sep, value = part.strip().rpartition(":")
        key = key_of(name, what, text) if sep else None
        try:
            out[key] = value_of(value.strip())
        except UnitError as e:
            raise UnitError(f"{what}={text}: {e}") from None
    return out


@dataclass(frozen=True)
class Conversion:
    """``physical = f(stored * scale + offset)``, with ``f`` the change of unit (10·log10, 20·log10, feet)."""

    canonical: str
    scale: float
    offset: float
    #: The unit of ``stored * scale + offset``.
    unit: StatedUnit
    #: Every step applied, in words, with where it came from (the response lists them).
    steps: tuple[str, ...]
    #: What came from the band table's convention rather than the caller or the file.
    assumed: tuple[str, ...] = ()

    @property
    def scale_assumed(self) -> bool:
        """True when ``scale``/``offset`` are the band table's (Sentinel-2 x 10000), not the caller's or the file's."""
        return _ASSUMED_SCALE in self.assumed

    def apply(self, stored: np.ndarray) -> np.ndarray:
        """Physical float32 values; NaN where a conversion is undefined (dB of a power <= 0)."""
        x = stored.astype(np.float32)
        if self.scale != 1.0:
            x *= np.float32(self.scale)
        if self.offset != 0.0:
            x += np.float32(self.offset)
        if self.unit in ("linear", "amplitude"):
            factor = np.float32(10.0 if self.unit == "linear" else 20.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.where(x > 0, factor * np.log10(x), np.float32(np.nan)).astype(np.float32)
        elif self.unit == "ft":
            x *= np.float32(0.3048)
        return x


def _tag_number(tags: Mapping[str, str], *keys: str) -> float | None:
    for k in keys:
        if k in tags:
            try:
                return float(tags[k])
            except ValueError:
                return None
    return None


def _boa(src: DatasetReaderBase, index: int, canonical: str) -> tuple[float, float] | None:
    """Sentinel-2 L2A ``(DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE`` as scale and offset, when stated."""
    ds = {k.upper(): v for k, v in src.tags().items()}
    band = {k.upper(): v for k, v in src.tags(index).items()}
    quantification = _tag_number(band, "BOA_QUANTIFICATION_VALUE") or _tag_number(ds, "BOA_QUANTIFICATION_VALUE")
    short = canonical[0] + canonical[1:].lstrip("0")
    add = _tag_number(band, "BOA_ADD_OFFSET")
    if add is None:
        add = _tag_number(ds, f"BOA_ADD_OFFSET_{canonical}", f"BOA_ADD_OFFSET_{short}", "BOA_ADD_OFFSET")
    if quantification is None and add is None:
        return None
    q = quantification or 10000.0
    return 1.0 / q, (add or 0.0) / q


def _envi_reflectance_scale(src: DatasetReaderBase) -> float | None:
    """An ENVI header's ``reflectance scale factor`` (ENVI FLAASH writes 10000, others 1000 or 1): what divides the
    stored values into reflectance 0..1; GDAL keeps it in the ENVI domain only. None where no header states one."""
    factor = _tag_number({k.lower(): v for k, v in src.tags(ns="ENVI").items()}, "reflectance_scale_factor")
    return factor if factor is not None and math.isfinite(factor) and factor > 0 else None


def _stated_unit(src: DatasetReaderBase, index: int, snap: SnapBand | None = None) -> tuple[StatedUnit, str] | None:
    """The unit the file states for band ``index``: its SNAP header's, GDAL's UNITTYPE, then a ``units``/``unit``
    tag."""
    if snap is not None and snap.unit and (u := parse_unit(snap.unit)):
        return u, f"PHYSICAL_UNIT {snap.unit!r} in SNAP's DIMAP header"
    unit_type = src.units[index - 1] if src.units else None
    if unit_type and (u := parse_unit(unit_type)):
        return u, f"UNITTYPE {unit_type!r}"
    tags = {k.lower(): v for k, v in src.tags(index).items()}
    for key in ("units", "unit"):
        if tags.get(key) and (u := parse_unit(tags[key])):
            return u, f"tag {key}={tags[key]!r}"
    return None


def _safe_offset(file_name: str | None, path: str) -> tuple[float, str]:
    """The reflectance offset of a band file named as a Sentinel-2 SAFE names it, and why: by the baseline of the
    product named in its ``path`` (a job's URL: ``.../S2A_MSIL2A_..._N0509_....SAFE/.../T33UUP_..._B04_10m.tif``),
    else -0.1 when it was sensed on or after 2022-01-25, a 422 when before (reprocessed or not, the file cannot
    say); 0 for any other file."""
    m = SAFE_BAND_FILE.match(file_name or "")
    if m is None:
        return 0.0, ""
    if (product := _SAFE_PRODUCT.search(path)) is not None:
        baseline = f"{product.group(1)}.{product.group(2)}"
        return (-0.1 if baseline >= "04.00" else 0.0), f"its product's processing baseline {baseline}"
    if m.group("date") >= _BASELINE_04_FROM:
        return -0.1, "sensed from 2022-01-25 on (processing baseline 04.00 or later)"
    raise UnitError(
        f"{file_name}: a Sentinel-2 SAFE band file sensed before 2022-01-25 carries the reflectance offset of -1000 "
        f"only if its product was processed with baseline 04.00 or later (the reprocessed Collection-1 was), which "
        f"the file does not say: pass scale=0.0001&offset=-0.1 for a product named ..._N0400_... or later (see its "
        f"MTD_MSIL2A.xml BOA_ADD_OFFSET), scale=0.0001&offset=0 for an earlier one, send the SAFE itself (.zip), or "
        f"send it as a job by its URL, whose path names its product")


#: Why 0 in integer reflectance is no data, for the answer's list of conversions.
ZERO_IS_NODATA = ("0 taken as no data: integer reflectance that declares none (0 is Sentinel-2's NODATA and Landsat "
                  "Collection 2's fill, and Earth Engine writes masked pixels as 0 unless its export sets noData)")


def zero_is_nodata(src: DatasetReaderBase, index: int, canonical: str) -> bool:
    """Whether 0 in band ``index`` is no data though the file does not say so: reflectance stored as integers with
    no nodata value and no mask. No surface is black to 0 in Sentinel-2's or Landsat's integers (Level-2A's 0 is
    -0.1 once offset), while a SAFE's band file sent alone, an Earth Engine export of masked pixels (clouds the user
    masked; 0 unless the export sets ``noData``) and a swath's edge all hold 0, which read as reflectance would be
    dark pixels to the model."""
    return (BANDS[canonical].unit == "reflectance" and np.dtype(src.dtypes[index - 1]).kind in "iu"
            and src.nodatavals[index - 1] is None and MaskFlags.all_valid in src.mask_flag_enums[index - 1])


def check_stated_units(overrides: UnitOverrides, canonical: Sequence[str]) -> None:
    """A request-wide ``units=`` applies to the bands it can describe and leaves the others be; one that fits none of
    the bands read is a mistake (``units=reflectance`` sent with a radar scene), not a statement to ignore."""
    unit = overrides.units.get(None)
    if unit is not None and not any(unit in _COMPATIBLE[BANDS[c].unit] for c in canonical):
        bands = ", ".join(f"{c} in {BANDS[c].unit}" for c in canonical)
        accepted = sorted({u for c in canonical for u in _COMPATIBLE[BANDS[c].unit]})
        raise UnitError(f"units={unit} fits none of the bands read ({bands}); accepted for them: {', '.join(accepted)}")


def landsat_level1(file_name: str | None, found: str | None, landsat_layer: str | None = None,
                   image: str | None = None) -> str | None:
    """What says a Landsat band (named ``found``, in ``file_name``; ``landsat_layer``: a Collection 2 layer among its
    request's bands; ``image``: the Earth Engine image its band name says it came from) is of Collection 2 Level-1
    (digital numbers, or Earth Engine's top-of-atmosphere reflectance), not Level-2's surface reflectance; None where
    nothing does."""
    base = os.path.basename(file_name or "")
    if _LANDSAT_LEVEL1.match(base):
        return "its name, a Level-1 product's (L1TP, L1GT, L1GS)"
    band = (found or "").strip()
    earth_engine = _EE_LANDSAT_IMAGE.match(base) or _EE_LANDSAT_IMAGE.match(catalogue_id(image or ""))
    layer = None if earth_engine else landsat_layer
    if not _LEVEL1_BAND.fullmatch(band) or (layer is None and not earth_engine):
        return None
    return (f"its band's name {band}{f' beside {layer}' if layer else ''}, as Earth Engine names the bands of "
            f"Landsat's Level-1 and TOA collections (its Level-2 ones SR_{band})")


def conversion_for(
    src: DatasetReaderBase, index: int, canonical: str, *, name_unit: str | None = None,
    overrides: UnitOverrides | None = None, landsat: bool = False, file_name: str | None = None,
    snap: SnapBand | None = None, planet: PlanetProduct | None = None, found: str | None = None,
    landsat_layer: str | None = None, image: str | None = None,
) -> Conversion:
    """How band ``index`` of ``src`` (identified as ``canonical`` by the name ``found``, in the file ``file_name``;
    ``snap``: what the SNAP header of that file says of it; ``planet``: the Planet asset the file is;
    ``landsat_layer``: the Landsat Collection 2 layer that says its request's band numbers are Landsat's; ``image``: the
    Earth Engine image its band name says it came from) becomes physical values, and why."""
    overrides = overrides or UnitOverrides()
    band = BANDS[canonical]
    if snap is not None and snap.log10_scaled:
        raise UnitError(f"{snap.name}: SNAP stores this band log10-scaled (its values are the logarithms of the "
                        f"band's); export it with its own values (SNAP: Raster > Band Maths, the expression "
                        f"{snap.name}, 'Virtual' unchecked)")
    if np.dtype(src.dtypes[index - 1]).kind == "c":
        raise UnitError(f"{canonical}: band {index} holds complex values ({src.dtypes[index - 1]}), the phase and "
                        f"amplitude of a single look complex (SLC) image, not backscatter; the specialists take "
                        f"calibrated, detected backscatter: calibrate it to sigma0 and terrain-correct it (SNAP: Radar "
                        f"> Radiometric > Calibrate, then Radar > Geometric > Terrain Correction), or send the GRD "
                        f"product's")
    steps: list[str] = []
    assumed: list[str] = []
    if planet is not None and planet.kind == "visual":
        raise UnitError(f"{file_name}: a {planet.what} is colour-corrected 8-bit display imagery, not reflectance; "
                        f"the specialists take surface reflectance: order {planet.reflectance_to_order}")
    if planet is not None and planet.kind == "radiance" and overrides.get("scale", canonical) is None:
        raise UnitError(f"{file_name}: a {planet.what} holds at-sensor radiance x 100 (W m-2 sr-1 um-1), not "
                        f"reflectance, and read as reflectance x 10000 it would look plausible and be wrong; the "
                        f"specialists take surface reflectance: order the surface reflectance asset "
                        f"(ortho_analytic_4b_sr or ortho_analytic_8b_sr: ..._AnalyticMS_SR.tif), or, for "
                        f"top-of-atmosphere reflectance, pass each band's reflectanceCoefficient from the asset's "
                        f"..._metadata.xml as scale= (scale=B02:0.0000201,B03:...)")
    # What says a file holds reflectance where its GDAL metadata does not: its product's format (x 10000).
    integers = np.dtype(src.dtypes[index - 1]).kind in "iu"
    reflectance_by = (f"a {planet.what}" if planet is not None and planet.kind == "surface reflectance"
                      else f"a {theia} band file" if integers and (theia := theia_product(file_name)) else None)

    file_scale, file_offset = src.scales[index - 1], src.offsets[index - 1]
    tags = {k.lower(): v for k, v in src.tags(index).items()}
    tag_scale, tag_offset = _tag_number(tags, "scale_factor"), _tag_number(tags, "add_offset")
    scale, offset = overrides.get("scale", canonical), overrides.get("offset", canonical)
    if scale is not None or offset is not None:
        scale, offset = (1.0 if scale is None else scale), (0.0 if offset is None else offset)
        steps.append(f"x {scale:g} + {offset:g} (scale=/offset= parameters)")
    elif (file_scale, file_offset) != (1.0, 0.0):
        scale, offset = file_scale, file_offset
        steps.append(f"x {scale:g} + {offset:g} (the file's scale/offset)")
    elif snap is not None and snap.scaled:
        scale, offset = snap.scale, snap.offset
        steps.append(f"x {scale:g} + {offset:g} (SNAP's DIMAP header: SCALING_FACTOR / SCALING_OFFSET)")
    elif tag_scale is not None or tag_offset is not None:
        scale, offset = tag_scale if tag_scale is not None else 1.0, tag_offset or 0.0
        steps.append(f"x {scale:g} + {offset:g} (scale_factor/add_offset tags)")
    elif band.unit == "reflectance" and (factor := _envi_reflectance_scale(src)) is not None:
        scale, offset = 1 / factor, 0.0
        steps.append(f"x {scale:g} + 0 (its ENVI header's reflectance scale factor {factor:g})")
        reflectance_by = "an ENVI header's reflectance scale factor"
    elif (force_scale := force_scale_of(src, index)) is not None:
        scale, offset = force_scale, 0.0
        steps.append(f"x {scale:g} + 0 (its FORCE metadata: Scale {1 / scale:g})")
        reflectance_by = "a FORCE reflectance file"
    elif landsat and integers and _LANDSAT_LEVEL2_SR.fullmatch(found or ""):
        scale, offset = _LANDSAT_LEVEL2_SCALE, _LANDSAT_LEVEL2_OFFSET
        reflectance_by = f"{found}, a Landsat Collection 2 Level-2 surface reflectance band"
        steps.append(f"x {scale:g} + {offset:g} ({reflectance_by}: the product's scale, as USGS's guides state)")
    elif reflectance_by and band.unit == "reflectance":
        scale, offset = 1e-4, 0.0
        steps.append(f"x {scale:g} + {offset:g} ({reflectance_by} holds reflectance x 10000)")
    elif band.sensor == "S2" and (boa := _boa(src, index, canonical)) is not None:
        scale, offset = boa
        steps.append(f"x {scale:g} + {offset:g} (Sentinel-2 L2A BOA_QUANTIFICATION_VALUE / BOA_ADD_OFFSET)")
    else:
        scale, offset = None, None
    raw_name = _SENTINEL_HUB_RAW.search(file_name or "") is not None
    if not raw_name and (layer := _SENTINEL_HUB_LAYER.search(file_name or "")) is not None:
        raise UnitError(f"{file_name}: a Sentinel Hub download (EO Browser, Copernicus Browser) of its layer "
                        f"{layer.group('layer')!r}, a rendering of the bands (a visualisation or an index), not their "
                        f"reflectance; download each band's raw layer (..._Sentinel-2_L2A_B04_(Raw).tiff) as TIFF "
                        f"(32-bit float)")
    raw_download = scale is None and raw_name
    if raw_download and integers:
        raise UnitError(
            f"{file_name}: a Sentinel Hub download (EO Browser, Copernicus Browser) of a raw band as "
            f"{src.dtypes[index - 1]} holds reflectance in integers its layer's script chose, which the file does not "
            f"say: Sentinel Hub stretches 0..1 to 0..65535 in a 16-bit file and to 0..255 in an 8-bit one, unless the "
            f"script returns digital numbers (x 10000), and read as Sentinel-2's x 10000 the stretched kind would be "
            f"6.5 times too bright. Download it as TIFF (32-bit float), which holds reflectance 0..1, or say its scale: "
            f"scale=0.0000152590219 (1/65535, 16-bit stretched), scale=0.00392157 (1/255, 8-bit), scale=0.0001 "
            f"(digital numbers)")

    unit, unit_source = overrides.get("units", canonical), "units= parameter"
    if unit is not None and unit not in _COMPATIBLE[band.unit]:
        if canonical in overrides.units or None not in overrides.units:
            raise UnitError(f"units={unit} cannot apply to {canonical} ({band.description}, in {band.unit}); "
                            f"accepted for it: {', '.join(_COMPATIBLE[band.unit])}")
        unit = None  # a request-wide units= that is about the other bands
    if unit is None and name_unit is not None:
        unit, unit_source = name_unit, "the band's name"
    if unit is None and raw_download and band.unit == "reflectance":
        unit, unit_source = "reflectance", "its name: a Sentinel Hub 32-bit float download of a raw band"
    if unit is None and (stated := _stated_unit(src, index, snap)) is not None and stated[0] in _COMPATIBLE[band.unit]:
        unit, unit_source = stated
    if unit is None and reflectance_by and band.unit == "reflectance":
        unit, unit_source = "reflectance", reflectance_by
    unit_assumed = unit is None
    if unit_assumed:
        unit = band.unit
        assumed.append(f"values in {band.unit}")

    if scale is None:
        if unit == "reflectance" and unit_assumed:
            if landsat and integers and (level1 := landsat_level1(file_name, found, landsat_layer, image)):
                raise ImplausibleValuesError(
                    f"{file_name}: a Landsat Collection 2 Level-1 band holds top-of-atmosphere digital numbers (by "
                    f"{level1}), and Level-2's scale does not apply to them; the specialists take surface reflectance: "
                    f"send the Level-2 product's band (L2SP, ..._SR_B4.TIF, or the whole L2SP .tar; in Earth Engine "
                    f"LANDSAT/LC09/C02/T1_L2's SR_B4), or top-of-atmosphere reflectance, scale= and offset= its "
                    f"MTL.txt's REFLECTANCE_MULT_BAND_n and REFLECTANCE_ADD_BAND_n over sin(SUN_ELEVATION)")
            if landsat and integers:
                raise ImplausibleValuesError(
                    f"{canonical}: a Landsat band stored as integers with no scale metadata; say how it is scaled: "
                    f"Landsat Collection 2 Level-2 is scale=0.0000275&offset=-0.2, HLS L30 is scale=0.0001"
                )
            # Checked against the values by check_plausible: 8-bit and float 0..1 data are refused there.
            safe_offset, why = _safe_offset(file_name, src.name)
            scale, offset = band.scale, band.offset + safe_offset
            note = f", less 1000: a SAFE band file {why}" if safe_offset else f"; a SAFE band file {why}" if why else ""
            steps.append(f"x {scale:g} + {offset:g} (assumed: Sentinel-2 L2A stores reflectance x 10000{note})")
            assumed.append(_ASSUMED_SCALE)
        else:
            scale, offset = 1.0, 0.0
    if unit != band.unit:
        steps.append(f"{_CONVERSION_WORDS[unit]} ({unit_source})")
    elif unit_assumed:
        steps.append(f"values taken as {unit} (assumed: no unit metadata; checked against the values)")
    else:
        steps.append(f"values in {unit} ({unit_source})")
    return Conversion(canonical, float(scale), float(offset), unit, tuple(steps), tuple(assumed))


@dataclass(frozen=True)
class ValueStats:
    """What a sample of one band's valid values looked like: stored and physical."""

    dtype: str
    stored_min: float
    stored_max: float
    p02: float
    p50: float
    p98: float
    count: int
    #: Whether some stored values have a fractional part (never in integers): digital numbers kept as floats have none.
    fractional: bool = False

    @classmethod
    def of(cls, stored: np.ndarray, physical: np.ndarray, dtype: str) -> ValueStats | None:
        """Statistics of the finite physical values (and their stored ones); None when there are none."""
        ok = np.isfinite(physical)
        if not ok.any():
            return None
        p02, p50, p98 = percentiles(physical[ok], (2, 50, 98))
        kept = stored[ok]
        fractional = kept.dtype.kind == "f" and bool((kept != np.round(kept)).any())
        return cls(dtype, float(kept.min()), float(kept.max()), float(p02), float(p50), float(p98), int(ok.sum()),
                   fractional)

    def seen(self) -> str:
        return (f"stored {self.dtype} {self.stored_min:g}..{self.stored_max:g}, taken as {self.p02:.4g}..{self.p98:.4g} "
                f"(2nd..98th percentile, median {self.p50:.4g})")


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(values, qs)`` (its default linear method, the same numbers) from one sort.

    numpy's own costs 0.04 ms a call in Python-level setup, a tenth of a single-tile request's
    decoding for three bands; a sort of a sample's few thousand values costs a few microseconds.
    """
    s = np.sort(values, axis=None)
    out = []
    for q in qs:
        pos = q / 100 * (s.size - 1)
        lo = math.floor(pos)
        a, b, t = s[lo], s[min(lo + 1, s.size - 1)], pos - lo
        d = float(b - a)  # in the values' dtype, as numpy's lerp; then exact at both ends
        out.append(float(b) - d * (1 - t) if t >= 0.5 else float(a) + d * t)
    return out


def check_plausible(conversion: Conversion, stats: ValueStats | None, name: str) -> None:
    """Raise ``ImplausibleValuesError`` naming the fix when the values do not fit the unit they were taken in."""
    if stats is None:
        return
    band = BANDS[conversion.canonical]
    lo, hi = band.plausible
    what = f"band {name!r} ({conversion.canonical}): {stats.seen()}"
    assumed = conversion.scale_assumed
    integer = np.dtype(stats.dtype).kind in "iu"
    if band.unit == "reflectance":
        if assumed and integer and stats.stored_max <= 255:
            raise ImplausibleValuesError(
                f"{what}: 8-bit values (0..255) are display imagery, not Sentinel-2 reflectance x 10000, and the "
                f"model would see a black scene; send surface reflectance, or state how the values are scaled with "
                f"scale= (scale=0.0001 for reflectance x 10000, scale=0.01 for percent, units=reflectance for 0..1)"
            )
        if assumed and not integer and stats.stored_max <= 2.0:
            raise ImplausibleValuesError(
                f"{what}: float values 0..{stats.stored_max:.3g} look like reflectance 0..1 already, not x 10000; "
                f"pass units=reflectance (or scale=1; scale=0.01 if they are percent of a dark scene)"
            )
        if assumed and stats.fractional and stats.stored_max <= _PERCENT_MAX:
            raise ImplausibleValuesError(
                f"{what}: float values 0..{stats.stored_max:.3g} with fractions look like reflectance in percent, not "
                f"x 10000 (whole numbers, which taken so would be a black scene): pass scale=0.01; if they are a very "
                f"dark scene's reflectance x 10000 after resampling, pass scale=0.0001"
            )
        if stats.p98 > hi:
            raise ImplausibleValuesError(
                f"{what}: reflectance is 0..1; values this large look like reflectance x 10000 taken with scale 1: "
                f"pass scale=0.0001"
            )
        if stats.p02 < lo:
            raise ImplausibleValuesError(f"{what}: reflectance below {lo:g} is not physical; check offset= "
                                         f"(Sentinel-2 L2A since baseline 04.00: scale=0.0001&offset=-0.1)")
    elif band.unit == "dB":
        if conversion.unit == "dB" and stats.p02 >= 0 and stats.p98 <= 5:
            raise ImplausibleValuesError(
                f"{what}: backscatter in dB is mostly negative (-35..+5 dB); non-negative values this small look "
                f"like linear power (SNAP Sigma0_VV): pass units=linear (or units=amplitude for amplitude)"
            )
        if stats.p98 > hi or stats.p02 < lo:
            scaled = _fitting_scales(stats, lo, hi) if conversion.unit == "dB" and stats.p98 <= 0 else []
            raise ImplausibleValuesError(
                f"{what}: calibrated sigma0 lies within {lo:g}..{hi:g} dB; " + (
                    f"negative values this large look like dB stored x {1 / scaled[0]:g} to keep them integers: pass "
                    f"scale={scaled[0]:g}" if scaled else
                    "these values are not calibrated backscatter (uncalibrated DN or intensity?): calibrate the product "
                    "(SNAP: Radar > Radiometric > Calibrate) or state the unit with units=dB|linear|amplitude")
            )
    elif stats.p02 < lo or stats.p98 > hi:
        scaled = " or ".join(f"scale={f:g} for {_DEM_STEPS[f]}" for f in _fitting_scales(stats, lo, hi))
        raise ImplausibleValuesError(f"{what}: elevations lie within {lo:g}..{hi:g} m; state the unit with units=m|ft "
                                     f"or the scale with scale={' (' + scaled + ')' if scaled else ''}")


#: Float reflectance of fractional values up to this stored maximum is taken for percent, not for x 10000: a
#: scene none of whose pixels reaches 1% reflectance (0.01) in a band is darker than open water in visible light.
_PERCENT_MAX = 100.0

#: Elevations stored in finer steps than metres, and what the scale that undoes each is called.
_DEM_STEPS = {0.1: "decimetres", 0.01: "centimetres"}


def _fitting_scales(stats: ValueStats, lo: float, hi: float) -> list[float]:
    """The decimal scales (0.1, 0.01) that bring the values taken within ``lo..hi``: integers kept in finer steps."""
    if stats.dtype.startswith("float"):
        return []
    return [f for f in (0.1, 0.01) if lo <= stats.p02 * f and stats.p98 * f <= hi]

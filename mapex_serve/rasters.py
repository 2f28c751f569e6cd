"""Which band is which: band identity from every place real files keep it, shared by training and the service.

Bands are identified by name or wavelength, never by position. For each band, in order:

1. ``bands=`` (one name per band; ``-`` skips a band) overrides the file;
2. names the file carries: the band description, then name tags (``BANDNAME`` of GDAL's SENTINEL2
   driver, ``NETCDF_VARNAME``, ``name``, ``long_name``), then, for a single-band file, its file name
   (BigEarthNet's ``..._B02.tif``, HLS's ``HLS.S30....B8A.tif``). Each is read in the conventions of
   the tools that write it: GDAL SENTINEL2 descriptions (``B4, central wavelength 665 nm``), SNAP
   (``Sigma0_VV``, ``Gamma0_VH_db``, ``Amplitude_VV``; the name states the unit; in a GeoTIFF SNAP wrote, its
   DIMAP header's, which GDAL does not read: ``mapex_serve.dimap``), ASF HyP3 and OPERA RTC-S1 file names (which
   state the unit), Planet's asset names and band order (``mapex_serve.planet``), Digital Earth Australia's
   measurements on their sensor (``mapex_serve.dea``), STAC
   ``eo:common_name``, Earth Engine, Sentinel Hub and HLS names, quality layers (``SCL``, ``Fmask``);
3. wavelength metadata (GDAL's ``IMAGERY`` domain ``CENTRAL_WAVELENGTH_UM``, ENVI-style
   ``wavelength`` / ``wavelength_units`` tags, the SENTINEL2 driver's ``WAVELENGTH``), matched to the
   Sentinel-2 band whose passband holds it (:func:`mapex_serve.bands.band_for_wavelength`).

Landsat OLI and HLS L30 number their bands differently from Sentinel-2 (L30 ``B05`` is near
infrared), and Landsat 4-7 TM and ETM+ differently again (their ``B4`` is near infrared), so in a
Landsat file a band number is its sensor's wavelength, mapped by rule 3, never a name. A
name that disagrees with the file's wavelength metadata is an error, not a choice.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import PurePath
from typing import Literal, Protocol, get_args

from rasterio.io import DatasetReaderBase

from mapex_serve.bands import (
    BANDS,
    LANDSAT_C2_LAYERS,
    MODIS_WAVELENGTHS_NM,
    OLI_WAVELENGTHS_NM,
    TM_ETM_WAVELENGTHS_NM,
    ProductBand,
    band_for_wavelength,
    canonical_or_none,
    landsat_collection_layers,
    quality_layer,
    resolve_band,
    resolve_bands,
)
from mapex_serve.dea import DeaProduct, dea_product
from mapex_serve.earth_engine import catalogue_id, check_one_image, stacked_band
from mapex_serve.errors import MapexError
from mapex_serve.force import force_file
from mapex_serve.planet import PlanetProduct
from mapex_serve.sen2r import sen2r_file
from mapex_serve.theia import theia_band
from mapex_serve.units import UnitError

__all__ = [
    "Backscatter",
    "BandIdentity",
    "BandIdentityConflictError",
    "BandNamesMissingError",
    "band_key",
    "LandsatSensorUnknownError",
    "band_names",
    "identify_bands",
    "LandsatSensor",
    "landsat_sensor",
    "missing_names_error",
    "name_in_file_name",
    "parse_name",
    "request_band_names",
    "scale_offset",
    "word_in_name",
]


class BandNamesMissingError(MapexError, ValueError):
    """A raster whose bands cannot be named: no usable names or wavelengths, or the wrong number of names."""


class LandsatSensorUnknownError(MapexError, ValueError):
    """A Landsat Collection 2 band name (``SR_B4``) in a file that does not say which Landsat it comes from."""


class BandIdentityConflictError(MapexError, ValueError):
    """A band whose name and wavelength metadata name different bands."""


#: A radar band's backscatter coefficient, as names state it (``mapex_serve.backscatter``).
Backscatter = Literal["sigma0", "gamma0"]


def word_in_name(file: str, path: str, words: Collection[str]) -> tuple[str, str] | None:
    """``(word, where)``: the first of ``words`` that the file's name as sent, else the path GDAL read it at, holds
    as a word of its own (``S2A_MSIL1C_...``: ``msil1c``; ``s1_gamma0_vv.tif``: ``gamma0``); None: neither."""
    for where, text in (("its name", file), ("its path", path)):
        for word in re.split(r"[^0-9a-z]+", text.lower()):
            if word in words:
                return word, where
    return None


@dataclass(frozen=True)
class BandIdentity:
    """What one band of a file is, and why we think so."""

    #: The name or metadata the rule read, as found (``Sigma0_VV``, ``0.665 um``), or None.
    found: str | None
    #: How it was mapped, in words the response shows (``SNAP band name``, ``bands= parameter``).
    rule: str
    #: The model band it is, or None.
    canonical: str | None = None
    #: The quality layer it is (``SCL``, ``FMASK``, ``DATAMASK``), or None.
    quality: str | None = None
    #: The unit its name states (``linear``, ``dB``, ``amplitude``), or None.
    unit_hint: str | None = None
    #: The radar backscatter its name states (``sigma0``, ``gamma0``), or None (``mapex_serve.backscatter``).
    backscatter: Backscatter | None = None
    #: Per pixel, the factor from gamma0 to sigma0 (OPERA RTC-S1-STATIC's ``rtc_anf_gamma0_to_sigma0``), not a band.
    sigma0_factor: bool = False
    #: The Earth Engine image its file's band name says it came from (``toBands()``: ``LC08_044034_20220111``), or None.
    image: str | None = None

    @property
    def used(self) -> bool:
        return self.canonical is not None or self.quality is not None or self.sigma0_factor


_NAME_TAGS = ("bandname", "name", "band_name", "netcdf_varname", "long_name")
_SENTINEL2_DESCRIPTION = re.compile(r"^\s*(B\d{1,2}A?)\s*,\s*central wavelength\s*(\d+)\s*nm\s*$", re.I)
#: SNAP's names for radar bands: the quantity, the sub-swath of a split TOPS product (``Sigma0_IW1_VV``), the
#: polarisation, ``_db`` once converted, and a coregistered stack's ``_mst``/``_slv`` date.
_SNAP = re.compile(r"^(sigma0|gamma0|beta0|intensity|amplitude)_(?:[ie]w\d_)?(vv|vh|hh|hv)(_db)?(?:_(?:mst|slv\d*)\w*)?$",
                   re.I)
#: A polarisation with its quantity or unit after it, as processing chains and exports name bands (``VV_dB``,
#: ``VV_lin``, ``VH_gamma0_dB``, ``VV (dB)``).
_POL_UNIT = re.compile(r"^(?:s1[_ ])?(vv|vh|hh|hv)(?:[_ ](sigma0|gamma0|beta0))?(?:[_ ]\(?(db|lin|linear|power|amp|amplitude)"
                       r"\)?)?$", re.I)
_UNIT_OF_WORD = {"db": "dB", "lin": "linear", "linear": "linear", "power": "linear", "amp": "amplitude",
                 "amplitude": "amplitude"}
_SNAP_UNIT = {"sigma0": "linear", "gamma0": "linear", "beta0": "linear", "intensity": "linear", "amplitude": "amplitude"}
_SNAP_MEANING = {"sigma0": "calibrated sigma0", "gamma0": "calibrated gamma0", "beta0": "calibrated beta0",
                 "intensity": "uncalibrated intensity", "amplitude": "uncalibrated amplitude"}
_STAC_COMMON = {"coastal", "blue", "green", "red", "rededge071", "rededge075", "rededge078", "nir", "nir08", "nir09",
                "cirrus", "swir16", "swir22"}
_LANDSAT_NUMBER = re.compile(r"^(?:sr_|st_|toa_)?b0?(\d{1,2})$", re.I)
#: Landsat Collection 2's own band names (USGS files, Earth Engine's ``SR_B4``): never a Sentinel-2 band.
_LANDSAT_C2_NAME = re.compile(r"^(?:sr|st)_b\d{1,2}$", re.I)
#: A MODIS surface reflectance band in a name: MOD09's layer (``sur_refl_b01``; ``sur_refl_b01_1`` in AppEEARS'
#: ``MOD09GA.061_sur_refl_b01_1_doy2023245_aid0001.tif``; a description in Earth Engine's exports) or MCD43A4's
#: ``Nadir_Reflectance_Band1``. Its word ``b01`` alone would name Sentinel-2's coastal band.
_MODIS_BAND = re.compile(r"(?<![A-Za-z0-9])(?:sur_refl_b|Nadir_Reflectance_Band)(\d{1,2})(?![0-9])", re.I)
_UNIT_WORDS = {"micrometers": 1000.0, "micrometer": 1000.0, "microns": 1000.0, "um": 1000.0, "µm": 1000.0,
               "nanometers": 1.0, "nanometer": 1.0, "nm": 1.0}


def _convention(name: str, canonical: str) -> str:
    """The convention a vocabulary name comes from, for the response's ``rule``."""
    key = name.strip().lower()
    if key in _STAC_COMMON:
        return "STAC eo:common_name"
    if name.strip().upper() == canonical:
        return "canonical band name"
    if re.fullmatch(r"b\d{1,2}a?", key):
        return "Sentinel-2 band name (Earth Engine / Sentinel Hub / HLS S30 style)"
    return "band alias"


def _polarised(found: str, rule: str, pol: str, unit: str | None, quantity: str | None = None) -> BandIdentity:
    """A radar band by its polarisation (``VV``, ``HH``...), in ``unit``; one the models do not take, unused: another
    polarisation, or beta0 (``quantity``), whose values are not the models' sigma0."""
    if pol not in BANDS:
        return BandIdentity(found, f"{rule}; {pol} polarisation is not a model band (VV and VH are)")
    if quantity == "beta0":
        return BandIdentity(found, f"{rule}; beta0 is radar brightness, not normalised to the ground as sigma0 is, "
                                   f"1.5-3 dB brighter at Sentinel-1's incidence angles: calibrate to sigma0 (SNAP "
                                   f"Calibration with 'Output sigma0 band'), or name it with bands= to read it anyway")
    return BandIdentity(found, rule, pol, unit_hint=unit,
                        backscatter=quantity if quantity in get_args(Backscatter) else None)


@lru_cache(maxsize=4096)  # the same few names arrive in every request, each tried against a dozen conventions
def parse_name(name: str) -> BandIdentity | None:
    """The identity one band name states in any convention we read, or None when it states none."""
    text = name.strip()
    if m := _SENTINEL2_DESCRIPTION.match(text):
        canonical = canonical_or_none(m.group(1))
        return BandIdentity(text, "GDAL SENTINEL2 driver description", canonical) if canonical else None
    if m := _SNAP.match(text):
        quantity, pol, db = m.group(1).lower(), m.group(2).upper(), m.group(3)
        unit = "dB" if db else _SNAP_UNIT[quantity]
        rule = f"SNAP band name ({_SNAP_MEANING[quantity]}, {'linear power' if unit == 'linear' else unit})"
        return _polarised(text, rule, pol, unit, quantity)
    if (m := _POL_UNIT.match(text)) and (m.group(2) or m.group(3)):
        pol, unit = m.group(1).upper(), _UNIT_OF_WORD.get((m.group(3) or "").lower())
        said = " ".join(w for w in (m.group(2), unit) if w)
        rule = f"polarisation named with its {'unit' if unit else 'quantity'} ({said})"
        return _polarised(text, rule, pol, unit, (m.group(2) or "").lower())
    if canonical := canonical_or_none(text):
        return BandIdentity(text, _convention(text, canonical), canonical)
    if q := quality_layer(text):
        return BandIdentity(text, f"quality layer ({q.description})", quality=q.name)
    if "," in text:  # "SCL, Scene Classification" and other "NAME, explanation" descriptions
        head = parse_name(text.split(",", 1)[0])
        if head is not None:
            return replace(head, found=text, rule=f"{head.rule} (description prefix)")
    return None


@dataclass(frozen=True)
class LandsatSensor:
    """A Landsat sensor: its name and its band numbers' central wavelengths (nm)."""

    name: str
    wavelengths_nm: dict[int, float]


OLI = LandsatSensor("OLI", OLI_WAVELENGTHS_NM)
TM_ETM = LandsatSensor("TM/ETM+", TM_ETM_WAVELENGTHS_NM)
#: The last word of a band's or a single-band file's name (``download.B10``, ``Fmask``).
_LAST_WORD = re.compile(r"(?:^|[._\-\s])([A-Za-z0-9]+)$")
#: Landsat 8-9's thermal bands (TIRS) ending a band's or a single-band file's name: no Landsat 4-7 has them.
_TIRS = re.compile(r"(?:^|[._\-\s])B1[01]$", re.I)
#: Product id and file name prefixes (USGS Collection 2 naming: sensor letter, satellite number; HLS L30 is OLI).
_LANDSAT_PREFIXES = {"HLS.L30.": OLI, "LC08_": OLI, "LC09_": OLI, "LO08_": OLI, "LO09_": OLI, "LE07_": TM_ETM,
                     "LT05_": TM_ETM, "LT04_": TM_ETM}


def landsat_sensor(src: DatasetReaderBase, filename: str | None,
                   request_names: Sequence[str | None] | None = None) -> LandsatSensor | None:
    """The Landsat sensor whose band numbers a file uses, not Sentinel-2's (by its tags, its name, then the band names
    of its request, ``request_names``: by default its own); None for any other file. Landsat 7's ``SR_B4`` is near
    infrared, Landsat 8's red, Sentinel-2's ``B4`` red."""
    tags = {k.upper(): str(v).upper() for k, v in src.tags().items()}
    product = tags.get("LANDSAT_PRODUCT_ID", "")
    sensor, spacecraft = tags.get("SENSOR", "") + tags.get("SENSOR_ID", ""), tags.get("SPACECRAFT_NAME", "")
    stem = PurePath(filename or "").name.upper()
    images = [catalogue_id(b.image) for d in src.descriptions if (b := stacked_band(d)) is not None]
    for name in (product, stem, *images):
        if found := next((s for prefix, s in _LANDSAT_PREFIXES.items() if name.startswith(prefix)), None):
            return found
    if "OLI" in sensor or spacecraft in ("LANDSAT_8", "LANDSAT_9"):
        return OLI
    if "TM" in sensor or spacecraft in ("LANDSAT_4", "LANDSAT_5", "LANDSAT_7"):  # "TM", "ETM", "ETM+"
        return TM_ETM
    return _sensor_of_names(src.descriptions if request_names is None else request_names)


def _sensor_of_names(names: Sequence[str | None]) -> LandsatSensor | None:
    """The sensor band names tell: beside a layer only Landsat Collection 2 has (``LANDSAT_C2_LAYERS``), or as HLS
    L30's whole band set."""
    if not (layers := landsat_collection_layers(names)):
        return OLI if _hls_l30_set(names) else None
    told = {LANDSAT_C2_LAYERS[layer] for layer in layers} - {None}
    told |= {OLI.name} if any(n and _TIRS.search(n.strip()) for n in names) else set()
    return next(s for s in (OLI, TM_ETM) if s.name in told) if len(told) == 1 else None


def _hls_l30_set(names: Sequence[str | None]) -> bool:
    """Whether ``names`` are HLS L30's bands exported whole under another name (Earth Engine's ``NASA/HLS/HLSL30/v002``:
    ``B1``-``B7``, ``B9``-``B11``, ``Fmask``; LP DAAC's ``B01``), numbered as OLI's: its Fmask, its cirrus and thermal
    bands, and none of the near-infrared and short-wave bands only S30 numbers ``B8``, ``B8A``, ``B12``."""
    ends = {re.sub(r"^B0(?=\d$)", "B", m.group(1).upper()) for n in names if n and (m := _LAST_WORD.search(n.strip()))}
    return "FMASK" in ends and {"B9", "B10", "B11"} <= ends and not ends & {"B8", "B8A", "B12"}


def _wavelength_nm(src: DatasetReaderBase, index: int) -> tuple[float, str] | None:
    """The band's central wavelength in nm from its metadata, with where it was read."""
    imagery = src.tags(index, ns="IMAGERY")
    if "CENTRAL_WAVELENGTH_UM" in imagery:
        um = _number(imagery["CENTRAL_WAVELENGTH_UM"])
        if um is not None:
            return um * 1000.0, f"IMAGERY CENTRAL_WAVELENGTH_UM={imagery['CENTRAL_WAVELENGTH_UM']}"
    tags = {k.lower(): v for k, v in src.tags(index).items()}
    value = _number(tags.get("wavelength"))
    if value is None:
        return None
    unit = (tags.get("wavelength_units") or tags.get("wavelength_unit") or "").strip().lower()
    factor = _UNIT_WORDS.get(unit)
    if factor is None:  # no unit: micrometres below 30 (optical bands reach ~2.3 um), else nanometres
        factor, unit = (1000.0, "um, assumed") if value < 30 else (1.0, "nm, assumed")
    return value * factor, f"wavelength={tags['wavelength']} {unit}"


def _number(text: object) -> float | None:
    try:
        return float(str(text).strip())
    except ValueError:
        return None


def _landsat_number(name: str, landsat: LandsatSensor) -> int | None:
    """The band number of a Landsat band name (``B05``, ``SR_B5``) on ``landsat``, or None."""
    m = _LANDSAT_NUMBER.match(name.strip())
    return int(m.group(1)) if m and int(m.group(1)) in landsat.wavelengths_nm else None


def _by_wavelength(nm: float, source: str) -> BandIdentity:
    canonical = band_for_wavelength(nm)
    if canonical is None:
        return BandIdentity(source, f"wavelength {nm:g} nm is inside no Sentinel-2 band the model knows")
    b = BANDS[canonical]
    return BandIdentity(source, f"wavelength {nm:g} nm within {canonical} ({b.wavelength_nm:g} ± {b.fwhm_nm / 2:g} nm)",
                        canonical)


#: ASF HyP3's RTC band files (``S1A_IW_20180128T161201_DVP_RTC30_G_gpuned_FD6A_VV.tif``): the first two letters of
#: the seventh field say gamma0 or sigma0, and power, amplitude or decibel (HyP3 RTC product guide); the values carry
#: no unit. Amplitude sent as linear power would be 10·log10 of it, half its dB.
#: Beside them, the product's ``_ls_map.tif`` codes layover and shadow as bits.
_HYP3_RTC = re.compile(r"^S1[A-D]_[A-Z]{2}_\d{8}T\d{6}_\w{3}_RTC\d+_\w_([gs])([pad])\w{4}_\w{4}_([VH]{2}|ls_map)\.tiff?$",
                       re.I)
_HYP3_SCALE = {"p": ("linear", "power"), "a": ("amplitude", "amplitude"), "d": ("dB", "decibel")}


def _hyp3(filename: str | None) -> BandIdentity | None:
    """The identity an ASF HyP3 RTC band file's name states, with its unit; None for any other name."""
    m = _HYP3_RTC.match(PurePath(filename or "").name)
    if m is None:
        return None
    if m.group(3).lower() == "ls_map":
        return BandIdentity(m.group(0), "ASF HyP3 RTC file name (layover and shadow mask)", quality="HYP3_LS_MAP")
    quantity, (unit, scale), pol = m.group(1).lower(), _HYP3_SCALE[m.group(2).lower()], m.group(3).upper()
    quantity = "gamma0" if quantity == "g" else "sigma0"
    return _polarised(m.group(0), f"ASF HyP3 RTC file name ({quantity}, {scale} scale)", pol, unit, quantity)


#: NASA JPL OPERA RTC-S1 burst files (``OPERA_L2_RTC-S1_T069-147170-IW1_20231010T121227Z_20231010T163008Z_S1A_30_v1.0_VV.tif``):
#: gamma0 in linear power (OPERA RTC-S1 product guide), named by polarisation, beside a layover and shadow ``_mask``;
#: of the burst's static layers (RTC-S1-STATIC, on the same grid) the factor from gamma0 to sigma0.
_OPERA_RTC = re.compile(r"^OPERA_L2_RTC-S1(?:-STATIC)?_[\w.\-]+?_(VV|VH|HH|HV|mask|rtc_anf_gamma0_to_sigma0)\.tiff?$",
                        re.I)


def _opera(filename: str | None) -> BandIdentity | None:
    """The identity an OPERA RTC-S1 file's name states, with its unit; None for any other name."""
    name = (filename or "").rsplit("/", 1)[-1]
    if not name.startswith("OPERA_") or (m := _OPERA_RTC.match(name)) is None:
        return None
    rule, layer = "OPERA RTC-S1 file name", m.group(1)
    if layer.lower() == "mask":
        return BandIdentity(m.group(0), f"{rule} (layover and shadow mask)", quality="OPERA_RTC_MASK")
    if layer.lower() == "rtc_anf_gamma0_to_sigma0":
        return BandIdentity(m.group(0), f"{rule} (the factor from gamma0 to sigma0)", sigma0_factor=True)
    return _polarised(m.group(0), f"{rule} (gamma0, linear power)", layer.upper(), "linear", "gamma0")


#: The Planetary Computer's ``sentinel-1-rtc`` assets (``.../measurement/iw-vv.rtc.tiff``): gamma0, radiometrically
#: terrain-corrected, in linear power; the name is all the file says.
_PLANETARY_RTC = re.compile(r"^(?:iw|ew|sm)-(vv|vh|hh|hv)\.rtc\.tiff?$", re.I)


def _planetary_rtc(filename: str | None) -> BandIdentity | None:
    """The identity a Planetary Computer Sentinel-1 RTC asset's name states, with its unit; None for any other name."""
    if (m := _PLANETARY_RTC.match(PurePath(filename or "").name)) is None:
        return None
    rule = "Planetary Computer sentinel-1-rtc file name (gamma0, linear power)"
    return _polarised(m.group(0), rule, m.group(1).upper(), "linear", "gamma0")


#: The files of a CEOS-ARD Normalised Radar Backscatter product as pyroSAR's S1_NRB processor (S1-ARD) names them
#: (``s1a-iw-nrb-20200103t170705-030639-0382d5-32tps-vh-g-lin.tif``): the polarisation, gamma0 or sigma0, and
#: linear or log (10·log10) in the name; beside them annotation layers whose names hold a polarisation too (noise
#: power ``-np-vv``) or none (``-dm``, ``-ei``, ``-gs``, ``-id``, ``-lc``, ``-li``), none of them backscatter.
_S1_NRB = re.compile(r"^s1[a-d]-[a-z]{2}-nrb-[\w-]+?-(?:(vv|vh|hh|hv)-([gs])-(lin|log)|np-(?:vv|vh|hh|hv)|dm|ei|gs|id|lc|li)"
                     r"\.tiff?$", re.I)


def _s1_nrb(filename: str | None) -> BandIdentity | None:
    """The identity an S1-NRB product file's name states, with its unit; None for any other name."""
    if (m := _S1_NRB.match(PurePath(filename or "").name)) is None:
        return None
    if m.group(1) is None:
        return BandIdentity(m.group(0), "S1-NRB annotation layer (file name): not backscatter")
    quantity = "gamma0" if m.group(2).lower() == "g" else "sigma0"
    unit = "linear" if m.group(3).lower() == "lin" else "dB"
    return _polarised(m.group(0), f"S1-NRB file name ({quantity}, {'linear power' if unit == 'linear' else unit})",
                      m.group(1).upper(), unit, quantity)


#: Sentinel Hub EO Browser's analytical downloads of Sentinel-1, a file a layer
#: (``2023-04-23-00_00_2023-04-23-23_59_Sentinel-1_IW_VV+VH_VV_-_decibel_gamma0.tiff``, ``..._AWS-IW-VVVH_VH_-_linear_
#: gamma0_-_orthorectified.tiff``, a browser's ``(1)`` after a second download): the layer names the polarisation,
#: decibel or linear power, and the backscatter coefficient. The names hold the polarisations acquired too
#: (``VV+VH``), so by its words alone the file would name two bands.
_EO_BROWSER = re.compile(r"_Sentinel-1_.*_(VV|VH|HH|HV)_-_(decibel|linear)_(gamma0|sigma0|beta0)(?![a-z0-9])"
                         r"[^/]*\.tiff?$", re.I)


def _eo_browser(filename: str | None) -> BandIdentity | None:
    """The identity a Sentinel Hub EO Browser Sentinel-1 layer file's name states; None for any other name."""
    name = PurePath(filename or "").name
    if (m := _EO_BROWSER.search(name)) is None:
        return None
    quantity, unit = m.group(3).lower(), "dB" if m.group(2).lower() == "decibel" else "linear"
    rule = f"Sentinel Hub EO Browser file name ({quantity}, {'linear power' if unit == 'linear' else unit})"
    return _polarised(name, rule, m.group(1).upper(), unit, quantity)


#: USGS 3DEP elevation tiles (``USGS_13_n52w001_20230314.tif``, ``USGS_1_n40w106.tif``, ``USGS_1M_16_x64y458_....tif``,
#: ``USGS_OPR_...``): elevation in metres, named by resolution and corner only.
_3DEP = re.compile(r"^USGS_(?:13|1|2|1M|OPR)_\w+\.tiff?$", re.I)


#: Words that make a file name name something derived from a band rather than the band, whose other words are then
#: no band name: ``dem_slope.tif`` is no elevation, nor SNAP's ``elevation_angle`` tie-point grid, nor ``B08_ndvi.tif``
#: near infrared. SNAP names a radar product's other bands after their polarisation too (one ``.img`` a band in a
#: BEAM-DIMAP ``.data`` folder): an interferogram's coherence ``coh_IW1_VV_...`` (0..1) and phase ``Phase_ifg_...``
#: (radians, which pass for dB), and an SLC's complex parts ``i_IW1_VV`` and ``q_IW1_VV``, are no VV backscatter.
_DERIVED = frozenset({"angle", "slope", "aspect", "hillshade", "curvature", "roughness", "ndvi", "ndwi", "nbr", "evi",
                      "index", "ratio", "diff", "difference", "change", "std", "stdev", "uncertainty", "error", "count",
                      "coh", "coherence", "phase", "ifg", "unw", "unwrapped", "displacement",
                      # masks and model outputs named after the band they were made from (``VV_mask.tif``,
                      # ``B04_cloudmask.tif``, Sentinel-2's ``MSK_DETFOO_B04.jp2`` detector footprint)
                      "mask", "msk", "cloudmask", "detfoo", "qualit", "probability", "prob", "label", "prediction",
                      "classification", "minus", "plus", "sum",
                      "edge"})  # ``red_edge.tif`` is one of B05-B07, not red
#: The first word of SNAP's name for the in-phase and quadrature parts of a complex band.
_COMPLEX_PARTS = frozenset({"i", "q"})


def _file_names(src: DatasetReaderBase, index: int, filename: str | None, where: str = "file name",
                header_name: str | None = None) -> list[tuple[str, str]]:
    """``(name, where)`` candidates of band ``index`` in the order they are trusted."""
    names: list[tuple[str, str]] = [(header_name, "SNAP's DIMAP header")] if header_name else []
    if (stacked := stacked_band(description := src.descriptions[index - 1])) is not None:
        names.append((stacked.band, f"description, of Earth Engine image {stacked.image} (toBands)"))
    elif description:
        names.append((description, "description"))
    tags = {k.lower(): v for k, v in src.tags(index).items()}
    names += [(tags[k], f"tag {k.upper()}") for k in _NAME_TAGS if tags.get(k)]
    if filename and src.count == 1:  # one band a file: BigEarthNet, HLS, SNAP's .data folders name it
        names += [(name, where) for name in _names_in_file_name(filename)]
    return names


def _names_in_file_name(filename: str) -> list[str]:
    """What a single-band file's name may call its band, most trusted first: the stem, its last two words (Landsat's
    ``..._QA_PIXEL``, ``..._SR_B4``), then each word that names a band, where only one band is named."""
    stem = PurePath(filename).name.rsplit(".", 1)[0]
    if layers := landsat_collection_layers([stem]):  # ..._SR_QA_AEROSOL is a bitmask, not the aerosol band B01
        return [stem, *layers]
    tokens = [t for t in re.split(r"[._\-\s]+", stem) if t]
    last_two = ["_".join(tokens[-2:])] if len(tokens) > 2 else []
    named = {t: i for t in reversed(tokens) if (i := parse_name(t)) is not None and i.used}
    if len({(i.canonical, i.quality) for i in named.values()}) > 1:
        named = {}  # VV_VH.tif: which?
    elif _DERIVED.intersection(t.lower() for t in tokens) or tokens[0].lower() in _COMPLEX_PARTS:
        named = {t: i for t, i in named.items() if i.quality}  # a quality layer is a mask: SCL_mask.tif
    return [stem, *last_two, *named]


def band_key(name: str) -> str:
    """What ``name`` names (its model band or quality layer: ``B11`` for ``swir16``, ``SCL`` for ``SCL_20m``), or the
    name itself where it names neither: how copies of a band are told apart whatever a catalogue calls them."""
    named = parse_name(name)
    return (named.canonical or named.quality or name) if named is not None else name


def name_in_file_name(filename: str) -> str | None:
    """The band name a single-band file's name gives (``DEM`` of ``Copernicus_DSM_COG_10_N51_00_W001_00_DEM.tif``),
    or None: as an upload's file name would be read where the file says nothing of its band."""
    return next((n for n in _names_in_file_name(filename) if (i := parse_name(n)) is not None and i.used), None)


def _radar_file_named(filename: str | None, described: bool = False) -> BandIdentity | None:
    """What the name of a radar product's file (HyP3, OPERA, the Planetary Computer, S1-NRB, EO Browser) says of its
    one band, with the unit its description never states; None for any other name. A HyP3 name yields to what the
    file itself calls its band (``described``: a description or a SNAP header name)."""
    hyp3 = None if described else _hyp3(filename)
    return (hyp3 or _opera(filename) or _planetary_rtc(filename) or _s1_nrb(filename)
            or _eo_browser(filename))


class FileConvention(Protocol):
    """A tool's way of writing a file whose bands its own conventions name (FORCE's, sen2r's)."""

    def band(self, src: DatasetReaderBase, index: int) -> ProductBand | None: ...


def _of_product(band: ProductBand, rule: str) -> BandIdentity:
    """What a product's conventions say of a band (Planet's, DEA's, THEIA's, FORCE's, sen2r's), under ``rule``."""
    return BandIdentity(band.found, rule, band.canonical, band.quality)


def _dea(src: DatasetReaderBase, index: int, filename: str | None, header_name: str | None,
         dea: DeaProduct) -> BandIdentity | None:
    """Band ``index`` of a Digital Earth Australia file, by the names it carries, else by its band file's name."""
    for name, where in _file_names(src, index, None, header_name=header_name):
        if (found := dea.band(name)) is not None:
            return _of_product(found, f"{found.rule} ({where})")
    if src.count == 1 and filename and (found := dea.band_of_file(filename)) is not None:
        return _of_product(found, f"{found.rule} (file name)")
    return None


def _identify(src: DatasetReaderBase, index: int, filename: str | None, landsat: LandsatSensor | None,
              name_source: str, header_name: str | None, planet: PlanetProduct | None,
              dea: DeaProduct | None, conventions: Sequence[FileConvention], landsat_layer: str | None) -> BandIdentity:
    """What band ``index`` of ``src`` is. ``landsat_layer``: a Landsat Collection 2 layer among the request's bands
    where nothing says which Landsat it is (its band numbers are Landsat's, of no known sensor)."""
    if src.count == 1 and (named := _radar_file_named(filename, bool(header_name or src.descriptions[0]))) is not None:
        return named
    if src.driver == "SRTMHGT":  # its name is its corner (N51W001.hgt); the format holds nothing but elevation
        return BandIdentity(PurePath(filename or "").name or None, "SRTM / NASADEM .hgt elevation tile", "DEM")
    if src.count == 1 and not src.descriptions[0] and _3DEP.match(name := PurePath(filename or "").name):
        return BandIdentity(name, "USGS 3DEP elevation tile (file name)", "DEM")
    if src.count == 1 and (found := theia_band(filename)) is not None:
        return _of_product(found, found.rule)
    if planet is not None and (found := planet.band(src, index)) is not None:
        return _of_product(found, found.rule)
    if dea is not None and (found := _dea(src, index, filename, header_name, dea)) is not None:
        return found
    for convention in conventions:
        if (found := convention.band(src, index)) is not None:
            return _of_product(found, found.rule)
    wavelength = _wavelength_nm(src, index)
    named: BandIdentity | None = None
    candidates = _file_names(src, index, filename, name_source, header_name)
    for name, where in candidates:
        if (m := _MODIS_BAND.search(name)) and int(m.group(1)) in MODIS_WAVELENGTHS_NM:
            found = _by_wavelength(MODIS_WAVELENGTHS_NM[int(m.group(1))], m.group(0))
            return BandIdentity(m.group(0), f"MODIS band {int(m.group(1))} ({where}), {found.rule}", found.canonical)
        if landsat and (number := _landsat_number(name, landsat)) is not None:
            found = _by_wavelength(landsat.wavelengths_nm[number], name)
            return BandIdentity(name, f"Landsat {landsat.name} band {number} ({where}), {found.rule}", found.canonical)
        if landsat is None and (_LANDSAT_C2_NAME.match(name.strip())
                                or (landsat_layer and _LANDSAT_NUMBER.match(name.strip()))):
            what = (f"a Landsat band number here (the request holds {landsat_layer}, a Landsat Collection 2 layer)"
                    if landsat_layer else "a Landsat Collection 2 band name")
            raise LandsatSensorUnknownError(
                f"{filename or 'band ' + str(index)}: {name.strip()} is {what}, and its number means another band on "
                f"Landsat 8-9 (OLI: B4 red, B5 near infrared) than on Landsat 4-7 (TM/ETM+: B3 red, B4 near "
                f"infrared); the file does not say which Landsat it is: keep the product id in the file name (Earth "
                f"Engine names a download after the image: LC09_044034_20220111.SR_B4.tif), or pass bands= with the "
                f"bands' names (bands=red,green,blue)")
        if (named := parse_name(name)) is not None:
            named = replace(named, rule=f"{named.rule} ({where})")
            break
    if named is not None and wavelength is not None and named.canonical in BANDS and BANDS[named.canonical].fwhm_nm:
        by_wavelength = band_for_wavelength(wavelength[0])
        if by_wavelength != named.canonical:
            raise BandIdentityConflictError(
                f"band {index} is named {named.found!r} ({named.canonical}) but its metadata says {wavelength[1]} "
                f"({by_wavelength or 'no Sentinel-2 band'}); fix the file's metadata or pass bands= with one name per band"
            )
    if named is not None and named.quality == "FMASK" and src.nodatavals[index - 1] == 0:
        return replace(named, quality="DEA_FMASK", rule=f"{named.rule}, no data 0: Digital Earth Australia's Fmask "
                                                        f"classes (HLS's Fmask bits have fill 255)")
    if named is not None:
        return named
    if wavelength is not None:
        return _by_wavelength(*wavelength)
    found = [n for n, _ in candidates]
    return BandIdentity(found[0] if found else None, "no band name or wavelength the service knows" +
                        (f" (found {found})" if found else " (no description, name tag or wavelength)"))


def identify_bands(
    src: DatasetReaderBase, filename: str | None = None, bands: Sequence[str] | None = None,
    name_source: str = "file name", header_names: Sequence[str] | None = None, planet: PlanetProduct | None = None,
    request_names: Sequence[str | None] | None = None, landsat: LandsatSensor | None | Literal["ask"] = "ask",
) -> list[BandIdentity]:
    """The identity of every band of ``src``; ``bands`` (one name per band, ``-`` to skip) overrides the file.

    ``filename`` names a single-band ``src`` when nothing inside it does (``name_source`` says what it
    is: a file name, or the variable name of a NetCDF/HDF5 subdataset). ``header_names``: one a band, the
    names a header GDAL does not read gives them (SNAP's, ``mapex_serve.dimap``), trusted first. ``planet``: the Planet
    asset the file is (``mapex_serve.planet.planet_product``), whose descriptions or band order name its bands.
    ``request_names``: the band names of the whole request (``request_band_names``), where a Landsat Collection 2
    layer says its band numbers are Landsat's; by default the file's own. ``landsat``: the file's sensor where the
    caller has asked ``landsat_sensor`` already (a request asks once a file), else asked here.
    """
    dea = dea_product((filename, src.name), [*src.descriptions, *(bands or ())])
    names = src.descriptions if request_names is None else request_names
    if landsat == "ask":
        landsat = landsat_sensor(src, filename, names)
    if bands is not None:
        if len(bands) != src.count:
            raise BandNamesMissingError(
                f"bands= gives {len(bands)} names ({list(bands)}) for {src.count} bands; give one name per band in "
                f"file order, '-' for a band to skip"
            )
        # a file whose product's name states its unit (iw-vv.rtc.tiff: linear) keeps it when bands= names the same
        # band: a STAC item's asset keys arrive as bands= (vv, vh) and say nothing of units
        by_name = _radar_file_named(filename) if src.count == 1 else None
        out = []
        for name in bands:
            if name.strip() in ("-", ""):
                out.append(BandIdentity(name, "skipped with '-' in bands="))
                continue
            if dea is not None and (found := dea.band(name)) is not None:
                out.append(_of_product(found, f"bands= parameter ({found.rule})"))
                continue
            if landsat and (number := _landsat_number(name, landsat)) is not None:  # a STAC item's HLS L30 "B05"
                found = _by_wavelength(landsat.wavelengths_nm[number], name)
                out.append(replace(found, rule=f"bands= parameter (Landsat {landsat.name} band {number}, {found.rule})"))
                continue
            parsed = parse_name(name)
            if parsed is None or not parsed.used:
                resolve_band(name)  # raises UnknownBandError listing the accepted names
            rule = f"bands= parameter ({parsed.rule})"
            if by_name and by_name.canonical == parsed.canonical:  # what the name says beside it: unit, backscatter
                parsed = replace(by_name, unit_hint=parsed.unit_hint or by_name.unit_hint,
                                 backscatter=parsed.backscatter or by_name.backscatter)
                rule = f"{rule}, {by_name.rule}"
            out.append(replace(parsed, found=name, rule=rule))
        return out
    stacked = [stacked_band(d) for d in src.descriptions]  # Earth Engine's toBands(): <image id>_<band>
    image = check_one_image([b if b is not None and _names_a_band(b.band) else None for b in stacked])
    conventions = [c for c in (force_file(src, filename), sen2r_file(src, filename)) if c is not None]
    layers = landsat_collection_layers(names) if landsat is None else []
    landsat_layer = layers[0] if layers else None
    identities = [_identify(src, i, filename, landsat, name_source, header_names[i - 1] if header_names else None,
                            planet, dea, conventions, landsat_layer) for i in range(1, src.count + 1)]
    return [replace(identity, image=image) if image and b is not None else identity
            for identity, b in zip(identities, stacked, strict=True)]


def _names_a_band(name: str) -> bool:
    """Whether ``name`` is a band name this module reads (``B4``, ``SR_B4``, ``VV``, ``QA_PIXEL``)."""
    return parse_name(name) is not None or _LANDSAT_NUMBER.match(name) is not None


def request_band_names(files: Sequence[tuple[str | None, DatasetReaderBase]]) -> list[str | None]:
    """The band names of a request's files (name, dataset): their descriptions, and each single-band file's stem
    (``download.QA_PIXEL`` of Earth Engine's per-band ZIP)."""
    return [name for file, src in files for name in (
        [*src.descriptions, PurePath(file).name.rsplit(".", 1)[0]] if file and src.count == 1 else src.descriptions)]


def missing_names_error(count: int, found: Sequence[str | None], given: Sequence[str] | None = None,
                        declined: Sequence[BandIdentity] = ()) -> BandNamesMissingError:
    """The error for a raster whose bands could not be named, saying exactly how to name them (and, for names that
    a convention knows but the models do not read, ``declined``, why not)."""
    by_rule: dict[str, list[str]] = {}
    for i in declined:
        by_rule.setdefault(i.rule, []).append(str(i.found))
    why = "; ".join(f"{', '.join(names)}: {rule}" for rule, names in by_rule.items())
    return BandNamesMissingError(
        f"cannot name the file's {count} bands (descriptions or name tags found: {list(found)}"
        + (f", names given: {list(given)}" if given else "")
        + (f"; known but not read: {why}" if why else "")
        + "); pass bands= with one name per band in file order (e.g. bands=red,green,blue or "
        "bands=B04,B03,B02), or set each band's description to its name (rasterio: "
        "dst.set_band_description(i, 'B04'); GDAL: band.SetDescription('B04'))"
    )


def band_names(src: DatasetReaderBase, bands: Sequence[str] | None = None) -> tuple[str, ...]:
    """Canonical model band of every band of ``src``: training chips and benchmarks, where each band must be one."""
    if bands is not None and len(bands) != src.count:
        raise missing_names_error(src.count, list(src.descriptions), bands)
    identities = identify_bands(src, None, bands)
    if any(i.canonical is None for i in identities):
        raise missing_names_error(src.count, [i.found for i in identities], bands)
    for i in identities:
        if i.unit_hint is not None and i.unit_hint != BANDS[i.canonical].unit:
            raise UnitError(f"band {i.found!r} holds {i.unit_hint} values ({i.rule}); training chips must hold "
                            f"{BANDS[i.canonical].unit}: convert them first (SNAP: Raster > Data Conversion > "
                            f"Linear to/from dB)")
    names = [i.canonical for i in identities]
    if len(set(names)) != len(names):
        return resolve_bands(names)  # raises DuplicateBandError naming the band
    return tuple(names)


def scale_offset(src: DatasetReaderBase, index: int, canonical: str) -> tuple[float, float]:
    """``physical = stored * scale + offset`` for band ``index`` (1-based): the file's own, else the band table's.

    GDAL cannot store an identity scale (it writes none), so (1, 0) means "unset" here; the
    service's unit checks (``mapex_serve.units``) catch files whose values are already physical.
    """
    scale, offset = src.scales[index - 1], src.offsets[index - 1]
    if (scale, offset) == (1.0, 0.0):
        return BANDS[canonical].scale, BANDS[canonical].offset
    return scale, offset


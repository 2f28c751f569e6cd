"""The band vocabulary: canonical band names, the aliases users write, and the modality groups.

The model, the exporter and the service all read this one table, so a band called ``red`` in an
uploaded GeoTIFF, ``B04`` in a manifest and ``S2_B04`` in a training chip are the same band.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from mapex_serve.errors import DuplicateBandError, UnknownBandError, UnknownModalityError

__all__ = [
    "BANDS",
    "MODIS_WAVELENGTHS_NM",
    "LANDSAT_C2_LAYERS",
    "OLI_WAVELENGTHS_NM",
    "TM_ETM_WAVELENGTHS_NM",
    "PLAUSIBLE",
    "QUALITY_LAYERS",
    "ProductBand",
    "QualityLayer",
    "Threshold",
    "band_for_wavelength",
    "canonical_or_none",
    "landsat_collection_layers",
    "quality_layer",
    "MODALITIES",
    "MODALITY_NAMES",
    "Band",
    "band",
    "bands_of",
    "modality_of",
    "modalities_covered",
    "resolve_band",
    "resolve_bands",
    "resolve_modality",
]

Sensor = Literal["S2", "S1", "DEM"]
Unit = Literal["reflectance", "dB", "m"]

#: Physical range the 2nd..98th percentiles of a real scene fall in. Surface reflectance is 0..1
#: (L2A may dip slightly below 0 and exceed 1 over snow and specular water); Sentinel-1 sigma0 over
#: land and water spans about -35..+5 dB (ESA Sentinel-1 User Handbook), and after thermal-noise
#: removal the darkest water sits at the product's floor, often clipped near -50 dB; elevations lie
#: between the Dead Sea shore (-430 m) and Everest (8849 m).
PLAUSIBLE: dict[str, tuple[float, float]] = {"reflectance": (-0.2, 1.6), "dB": (-70.0, 20.0), "m": (-500.0, 9000.0)}


@dataclass(frozen=True)
class Band:
    """One canonical band and how its stored values map to physical units.

    ``physical = stored * scale + offset``: Sentinel-2 L2A stores reflectance x 10000, Sentinel-1
    is stored as backscatter in dB and the DEM in metres.
    """

    name: str
    sensor: Sensor
    description: str
    unit: Unit
    scale: float = 1.0
    offset: float = 0.0
    wavelength_nm: float | None = None
    aliases: tuple[str, ...] = ()
    #: Full width at half maximum of the spectral band (optical bands only).
    fwhm_nm: float | None = None

    @property
    def plausible(self) -> tuple[float, float]:
        """Range that real scenes' 2nd..98th percentiles of this band fall in, in ``unit``."""
        return PLAUSIBLE[self.unit]


_S2_SCALE = 1e-4

# Central wavelengths and widths: the table of GDAL's SENTINEL2 driver (Sentinel-2 MSI, ESA).
# Aliases cover the names real products use: STAC ``eo:common_name`` (coastal, blue, ... nir08,
# swir16, swir22, and the eo v2 red-edge names rededge071/075/078), Earth Search asset keys
# (rededge1..3), Earth Engine and Sentinel Hub (``B4``, ``B8A``, ``VV``, ``elevation``, ``DEM``) and
# HLS S30 (the Sentinel-2 names). Short forms ``B4``/``S2_B04`` are derived in ``_build_lookup``.
BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("B01", "S2", "coastal aerosol", "reflectance", _S2_SCALE, 0.0, 443, ("coastal", "aerosol", "coastal_aerosol"), 20),
        Band("B02", "S2", "blue", "reflectance", _S2_SCALE, 0.0, 490, ("blue",), 65),
        Band("B03", "S2", "green", "reflectance", _S2_SCALE, 0.0, 560, ("green",), 35),
        Band("B04", "S2", "red", "reflectance", _S2_SCALE, 0.0, 665, ("red",), 30),
        Band("B05", "S2", "red edge 1", "reflectance", _S2_SCALE, 0.0, 705, ("rededge1", "red_edge_1", "re1", "rededge071"), 15),
        Band("B06", "S2", "red edge 2", "reflectance", _S2_SCALE, 0.0, 740, ("rededge2", "red_edge_2", "re2", "rededge075"), 15),
        Band("B07", "S2", "red edge 3", "reflectance", _S2_SCALE, 0.0, 783, ("rededge3", "red_edge_3", "re3", "rededge078"), 20),
        Band("B08", "S2", "near infrared", "reflectance", _S2_SCALE, 0.0, 842, ("nir", "nir1", "near_infrared"), 115),
        Band("B8A", "S2", "narrow near infrared", "reflectance", _S2_SCALE, 0.0, 865, ("nir08", "nir2", "narrow_nir", "nir_narrow", "rededge4", "red_edge_4", "B08A"), 20),
        Band("B09", "S2", "water vapour", "reflectance", _S2_SCALE, 0.0, 945, ("nir09", "water_vapour", "water_vapor"), 20),
        Band("B10", "S2", "cirrus", "reflectance", _S2_SCALE, 0.0, 1375, ("cirrus", "swir_cirrus"), 30),
        Band("B11", "S2", "short-wave infrared 1", "reflectance", _S2_SCALE, 0.0, 1610, ("swir1", "swir_1", "swir16"), 90),
        Band("B12", "S2", "short-wave infrared 2", "reflectance", _S2_SCALE, 0.0, 2190, ("swir2", "swir_2", "swir22"), 180),
        # "sigma0_vv" is deliberately not an alias: SNAP's Sigma0_VV is linear power (see rasters.py).
        Band("VV", "S1", "Sentinel-1 VV backscatter", "dB", aliases=("vv_db", "s1_vv")),
        Band("VH", "S1", "Sentinel-1 VH backscatter", "dB", aliases=("vh_db", "s1_vh")),
        Band("DEM", "DEM", "elevation", "m", aliases=("elevation", "height", "altitude", "srtm", "copdem", "dsm", "dtm", "fabdem", "nasadem",
                                                              "aw3d30", "cop30", "cop90", "srtmgl1", "srtmgl3", "elv")),
    )
}

#: The modality groups of the design brief, each an ordered tuple of canonical band names.
MODALITIES: dict[str, tuple[str, ...]] = {
    "RGB": ("B04", "B03", "B02"),
    "RED_EDGE": ("B05", "B06", "B07"),
    "NIR": ("B08", "B8A"),
    "SWIR": ("B11", "B12"),
    "SAR": ("VV", "VH"),
    "ELE": ("DEM",),
}
MODALITY_NAMES: tuple[str, ...] = tuple(MODALITIES)

_MODALITY_ALIASES = {"REDEDGE": "RED_EDGE", "RE": "RED_EDGE", "S1": "SAR", "DEM": "ELE", "ELEVATION": "ELE"}


def _key(name: str) -> str:
    """Fold case and separators so that ``S2_B04``, ``s2-b04`` and ``S2 B04`` compare equal."""
    return re.sub(r"[\s\-.]+", "_", name.strip().lower())


def _build_lookup() -> dict[str, str]:
    lookup: dict[str, str] = {}
    for b in BANDS.values():
        keys = {b.name, *b.aliases}
        if b.sensor == "S2":
            # B04 -> b4, b04, s2_b04, s2_b4, sentinel2_b04; B8A -> b8a, s2_b8a.
            short = b.name[0] + b.name[1:].lstrip("0")
            for core in (b.name, short):
                keys |= {core, f"S2_{core}", f"sentinel2_{core}", f"sentinel_2_{core}"}
        elif b.sensor == "S1":
            keys |= {f"S1_{b.name}", f"sentinel1_{b.name}"}
        for k in keys:
            k = _key(k)
            if lookup.get(k, b.name) != b.name:
                raise RuntimeError(f"alias {k!r} names both {lookup[k]} and {b.name}")
            lookup[k] = b.name
    return lookup


_LOOKUP = _build_lookup()


def _accepted() -> str:
    return "; ".join(f"{b.name} ({', '.join(b.aliases) or b.description})" for b in BANDS.values())


def resolve_band(name: str) -> str:
    """Canonical name of ``name`` (``red`` -> ``B04``); raises ``UnknownBandError`` listing the accepted names."""
    canonical = _LOOKUP.get(_key(str(name)))
    if canonical is None:
        raise UnknownBandError(f"unknown band name {name!r}; accepted band names (with aliases): {_accepted()}")
    return canonical


def resolve_bands(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical names of several bands, in order; two names for one band is an error."""
    names = list(names)
    resolved: list[str] = []
    for name in names:
        canonical = resolve_band(name)
        if canonical in resolved:
            raise DuplicateBandError(f"band {name!r} resolves to {canonical}, which is already present: {list(names)}")
        resolved.append(canonical)
    return tuple(resolved)


def band(name: str) -> Band:
    """The ``Band`` record of any accepted name."""
    return BANDS[resolve_band(name)]


def resolve_modality(name: str) -> str:
    """Canonical modality name (``rgb`` -> ``RGB``, ``s1`` -> ``SAR``)."""
    key = _key(name).upper()
    key = _MODALITY_ALIASES.get(key, key)
    if key not in MODALITIES:
        raise UnknownModalityError(f"unknown modality {name!r}; accepted modalities: {', '.join(MODALITY_NAMES)}")
    return key


def bands_of(modalities: Iterable[str]) -> tuple[str, ...]:
    """Ordered canonical bands of the given modalities, modality by modality."""
    return tuple(b for m in modalities for b in MODALITIES[resolve_modality(m)])


def modality_of(band_name: str) -> str | None:
    """The modality group a band belongs to, or None (B01, B09 and B10 belong to none)."""
    canonical = resolve_band(band_name)
    return next((m for m, members in MODALITIES.items() if canonical in members), None)


def modalities_covered(band_names: Sequence[str]) -> tuple[str, ...]:
    """Modalities whose every band is among ``band_names`` (names are resolved first)."""
    present = set(resolve_bands(band_names))
    return tuple(m for m, members in MODALITIES.items() if present.issuperset(members))


# --- bands found by wavelength --------------------------------------------------------------------


def band_for_wavelength(nm: float) -> str | None:
    """The Sentinel-2 band whose passband holds ``nm``: within half its width of its centre (nearest wins).

    The rule that maps other sensors' bands (Landsat OLI, HLS L30, hyperspectral files with ENVI or
    GDAL ``IMAGERY`` wavelengths) to the bands the model was trained on.
    """
    inside = [b for b in BANDS.values() if b.fwhm_nm and abs(nm - b.wavelength_nm) <= b.fwhm_nm / 2]
    return min(inside, key=lambda b: abs(nm - b.wavelength_nm)).name if inside else None


#: Landsat 8/9 OLI (and TIRS) band number -> central wavelength in nm (USGS Landsat 8-9 OLI/TIRS
#: Collection 2 Level-2 Science Product Guide). HLS L30 names its bands ``Bnn`` after these numbers,
#: so HLS L30 ``B05`` is OLI near infrared (865 nm), not Sentinel-2 red edge 1.
OLI_WAVELENGTHS_NM: dict[int, float] = {
    1: 443.0, 2: 482.0, 3: 561.5, 4: 654.5, 5: 865.0, 6: 1608.5, 7: 2200.5, 8: 589.5, 9: 1373.5,
    10: 10895.0, 11: 12005.0,
}
#: Landsat 4-5 TM and 7 ETM+ band number -> central wavelength in nm (the middle of each band's range in the
#: USGS Landsat 4-7 Collection 2 Level-2 Science Product Guide): their band 4 is near infrared (Sentinel-2 B08),
#: 5 and 7 short-wave infrared, 6 thermal; read as OLI's or Sentinel-2's numbers they would be wrong bands.
TM_ETM_WAVELENGTHS_NM: dict[int, float] = {1: 485.0, 2: 560.0, 3: 660.0, 4: 835.0, 5: 1650.0, 6: 11450.0, 7: 2220.0}
#: Band names only Landsat Collection 2 gives its layers (USGS's products, Earth Engine's collections), each with the
#: sensor it belongs to where only one has it: a request that holds one numbers its other bands as Landsat does
#: (Earth Engine's ``LANDSAT/LC08/C02/T1_TOA`` exported whole, or as its per-band ZIP: ``B5`` near infrared, ``B10``
#: thermal), not as Sentinel-2 does. Landsat 8-9's thermal ``B10`` and ``B11`` tell OLI/TIRS beside them.
LANDSAT_C2_LAYERS: dict[str, str | None] = {
    "QA_PIXEL": None, "QA_RADSAT": None, "SR_QA_AEROSOL": "OLI", "ST_B10": "OLI", "ST_B6": "TM/ETM+",
    "SR_ATMOS_OPACITY": "TM/ETM+", "SR_CLOUD_QA": "TM/ETM+", "B6_VCID_1": "TM/ETM+", "B6_VCID_2": "TM/ETM+",
}
#: One of them ending a band's name or a single-band file's (``download.QA_PIXEL``, Earth Engine's per-band ZIP).
_LANDSAT_C2_LAYER = re.compile(rf"(?:^|[._\-\s])({'|'.join(LANDSAT_C2_LAYERS)})$", re.I)


def landsat_collection_layers(names: Iterable[str | None]) -> list[str]:
    """The layers only Landsat Collection 2 gives (``QA_PIXEL``) that end ``names``: the request's band names, and
    the stems of its single-band files."""
    return [m.group(1).upper() for n in names if n and (m := _LANDSAT_C2_LAYER.search(n.strip()))]


#: MODIS land band number -> the middle of its range in nm (NASA's MODIS specifications; MOD09's ``sur_refl_b01`` ...
#: ``b07``, MCD43A4's ``Nadir_Reflectance_Band1`` ... ``7``): band 1 is red, 2 near infrared, 3 blue, 4 green; read as
#: Sentinel-2's numbers ``sur_refl_b02`` was blue and ``b03`` green. Band 1 (620-670 nm) is centred outside
#: Sentinel-2 B04 (650-680 nm), band 5 (1240 nm) inside no band.
MODIS_WAVELENGTHS_NM: dict[int, float] = {1: 645.0, 2: 858.5, 3: 469.0, 4: 555.0, 5: 1240.0, 6: 1640.0, 7: 2130.0}


@dataclass(frozen=True)
class ProductBand:
    """What one band of a product's file is by the product's own conventions (Planet's asset table, DEA's
    measurements), in the terms of ``rasters.BandIdentity``: the name found, the rule, the band or quality layer."""

    found: str
    rule: str
    canonical: str | None = None
    quality: str | None = None


# --- quality layers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """Where a continuous quality layer (a cloud probability, a clear score) turns a pixel invalid.

    Its producers leave the cut to the user and suggest one; ``default`` is theirs, in the layer's own
    values (``span``), so that a request's ``mask_threshold=`` reads as their documentation writes it.
    """

    default: float
    #: ``above``: a probability of cloud, invalid past the cut; ``below``: a score of clear sky, invalid under it.
    invalid: Literal["above", "below"]
    span: tuple[float, float]
    #: Whose suggestion ``default`` is.
    source: str
    #: The producer writes whole numbers (a percentage, a byte): fractions mean the layer was rescaled.
    integral: bool = False


@dataclass(frozen=True)
class QualityLayer:
    """A band that says which pixels to trust, not a model input: Sentinel-2 SCL, HLS Fmask, a data mask.

    A pixel is invalid when its value is one of ``invalid_values``, has one of ``invalid_bits`` set
    (each with the reason the response reports) or lies past the layer's ``threshold``.
    """

    name: str
    description: str
    aliases: tuple[str, ...] = ()
    invalid_values: dict[int, str] | None = None
    invalid_bits: dict[int, str] | None = None
    threshold: Threshold | None = None


QUALITY_LAYERS: dict[str, QualityLayer] = {
    q.name: q
    for q in (
        # Sentinel-2 L2A Scene Classification (ESA, Sentinel-2 L2A Product Format Specification):
        # 2 dark/cast shadow, 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 11 snow stay valid.
        QualityLayer("SCL", "Sentinel-2 L2A scene classification",
                     ("scene_classification", "scl_20m", "quality_scene_classification"),  # the last: SNAP's
                     invalid_values={0: "SCL no data", 1: "SCL saturated or defective", 3: "SCL cloud shadow",
                                     8: "SCL cloud (medium probability)", 9: "SCL cloud (high probability)",
                                     10: "SCL thin cirrus"}),
        # HLS v2.0 Fmask bits (HLS Product User Guide v2.0, table 9): 0 cirrus, 1 cloud, 2 adjacent
        # to cloud or shadow, 3 cloud shadow; 4 snow/ice and 5 water stay valid; 255 is fill.
        QualityLayer("FMASK", "HLS Fmask quality bits", ("fmask",),
                     invalid_values={255: "Fmask fill"},
                     invalid_bits={0: "Fmask cirrus", 1: "Fmask cloud", 2: "Fmask adjacent to cloud or shadow",
                                   3: "Fmask cloud shadow"}),
        # Landsat Collection 2 QA_PIXEL bits (USGS Landsat 8-9 and 4-7 Collection 2 Level-2 Science Product Guides):
        # 0 fill, 1 dilated cloud, 2 cirrus (OLI only), 3 cloud, 4 cloud shadow; 5 snow, 6 clear, 7 water stay valid.
        QualityLayer("QA_PIXEL", "Landsat Collection 2 pixel quality bits",
                     invalid_bits={0: "QA_PIXEL fill", 1: "QA_PIXEL dilated cloud", 2: "QA_PIXEL cirrus",
                                   3: "QA_PIXEL cloud", 4: "QA_PIXEL cloud shadow"}),
        # Sentinel Hub's dataMask output (1 data, 0 no data).
        QualityLayer("DATAMASK", "Sentinel Hub dataMask", ("datamask", "data_mask"), invalid_values={0: "dataMask no data"}),
        # Sentinel Hub's s2cloudless cloud mask band (its Cloud Masks user guide): 0 no clouds, 1 clouds, 255 no data.
        QualityLayer("CLM", "Sentinel Hub cloud mask (s2cloudless)",
                     invalid_values={1: "CLM cloud", 255: "CLM no data"}),
        # An alpha band that GDAL does not take as the file's mask (Planet's basemap quads: blue, green, red, near
        # infrared, alpha): 0 is no data.
        QualityLayer("ALPHA", "alpha band", invalid_values={0: "alpha band: no data"}),
        # Earth Engine's Sentinel-2 QA60 (COPERNICUS/S2_HARMONIZED, S2_SR_HARMONIZED): bit 10 opaque clouds, 11 cirrus.
        QualityLayer("QA60", "Sentinel-2 QA60 cloud mask bits (Earth Engine)",
                     invalid_bits={10: "QA60 opaque cloud", 11: "QA60 cirrus"}),
        # ESA's cloud classification from baseline 04.00, which Earth Engine gives as bands (0 no clouds, 1 clouds; its
        # QA60 is repacked from them since February 2024); MSK_CLASSI_SNOW_ICE stays valid. A band file's last two
        # words name it (download.MSK_CLASSI_OPAQUE.tif).
        QualityLayer("MSK_CLASSI_OPAQUE", "Sentinel-2 opaque cloud classification", ("classi_opaque",),
                     invalid_values={1: "MSK_CLASSI opaque cloud"}),
        QualityLayer("MSK_CLASSI_CIRRUS", "Sentinel-2 cirrus classification", ("classi_cirrus",),
                     invalid_values={1: "MSK_CLASSI cirrus"}),
        # Digital Earth Australia's masks (its product definitions' flags_definition; mapex_serve.dea): Fmask's classes,
        # not HLS's bits (0 no data, 1 valid, 2 cloud, 3 shadow; 4 snow and 5 water stay valid), s2cloudless (0 no data,
        # 1 valid, 2 cloud) and contiguity (0: a band lacks data there).
        QualityLayer("DEA_FMASK", "Digital Earth Australia Fmask classes", ("oa_fmask",),
                     invalid_values={0: "DEA Fmask no data", 2: "DEA Fmask cloud", 3: "DEA Fmask cloud shadow"}),
        QualityLayer("DEA_S2CLOUDLESS", "Digital Earth Australia s2cloudless mask",
                     ("oa_s2cloudless_mask", "s2cloudless_mask"),
                     invalid_values={0: "DEA s2cloudless no data", 2: "DEA s2cloudless cloud"}),
        QualityLayer("DEA_CONTIGUITY", "Digital Earth Australia contiguity",
                     ("oa_nbart_contiguity", "nbart_contiguity", "oa_nbar_contiguity", "nbar_contiguity"),
                     invalid_values={0: "DEA contiguity: a band lacks data"}),
        # Planet's usable data mask UDM2: a band of 0/1 a class (docs.planet.com, UDM2); mapex_serve.planet says which
        # bands of a UDM2 file these are. Snow and (light) haze stay valid.
        QualityLayer("UDM2_CLOUD", "Planet UDM2 cloud band", invalid_values={1: "UDM2 cloud"}),
        QualityLayer("UDM2_SHADOW", "Planet UDM2 cloud shadow band", invalid_values={1: "UDM2 cloud shadow"}),
        QualityLayer("UDM2_HEAVY_HAZE", "Planet UDM2.0 heavy haze band", invalid_values={1: "UDM2 heavy haze"}),
        # NASA JPL OPERA RTC-S1's mask layer (..._mask.tif beside ..._VV.tif; its flag_values and flag_meanings, as
        # asf_search and Earth Engine's catalogue list them): 0 not affected, 1 shadow, 2 layover, 3 both, 255 fill.
        QualityLayer("OPERA_RTC_MASK", "OPERA RTC-S1 layover and shadow mask",
                     invalid_values={1: "OPERA RTC radar shadow", 2: "OPERA RTC layover",
                                     3: "OPERA RTC layover and shadow", 255: "OPERA RTC mask no data"}),
        # ASF HyP3 RTC's layover/shadow map (..._ls_map.tif, HyP3 RTC product guide): a sum of flags, 1 tested, 2 look
        # angle < slope, 4 layover, 8 look angle < opposite slope, 16 shadow; 0 is untested (outside the scene).
        QualityLayer("HYP3_LS_MAP", "ASF HyP3 RTC layover and shadow map",
                     invalid_bits={2: "HyP3 RTC layover", 4: "HyP3 RTC radar shadow"}),
        # THEIA's MAJA masks (mapex_serve.theia): CLM's bits 0 clouds (except the thinnest) and all cloud shadows, 4 the
        # thinnest clouds, 7 high clouds (its bits 1-3, 5 and 6 say which clouds or shadows, within bit 0); EDG's 1 is
        # outside the image. Not Sentinel Hub's CLM above, whose 1 is a cloud and whose 3 would be clear.
        QualityLayer("THEIA_CLM", "THEIA MAJA cloud mask bits",
                     invalid_bits={0: "THEIA CLM cloud or cloud shadow", 4: "THEIA CLM thin cloud",
                                   7: "THEIA CLM high cloud"}),
        QualityLayer("THEIA_EDG", "THEIA MAJA edge mask", invalid_values={1: "THEIA EDG outside the image"}),
        # THEIA's WASP L3A flags (a monthly synthesis's FLG): 0 no data, 1 cloud or shadow on every date; 2 snow,
        # 3 water and 4 land are what the synthesis saw, and stay valid.
        QualityLayer("THEIA_FLG", "THEIA WASP synthesis flags",
                     invalid_values={0: "THEIA FLG no data", 1: "THEIA FLG cloud or shadow on every date"}),
        # FORCE's quality assurance information (mapex_serve.force): bit 0 no data, bits 1-2 the cloud state (1 buffered,
        # 2 opaque, 3 cirrus), bit 3 cloud shadow; snow, water and the other flags stay valid.
        QualityLayer("FORCE_QAI", "FORCE quality assurance bits", ("qai",),
                     invalid_bits={0: "FORCE QAI no data", 1: "FORCE QAI cloud (buffered or cirrus)",
                                   2: "FORCE QAI cloud (opaque or cirrus)", 3: "FORCE QAI cloud shadow"}),
        # Continuous layers, masked past a threshold (mapex_serve.thresholds; a request's mask_threshold= moves it).
        # Google's Cloud Score+ (Earth Engine's GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED, linked to Sentinel-2 images):
        # cs and cs_cdf grade a pixel from 0 (occluded: clouds, their shadows, haze) to 1 (clear); Google's examples
        # keep cs >= 0.60 (or cs_cdf).
        QualityLayer("CS", "Cloud Score+ clear score", ("cloud_score", "cloudscore"),
                     threshold=Threshold(0.6, "below", (0.0, 1.0), "Google's Cloud Score+ examples")),
        QualityLayer("CS_CDF", "Cloud Score+ clear likelihood",
                     threshold=Threshold(0.6, "below", (0.0, 1.0), "Google's Cloud Score+ examples")),
        # Sentinel Hub's CLP: s2cloudless's cloud probability x 255 (its Cloud Masks guide); s2cloudless masks a
        # probability above 0.4, 102 of 255.
        QualityLayer("CLP", "Sentinel Hub cloud probability (s2cloudless)",
                     threshold=Threshold(102, "above", (0.0, 255.0), "s2cloudless's threshold 0.4", integral=True)),
        # Sen2Cor's cloud confidence, 0-100 %: a SAFE's QI_DATA/MSK_CLDPRB_20m.jp2, the MSK_CLDPRB band of Earth Engine's
        # COPERNICUS/S2_SR_HARMONIZED, Sentinel Hub's L2A band CLD; cut at half, as Earth Engine's tutorial cuts its
        # s2cloudless probabilities.
        QualityLayer("MSK_CLDPRB", "Sentinel-2 L2A cloud probability (Sen2Cor, %)",
                     ("cldprb", "msk_cldprb_20m", "msk_cldprb_60m", "cld"),
                     threshold=Threshold(50, "above", (0.0, 100.0), "the 50 % of Earth Engine's cloud masking tutorial",
                                         integral=True)),
        # Digital Earth Australia's s2cloudless probability (its oa_s2cloudless_prob, 0-1 floats), cut at s2cloudless's 0.4.
        QualityLayer("DEA_S2CLOUDLESS_PROB", "Digital Earth Australia s2cloudless probability",
                     ("oa_s2cloudless_prob", "s2cloudless_prob"),
                     threshold=Threshold(0.4, "above", (0.0, 1.0), "s2cloudless's threshold 0.4")),
        # Earth Engine's COPERNICUS/S2_CLOUD_PROBABILITY (s2cloudless, 0-100 %) band, as its tutorial adds it to an
        # image (``probability``), cut there at 50 %.
        QualityLayer("S2CLOUDLESS_PROBABILITY", "Earth Engine's Sentinel-2 cloud probability (s2cloudless, %)",
                     ("probability", "s2_cloud_probability"),
                     threshold=Threshold(50, "above", (0.0, 100.0), "Earth Engine's s2cloudless tutorial", integral=True)),
        # Planet's legacy unusable data mask (..._DN_udm.tif): bit 0 blackfill, 1 cloud, 2-7 missing or suspect
        # data in band 1-6.
        QualityLayer("PLANET_UDM", "Planet legacy unusable data mask bits",
                     invalid_bits={0: "Planet UDM blackfill", 1: "Planet UDM cloud",
                                   **{bit: f"Planet UDM missing or suspect data in band {bit - 1}" for bit in range(2, 8)}}),
    )
}

_QUALITY_LOOKUP = {_key(k): q.name for q in QUALITY_LAYERS.values() for k in (q.name, *q.aliases)}


def quality_layer(name: str) -> QualityLayer | None:
    """The quality layer called ``name`` (``SCL``, ``Fmask``, ``dataMask``), or None."""
    found = _QUALITY_LOOKUP.get(_key(str(name)))
    return QUALITY_LAYERS[found] if found else None


def canonical_or_none(name: str) -> str | None:
    """Canonical name of ``name`` when the vocabulary knows it, else None (no error)."""
    return _LOOKUP.get(_key(str(name)))

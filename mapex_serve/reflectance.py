"""Which reflectance a Sentinel-2 file holds, top-of-atmosphere (Level-1C) or surface (Level-2A), against the one
the specialist learned.

Both levels store reflectance x 10000 with the same offset, so their values pass every plausibility check, but
the atmosphere's haze makes Level-1C's visible bands brighter (blue by several hundredths over vegetation) than
any a model trained on Level-2A saw, and it answers without a sign of it: a wrong level is a silent error, like a
wrong unit. A file is refused (422) when what it says of its level is not the model's, unless the request says
``reflectance=as-is``. What files say of it:

- GDAL's SENTINEL2 driver's metadata, which ``gdal_translate`` copies into the GeoTIFF it writes:
  ``PROCESSING_LEVEL=Level-1C`` or ``Level-2A``, ``PRODUCT_TYPE=S2MSI1C`` or ``S2MSI2A``;
- a SAFE's Level-1C band file name, ``T33UUP_20230101T100031_B02.jp2`` (Level-2A's carry their resolution,
  ``..._B02_10m.jp2``);
- the level named as a word of the file's name or path: a SAFE product or granule (``S2A_MSIL1C_...``,
  ``L1C_T33UUP_...``), a catalogue's bucket or path (Earth Search's ``sentinel-s2-l1c``, the Copernicus Data
  Space's ``Sentinel-2/MSI/L1C/...``), an export named for it (``s2_l2a_2023.tif``).

Where no file says, the request's bands may: the cirrus band B10, which only Level-1C keeps (and HLS), or the
scene classification SCL, which only Level-2A has (``bands_say``): an export of every band of Earth Engine's
``COPERNICUS/S2_HARMONIZED`` says so by its B10. A request that says none of these is taken as what the model
learned.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from mapex_serve.bands import BANDS
from mapex_serve.errors import MapexError
from mapex_serve.rasters import word_in_name
from mapex_serve.scene_reader import InputBand
from mapex_serve.units import SAFE_BAND_FILE, landsat_level1

__all__ = ["Level", "LevelEvidence", "ReflectanceLevelError", "bands_say", "check_level", "level_of", "refusal"]

Level = Literal["surface", "top-of-atmosphere"]

_PRODUCT = {"Level-1C": "top-of-atmosphere", "S2MSI1C": "top-of-atmosphere",
            "Level-2A": "surface", "S2MSI2A": "surface"}
_WORDS: dict[str, Level] = {"l1c": "top-of-atmosphere", "msil1c": "top-of-atmosphere", "toa": "top-of-atmosphere",
                            "l2a": "surface", "msil2a": "surface", "boa": "surface",  # FORCE's TOA and BOA too
                            "l3a": "surface"}  # THEIA's syntheses of its L2A
#: HLS keeps the cirrus band in its surface reflectance (``HLS.S30.<...>.B10.tif``, ``HLS.L30.<...>.B09.tif``).
_HLS = re.compile(r"^HLS\.[SL]30\.", re.I)
_NAMES = {"top-of-atmosphere": "top-of-atmosphere reflectance (Level-1C)", "surface": "surface reflectance (Level-2A)"}


class ReflectanceLevelError(MapexError, ValueError):
    """A Sentinel-2 file of the other processing level than the specialist learned, and no ``reflectance=as-is``."""


@dataclass(frozen=True)
class LevelEvidence:
    level: Level
    #: What says so, for the message: ``its GDAL metadata PROCESSING_LEVEL=Level-1C``.
    because: str
    #: The product to send instead, where it is not the Sentinel-2 product of the other level.
    instead: str | None = None


def level_of(file: str, path: str, tags: Mapping[str, str]) -> LevelEvidence | None:
    """What the file (its name as sent, the path GDAL read it at, its metadata) says of its level; None: nothing."""
    for key in ("PROCESSING_LEVEL", "PRODUCT_TYPE"):
        value = tags.get(key, "").strip()
        level = _PRODUCT.get(value) or _PRODUCT.get(value[:7].upper())
        if level:
            return LevelEvidence(level, f"its GDAL metadata {key}={value}")
    name = file.replace("\\", "/").rsplit("/", 1)[-1]
    if (m := SAFE_BAND_FILE.match(name)) and m.group("resolution") is None:
        return LevelEvidence("top-of-atmosphere", "its name, a Level-1C SAFE's band file (Level-2A's name their "
                                                  "resolution, _B04_10m)")
    if said := word_in_name(file, path, _WORDS):
        word, where = said
        return LevelEvidence(_WORDS[word], f"{where}, which says {word.upper()}")
    return None


def check_level(used: Sequence[InputBand], model_name: str, learned: Level, scene: Sequence[InputBand] = ()) -> None:
    """A ``ReflectanceLevelError`` for the first Sentinel-2 file among ``used`` bands' that says it holds the other
    reflectance than the model learned; where none says, for a request whose other bands (``scene``: all of them)
    say it (``bands_say``)."""
    seen: set[int] = set()
    said = False
    for b in used:
        if BANDS[b.identity.canonical].sensor != "S2" or id(b.dataset) in seen:
            continue
        seen.add(id(b.dataset))
        evidence = _landsat_level(b) or level_of(b.file, b.dataset.name, b.dataset.tags())  # Landsat's, not S2's
        said = said or evidence is not None
        if evidence is not None and evidence.level != learned:
            raise refusal(b.file, evidence, model_name, learned)
    if not said and used and (evidence := bands_say(scene)) is not None and evidence.level != learned:
        raise refusal(used[0].file, evidence, model_name, learned)


def bands_say(scene: Sequence[InputBand]) -> LevelEvidence | None:
    """The level a request's bands say by which of them it holds, where no file states one: HLS's Fmask (surface
    reflectance, its cirrus band kept); the cirrus band B10 (1375 nm), which no other surface reflectance product
    keeps (Sen2Cor, MAJA, FORCE, sen2r and Earth Engine's, Sentinel Hub's and the catalogues' Level-2A drop it), or
    Sen2Cor's scene classification (SCL), which only a Level-2A product has. An export of all of Earth Engine's
    ``COPERNICUS/S2_HARMONIZED`` bands (EuroSAT's way) says nothing else of being Level-1C."""
    for b in scene:
        if b.identity.quality == "FMASK":  # HLS keeps the cirrus band in its surface reflectance
            return LevelEvidence("surface", f"its Fmask ({b.file}), HLS's quality layer: HLS is surface reflectance")
    for b in scene:
        if b.identity.canonical == "B10" and not b.landsat and not _HLS.match(os.path.basename(b.file)):
            return LevelEvidence("top-of-atmosphere", f"its band {b.identity.found or 'B10'} ({b.file}: cirrus, "
                                                      f"1375 nm), which Level-2A products do not keep")
    for b in scene:
        if b.identity.quality == "SCL":
            return LevelEvidence("surface", f"its scene classification ({b.file}), which only Level-2A products have")
    return None


#: What a Landsat file of the wrong level should be instead (not Sentinel-2's other product).
_LANDSAT_LEVEL2 = "its Collection 2 Level-2 surface reflectance (in Earth Engine LANDSAT/LC09/C02/T1_L2's SR_B4 bands)"


def _landsat_level(b: InputBand) -> LevelEvidence | None:
    """Earth Engine's Landsat TOA reflectance (``LANDSAT/LC08/C02/T1_TOA``, floats), said by its bands' names: read
    as it asks (``units=reflectance``), it passed for surface reflectance."""
    level1 = b.landsat and landsat_level1(b.file, b.identity.found, b.landsat_layer, b.identity.image)
    if not level1:
        return None
    return LevelEvidence("top-of-atmosphere", level1, instead=_LANDSAT_LEVEL2)


def refusal(file: str, evidence: LevelEvidence, model_name: str, learned: Level) -> ReflectanceLevelError:
    """The 422 for a file of the other level: what it is and why that matters, and the ways round."""
    other = "Level-2A" if learned == "surface" else "Level-1C"
    convert = (" (the catalogues' sentinel-2-l2a collections, or sen2cor run on this product)"
               if learned == "surface" else "")
    instead = evidence.instead or f"the scene's {other} product{convert}"
    held = f"{evidence.level} reflectance" if evidence.instead else _NAMES[evidence.level]  # Sentinel-2's level names
    return ReflectanceLevelError(
        f"{file} holds {held}, by {evidence.because}, and {model_name} learned "
        f"{_NAMES[learned]}: the atmosphere changes every band's values, most the visible ones, and the model "
        f"would answer as if nothing were wrong. Send {instead}, or add reflectance=as-is to run it on these values "
        f"anyway"
    )

"""Which radar backscatter a Sentinel-1 file holds, sigma0 or gamma0, against the one the specialist learned.

Both are backscatter coefficients in the same units, so their values pass every plausibility check, but gamma0 is
normalised to the area seen from the radar (terrain-flattened gamma0, the radiometric terrain correction's output,
divides by the projected illuminated area; ellipsoid gamma0 is sigma0 / cos(incidence)): at Sentinel-1's 30-45
degrees it is 0.6-1.5 dB brighter than sigma0 on flat ground and differs more on slopes. A model that learned one
and is sent the other answers without a sign of it, a silent error like a wrong unit: a file is refused (422) when
what it says of its backscatter is not the model's, unless the request says ``backscatter=as-is``. What files say
of it is their band or file names (``mapex_serve.rasters``): SNAP's ``Sigma0_VV``/``Gamma0_VV``, a polarisation
named with its quantity (``VV_gamma0_dB``), ASF HyP3 RTC's radiometry letter (``..._RTC30_G_gpuned_...``: gamma0),
OPERA RTC-S1 and the Planetary Computer's ``sentinel-1-rtc`` (gamma0), S1-NRB's ``-g-``/``-s-``, EO Browser's
layer (``..._VV_-_decibel_gamma0.tiff``); else the word ``sigma0`` or ``gamma0`` in the file's name or path. A
file that says none of these (Earth Engine's ``COPERNICUS/S1_GRD`` downloads, which are sigma0, say nothing) is
taken as what the model learned.

Gamma0 sent with its burst's factor from gamma0 to sigma0 (OPERA RTC-S1-STATIC's ``..._rtc_anf_gamma0_to_sigma0.tif``,
on the same grid: the area normalisation the radiometric terrain correction divided by, as a ratio) is read as the
sigma0 it makes, ``sigma0 = gamma0 x factor``, by a model that learned sigma0: it is refused no longer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

from mapex_serve.bands import BANDS
from mapex_serve.errors import MapexError
from mapex_serve.rasters import Backscatter, word_in_name

if TYPE_CHECKING:
    from mapex_serve.scene_reader import InputBand

__all__ = ["Backscatter", "BackscatterError", "BackscatterEvidence", "backscatter_of", "check_backscatter",
           "to_sigma0"]

#: What to send instead, by the backscatter the model learned.
_WAYS = {
    "sigma0": "sigma0 (ASF HyP3 RTC ordered with radiometry=sigma0, SNAP's Calibration with 'Output sigma0 band', "
              "Earth Engine's COPERNICUS/S1_GRD, Sentinel Hub's backCoeff=SIGMA0_ELLIPSOID)",
    "gamma0": "terrain-flattened gamma0 (ASF HyP3 RTC's default, OPERA RTC-S1, the Planetary Computer's "
              "sentinel-1-rtc, SNAP's Terrain-Flattening, Sentinel Hub's backCoeff=GAMMA0_TERRAIN)",
}


#: For gamma0 sent to a model of sigma0: the file that converts it.
_FACTOR = {"sigma0": "; or, with OPERA RTC-S1's gamma0, its burst's ..._rtc_anf_gamma0_to_sigma0.tif (RTC-S1-STATIC) "
                     "beside it", "gamma0": ""}


class BackscatterError(MapexError, ValueError):
    """A Sentinel-1 file of the other backscatter than the specialist learned, and no ``backscatter=as-is``."""


@dataclass(frozen=True)
class BackscatterEvidence:
    backscatter: Backscatter
    #: What says so, for the message: ``its ASF HyP3 RTC file name (gamma0, power scale)``.
    because: str


def backscatter_of(band: InputBand) -> BackscatterEvidence | None:
    """What the band's name, or its file's name or path, says of its backscatter; None: nothing."""
    identity = band.identity
    if identity.backscatter is not None:
        return BackscatterEvidence(identity.backscatter, f"its {identity.rule}")
    if said := word_in_name(band.file, band.dataset.name, get_args(Backscatter)):
        word, where = said
        return BackscatterEvidence(word, f"{where}, which says {word}")
    return None


def to_sigma0(used: Sequence[InputBand], learned: Backscatter | None, factor: InputBand | None) -> list[InputBand]:
    """The bands among ``used`` to read as sigma0 through ``factor``: those that say they hold gamma0, for a model
    that learned sigma0."""
    if factor is None or learned != "sigma0":
        return []
    return [b for b in used if BANDS[b.identity.canonical].sensor == "S1" and (evidence := backscatter_of(b))
            is not None and evidence.backscatter == "gamma0"]


def check_backscatter(used: Sequence[InputBand], model_name: str, learned: Backscatter,
                      converted: Sequence[InputBand] = ()) -> None:
    """A ``BackscatterError`` for the first Sentinel-1 band among ``used`` that says it holds the other backscatter
    than the model learned (``converted``: those read as sigma0 through their factor, ``to_sigma0``)."""
    for band in used:
        if BANDS[band.identity.canonical].sensor != "S1" or any(band is c for c in converted):
            continue
        evidence = backscatter_of(band)
        if evidence is not None and evidence.backscatter != learned:
            raise BackscatterError(
                f"{band.file} holds {evidence.backscatter}, by {evidence.because}, and {model_name} learned "
                f"{learned}: gamma0 is 0.6-1.5 dB brighter than sigma0 at Sentinel-1's incidence angles, more on "
                f"slopes, and the model would answer as if nothing were wrong. Send {_WAYS[learned]}"
                f"{_FACTOR[learned]}, or add backscatter=as-is to run it on these values anyway"
            )

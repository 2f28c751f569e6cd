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


@dataclass(frozen=True)
class Band:
    """One canonical band and how its stored values map to physical units.

    ``physical = stored * scale + offset``: Sentinel-2 L2A stores reflectance x 10000, Sentinel-1
    is stored as backscatter in dB and the DEM in metres.
    """

    name: str
    sensor: Sensor
    description: str
    unit: str
    scale: float = 1.0
    offset: float = 0.0
    wavelength_nm: float | None = None
    aliases: tuple[str, ...] = ()


_S2_SCALE = 1e-4

BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("B01", "S2", "coastal aerosol", "reflectance", _S2_SCALE, 0.0, 443, ("coastal", "aerosol", "coastal_aerosol")),
        Band("B02", "S2", "blue", "reflectance", _S2_SCALE, 0.0, 490, ("blue",)),
        Band("B03", "S2", "green", "reflectance", _S2_SCALE, 0.0, 560, ("green",)),
        Band("B04", "S2", "red", "reflectance", _S2_SCALE, 0.0, 665, ("red",)),
        Band("B05", "S2", "red edge 1", "reflectance", _S2_SCALE, 0.0, 705, ("rededge1", "red_edge_1", "re1")),
        Band("B06", "S2", "red edge 2", "reflectance", _S2_SCALE, 0.0, 740, ("rededge2", "red_edge_2", "re2")),
        Band("B07", "S2", "red edge 3", "reflectance", _S2_SCALE, 0.0, 783, ("rededge3", "red_edge_3", "re3")),
        Band("B08", "S2", "near infrared", "reflectance", _S2_SCALE, 0.0, 842, ("nir", "nir1", "near_infrared")),
        Band("B8A", "S2", "narrow near infrared", "reflectance", _S2_SCALE, 0.0, 865, ("nir08", "nir2", "narrow_nir", "nir_narrow", "rededge4", "red_edge_4")),
        Band("B09", "S2", "water vapour", "reflectance", _S2_SCALE, 0.0, 945, ("nir09", "water_vapour", "water_vapor")),
        Band("B10", "S2", "cirrus", "reflectance", _S2_SCALE, 0.0, 1375, ("cirrus", "swir_cirrus")),
        Band("B11", "S2", "short-wave infrared 1", "reflectance", _S2_SCALE, 0.0, 1610, ("swir1", "swir_1", "swir16")),
        Band("B12", "S2", "short-wave infrared 2", "reflectance", _S2_SCALE, 0.0, 2190, ("swir2", "swir_2", "swir22")),
        Band("VV", "S1", "Sentinel-1 VV backscatter", "dB", aliases=("sigma0_vv", "vv_db", "s1_vv")),
        Band("VH", "S1", "Sentinel-1 VH backscatter", "dB", aliases=("sigma0_vh", "vh_db", "s1_vh")),
        Band("DEM", "DEM", "elevation", "m", aliases=("elevation", "height", "altitude", "srtm", "copdem")),
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

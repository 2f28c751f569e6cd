"""Naming the bands of a GeoTIFF and converting its stored values, shared by training and the service.

Bands are identified by name, never by position: from ``bands=`` when the caller gives names
(for files whose descriptions are missing or wrong), else from each band's description, else
from a name tag. Stored values become physical ones with the file's own scale/offset when it
carries any, else with the band table's.
"""

from __future__ import annotations

from collections.abc import Sequence

from rasterio.io import DatasetReaderBase

from mapex_serve.bands import BANDS, resolve_bands
from mapex_serve.errors import MapexError

__all__ = ["BandNamesMissingError", "band_names", "scale_offset"]

_NAME_TAGS = ("name", "band_name", "bandname")


class BandNamesMissingError(MapexError, ValueError):
    """A GeoTIFF whose bands cannot be named: no descriptions or name tags, or the wrong number of names."""


def _file_band_names(src: DatasetReaderBase) -> list[str | None]:
    """Each band's name from its description, else from a name tag, else None."""
    names: list[str | None] = []
    for i, description in enumerate(src.descriptions, start=1):
        tags = {k.lower(): v for k, v in src.tags(i).items()}
        names.append(description or next((tags[k] for k in _NAME_TAGS if tags.get(k)), None))
    return names


def band_names(src: DatasetReaderBase, bands: Sequence[str] | None = None) -> tuple[str, ...]:
    """Canonical name of every band of ``src``; ``bands`` (one name per band) overrides the file."""
    found = _file_band_names(src)
    names = list(bands) if bands else found
    if len(names) != src.count or any(n is None for n in names):
        raise BandNamesMissingError(
            f"cannot name the file's {src.count} bands (descriptions or name tags found: {found}"
            + (f", names given: {list(bands)}" if bands else "")
            + "); pass bands= with one name per band in file order (e.g. bands=red,green,blue or "
            "bands=B04,B03,B02), or set each band's description to its name (rasterio: "
            "dst.set_band_description(i, 'B04'); GDAL: band.SetDescription('B04'))"
        )
    return resolve_bands(names)


def scale_offset(src: DatasetReaderBase, index: int, canonical: str) -> tuple[float, float]:
    """``physical = stored * scale + offset`` for band ``index`` (1-based): the file's own, else the band table's."""
    scale, offset = src.scales[index - 1], src.offsets[index - 1]
    if (scale, offset) == (1.0, 0.0):
        return BANDS[canonical].scale, BANDS[canonical].offset
    return scale, offset

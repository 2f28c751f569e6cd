"""What SNAP says of a product's bands in its DIMAP header: in a GeoTIFF it wrote (TIFF tag 65000), and in the
``.dim`` beside a BEAM-DIMAP product's band files.

SNAP (ESA's Sentinel toolbox) exports a product as GeoTIFF (File > Export > GeoTIFF or GeoTIFF-BigTIFF,
``gpt ... -f GeoTIFF``) with each band's name, unit, scaling and no-data value only in its DIMAP header,
stored as text in the private TIFF tag 65000 (its GeoTIFF writers' ``BEAM_METADATA``); GDAL's GeoTIFF
driver reads none of it. A terrain-corrected Sentinel-1 export holds ``Sigma0_VH`` and ``Sigma0_VV`` in
linear power, in that order, with 0 outside the swath: read without its header its bands have no names
(and a guess of ``bands=VV,VH`` swaps them, silently) and its zeros are values. A Sentinel-2 export holds
digital numbers whose scale (0.0001) and, from processing baseline 04.00, offset (-0.1) only the header
states. Each ``Spectral_Band_Info`` of the header describes a band of the product; virtual and filter
bands are not written, so the others are the file's bands, in their order. SNAP's own format, BEAM-DIMAP,
keeps the same header as the ``.dim`` file and a band per ENVI file named after it, whose header carries
the name but neither scaling nor no-data.

The header also says when the scene was sensed (``PRODUCT_SCENE_RASTER_START_TIME`` and ``..._STOP_TIME``), which a
job's results are dated by where the file's name does not say (a SNAP export is often renamed, ``subset_flood.tif``).

SNAP's writers are Java's and write big-endian TIFFs (GDAL's ``SNAP_TIFF`` driver identifies them so too, but opens
only single-band Float32 exports): a little-endian upload is not searched for the tag, which keeps this off the path
of every other file. A job's file read by URL gives its first four bytes, and, if big-endian, those before its first
image block (at most a MiB), read by ranges through GDAL (``remote.first_bytes``): SNAP writes the header right after
the first directory.
"""

from __future__ import annotations

import math
import mmap
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError
from rasterio.io import DatasetReaderBase

from mapex_serve.geokeys import ASCII, first_ifd
from mapex_serve.remote import first_bytes

__all__ = ["DIMAP_TAG", "SnapBand", "file_sensed", "header_bands", "header_sensed", "remote_sensed", "remote_start",
           "tiff_bands"]

#: SNAP's private TIFF tag holding the product's DIMAP header (``Utils.PRIVATE_BEAM_TIFF_TAG_NUMBER``).
DIMAP_TAG = 65000
#: The longest header read: the band descriptions come before the product's metadata (orbits, history), which
#: can run to megabytes; a header past this is not read.
_MAX_HEADER = 64 * 2**20
#: What of a file read by URL is read for its header: SNAP writes the header right after the first directory, its
#: band descriptions and the scene's times before the product's metadata.
_REMOTE_START = 2**20
#: SNAP's UTC times (``ProductData.UTC``'s format, English month names): ``05-JUL-2015 06:42:41.123456``.
_SENSED = re.compile(r"<PRODUCT_SCENE_RASTER_(START|STOP)_TIME>\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) "
                     r"(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?\s*</PRODUCT_SCENE_RASTER_\1_TIME>")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@dataclass(frozen=True)
class SnapBand:
    """One band as SNAP's DIMAP header describes it: ``physical = stored * scale + offset``."""

    name: str
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    #: SNAP's ``LOG10_SCALED``: physical = 10 ** (stored * scale + offset).
    log10_scaled: bool = False

    @property
    def scaled(self) -> bool:
        return (self.scale, self.offset) != (1.0, 0.0)


def tiff_bands(data: bytes | memoryview) -> tuple[SnapBand, ...] | None:
    """The bands of ``data`` (a TIFF's bytes, or at least its first directory and the header it points to) as its
    SNAP DIMAP header describes them, in file order; None for a file without one, or one that does not parse."""
    header = _tiff_header(data)
    return None if header is None else header_bands(header)


def _tiff_header(data: bytes | memoryview | mmap.mmap) -> str | None:
    if bytes(data[:2]) != b"MM":
        return None
    tags = first_ifd(data, {DIMAP_TAG: (ASCII, _MAX_HEADER)})
    if not tags or DIMAP_TAG not in tags:
        return None
    return tags[DIMAP_TAG][0].decode("latin-1")  # SNAP writes it ISO-8859-1


def header_sensed(header: str) -> tuple[datetime, datetime] | None:
    """When the product's scene was sensed, start and stop (UTC), as the header's first start and stop times say;
    None where it states no pair, or a stop before its start."""
    times: dict[str, datetime] = {}
    for m in _SENSED.finditer(header):
        which, day, month, year, hour, minute, second, fraction = m.groups()
        if which in times or month.upper() not in _MONTHS:
            continue
        try:
            times[which] = datetime(int(year), _MONTHS.index(month.upper()) + 1, int(day), int(hour), int(minute),
                                    int(second), int((fraction or "0").ljust(6, "0")), tzinfo=UTC)
        except ValueError:  # an impossible date
            return None
        if len(times) == 2:
            break
    start, stop = times.get("START"), times.get("STOP")
    return (start, stop) if start is not None and stop is not None and start <= stop else None


def file_sensed(path: Path) -> tuple[datetime, datetime] | None:
    """``header_sensed`` of a GeoTIFF SNAP wrote (mapped, not read: the header's offset can be anywhere); None for
    any other file."""
    try:
        with path.open("rb") as f:
            if f.read(2) != b"MM":
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                header = _tiff_header(mapped)
    except (OSError, ValueError):  # not a file that can be mapped: it says nothing of when
        return None
    return None if header is None else header_sensed(header)


def remote_start(path: str, tiff: DatasetReaderBase | None = None) -> bytes | None:
    """The bytes before the first image block (at most a MiB) of a big-endian TIFF read by URL (a job's
    ``/vsicurl/``, ``/vsis3/`` path, through GDAL), where SNAP writes its header (``tiff_bands``, ``header_sensed``);
    None for any other file (4 bytes of it are read), or one GDAL cannot read (opening it says why). ``tiff``: the
    file already open, else it is opened for GDAL to say where its image starts (rasterio gives no file size)."""
    try:
        if first_bytes(path, 4) not in (b"MM\x00*", b"MM\x00+"):  # big-endian TIFF or BigTIFF
            return None
        with nullcontext(tiff) if tiff is not None else _opened(path) as opened:
            first_block = int(opened.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1) or 0)
        return first_bytes(path, min(first_block, _REMOTE_START)) if first_block > 8 else None
    except (RasterioError, ValueError):
        return None


@contextmanager
def _opened(path: str) -> Iterator[DatasetReaderBase]:
    """A remote GeoTIFF opened without listing the folder beside it."""
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(path, driver="GTiff") as tiff:
        yield tiff


def remote_sensed(path: str, tiff: DatasetReaderBase) -> tuple[datetime, datetime] | None:
    """``header_sensed`` of a GeoTIFF SNAP wrote, read by URL (``remote_start``; ``tiff``: the file, open); None for
    any other file."""
    data = remote_start(path, tiff)
    header = None if data is None else _tiff_header(data)
    return None if header is None else header_sensed(header)


def header_bands(header: str) -> tuple[SnapBand, ...] | None:
    """The written bands of a DIMAP header (its ``Image_Interpretation``, parsed alone: the metadata after it can
    run to megabytes), in file order; None for a header that describes none or does not parse."""
    start, end = header.find("<Image_Interpretation"), header.find("</Image_Interpretation>")
    if start < 0 or end < start:
        return None
    try:
        root = ET.fromstring(header[start: end + len("</Image_Interpretation>")])
    except ET.ParseError:
        return None
    infos = []
    for info in root.iter("Spectral_Band_Info"):
        if _flag(info, "VIRTUAL_BAND") or info.find("Filter_Band_Info") is not None:
            continue  # SNAP computes these from the others and writes no pixels of them
        index, name = _number(info, "BAND_INDEX"), _text(info, "BAND_NAME")
        if index is None or not name:
            return None
        nodata = _number(info, "NO_DATA_VALUE") if _flag(info, "NO_DATA_VALUE_USED") else None
        infos.append((index, SnapBand(name, _text(info, "PHYSICAL_UNIT") or None, _number(info, "SCALING_FACTOR", 1.0),
                                      _number(info, "SCALING_OFFSET", 0.0), nodata,
                                      _flag(info, "LOG10_SCALED"))))
    return tuple(band for _, band in sorted(infos, key=lambda i: i[0])) or None


def _text(element: ET.Element, tag: str) -> str:
    return (element.findtext(tag) or "").strip()


def _flag(element: ET.Element, tag: str) -> bool:
    return _text(element, tag).lower() == "true"


def _number(element: ET.Element, tag: str, default: float | None = None) -> float | None:
    try:
        value = float(element.findtext(tag) or "")
    except ValueError:
        return default
    return value if math.isfinite(value) or tag == "NO_DATA_VALUE" else default  # a NaN no-data value is one

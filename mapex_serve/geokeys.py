"""A GeoTIFF's GeoKey directory and georeferencing tags, read from its bytes before GDAL opens it.

rasterio has GDAL build a file's CRS while it opens it. For a projected CRS named by its EPSG code
(what Sentinel, Landsat and HLS products in UTM carry), GDAL's default way also checks the code
against the keys: a 3-band 32 px upload opens in 585 µs of CPU, in 440 µs with
``GTIFF_SRS_SOURCE=GEOKEYS``, for the same CRS. For a geographic CRS ``GEOKEYS`` drops the EPSG
code, and where a file carries parameters of its own the two ways may disagree: those files, and
any this reader cannot follow, keep GDAL's default. (GeoTIFF 1.1, OGC 19-008r4: the key directory.)

Where the keys are such and the grid is one tie point and a pixel size (``tag_georeference``), the
file's whole georeferencing can be had without GDAL: the transform from those tags, the CRS as GDAL
built it for the same keys before (``crs_of_keys``). Opening a file without it (``inputs``) saves a
fifth of a single tile's decoding.
"""

from __future__ import annotations

import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rasterio.crs import CRS
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.transform import Affine

__all__ = ["ASCII", "TagGeoreference", "crs_from_keys", "crs_of_keys", "first_ifd", "georeferencing", "is_tiff",
           "projected_by_code", "tag_georeference"]

SRS_SOURCE = "GTIFF_SRS_SOURCE"

GEO_KEY_DIRECTORY, GEO_ASCII_PARAMS = 34735, 34737
PIXEL_SCALE, TIE_POINTS, MODEL_TRANSFORMATION = 33550, 33922, 34264
ASCII, _SHORT, _DOUBLE = 2, 3, 12
#: What each tag read here may hold: its type, and the most values a real file has (about 8 keys; one tie point).
_TAGS = {GEO_KEY_DIRECTORY: (_SHORT, 4 + 4 * 256), GEO_ASCII_PARAMS: (ASCII, 4096), PIXEL_SCALE: (_DOUBLE, 3),
         TIE_POINTS: (_DOUBLE, 6)}
MODEL_TYPE, RASTER_TYPE, PROJECTED_CRS = 1024, 1025, 3072
_PROJECTED, _PIXEL_IS_AREA = 1, 1
#: Keys that say nothing the EPSG code does not: the raster type (area or point) and citations.
_DESCRIPTIVE = frozenset({1025, 1026, 2049, 3073})
#: Unit keys GDAL writes beside the code, with the units of every UTM code: degrees (GeogAngularUnitsGeoKey) and
#: metres (ProjLinearUnitsGeoKey).
_STANDARD_UNITS = {2054: 9102, 3076: 9001}
#: Bounds past any real file (GDAL writes about 20 tags and 8 keys) that keep a crafted header from costing more
#: than a real one: a BigTIFF may claim 2**64 tags, a key directory 2**32 values.
_MAX_TAGS, _MAX_KEYS = 1024, 256
#: A GeoKey directory (its shorts) and the text its keys point into: what GDAL builds a file's CRS from.
Keys = tuple[tuple[int, ...], bytes]


@dataclass(frozen=True)
class TagGeoreference:
    """A file's georeferencing as its tags give it, where GDAL reads them the same way.

    ``keys``: the GeoKey directory and its text, from which GDAL builds the CRS (the same keys, the same
    CRS); ``transform``: from the one tie point and the pixel size, as GDAL makes it.
    """

    keys: Keys
    transform: Affine


class _CrsOfKeys:
    """The CRS GDAL built for each GeoKey directory (with its text) it opened lately: from the same keys it builds the
    same CRS, which a later file with them need not have built again (``TagGeoreference.keys``)."""

    def __init__(self, size: int = 64) -> None:
        self._crs: OrderedDict[Keys, CRS] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, keys: Keys) -> CRS | None:
        with self._lock:
            crs = self._crs.get(keys)
            if crs is not None:
                self._crs.move_to_end(keys)
            return crs

    def learn(self, keys: Keys, crs: CRS) -> None:
        with self._lock:
            self._crs[keys] = crs
            self._crs.move_to_end(keys)
            if len(self._crs) > self._size:
                self._crs.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._crs.clear()


crs_of_keys = _CrsOfKeys()


def is_tiff(data: bytes | memoryview) -> bool:
    """True when ``data`` starts as a classic TIFF or a BigTIFF does (either byte order)."""
    return bytes(data[:4]) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def projected_by_code(data: bytes) -> bool:
    """True when ``data`` is a (Big)TIFF whose first image's GeoKeys name a projected CRS by its EPSG code and add
    nothing but citations, the raster type, metres and degrees: GDAL then builds the same CRS from the keys alone."""
    tags = first_ifd(data)
    return tags is not None and _by_code(_geokeys(tags))


def _by_code(keys: dict[int, int | None] | None) -> bool:
    if keys is None or keys.get(MODEL_TYPE) != _PROJECTED:
        return False
    code = keys.get(PROJECTED_CRS)
    if code is None or not 1024 <= code <= 32766:  # 32767: user-defined, parameters follow
        return False
    return all(k in _DESCRIPTIVE or k in (MODEL_TYPE, PROJECTED_CRS) or (k in _STANDARD_UNITS and v == _STANDARD_UNITS[k])
               for k, v in keys.items())


def tag_georeference(data: bytes) -> TagGeoreference | None:
    """The georeferencing of ``data``'s first image from its tags, when GDAL would make the same of them: keys that
    name a projected CRS by its code (``projected_by_code``) with pixels as areas, one tie point and a positive pixel
    size, no transformation matrix. None for anything else (left to GDAL).

    GDAL's transform from such tags (its GeoTIFF driver): x0 = X - I * sx, y0 = Y - J * (-sy), pixel (sx, -sy).
    """
    return _tag_georeference(first_ifd(data))


def georeferencing(data: bytes) -> tuple[bool, TagGeoreference | None]:
    """``projected_by_code(data)`` and ``tag_georeference(data)`` from one read of the directory: what a file opened
    in place needs (``inputs``), where the directory was read twice."""
    tags = first_ifd(data)
    return tags is not None and _by_code(_geokeys(tags)), _tag_georeference(tags)


def _tag_georeference(tags: dict[int, tuple] | None) -> TagGeoreference | None:
    if tags is None or MODEL_TRANSFORMATION in tags:
        return None
    keys = _geokeys(tags)
    if not _by_code(keys) or keys.get(RASTER_TYPE, _PIXEL_IS_AREA) != _PIXEL_IS_AREA:
        return None
    scale, tie = tags.get(PIXEL_SCALE), tags.get(TIE_POINTS)
    if scale is None or tie is None or len(scale) != 3 or len(tie) != 6 or not all(map(math.isfinite, (*scale, *tie))):
        return None
    (sx, sy, _), (i, j, _, x, y, _) = scale, tie
    if not (sx > 0 and sy > 0):
        return None
    return TagGeoreference((tags[GEO_KEY_DIRECTORY], tags.get(GEO_ASCII_PARAMS, (b"",))[0]),
                           Affine(sx, 0.0, x - i * sx, 0.0, -sy, y - j * -sy))


@contextmanager
def crs_from_keys(data: bytes, *, by_code: bool | None = None) -> Iterator[None]:
    """Files opened inside have GDAL build their CRS from their GeoKeys alone, when ``data``'s keys allow it (above;
    ``by_code``: what ``projected_by_code(data)`` says, where the caller has it already).

    Left alone where the user set ``GTIFF_SRS_SOURCE``, and on a main thread that other threads share: rasterio
    sets GDAL's options process-wide there (per thread elsewhere), and another thread's file opened meanwhile could
    be geographic. Not a nested ``rasterio.Env``: leaving one rebuilds the outer environment, a fifth of the saving.
    """
    if (not (projected_by_code(data) if by_code is None else by_code) or get_gdal_config(SRS_SOURCE)
            or (threading.current_thread() is threading.main_thread() and threading.active_count() > 1)):
        yield
        return
    set_gdal_config(SRS_SOURCE, "GEOKEYS")
    try:
        yield
    finally:
        set_gdal_config(SRS_SOURCE, "")  # empty is GDAL's default way, as unset (rasterio has no public unset)


def _geokeys(tags: dict[int, tuple]) -> dict[int, int | None] | None:
    """The GeoKeys: each key's value when stored in the directory itself, None when stored elsewhere (doubles, text);
    None when there is no key directory or it does not parse."""
    shorts = tags.get(GEO_KEY_DIRECTORY)
    if shorts is None or len(shorts) < 4 or shorts[3] > _MAX_KEYS or len(shorts) < 4 + 4 * shorts[3]:
        return None
    return {shorts[k]: shorts[k + 3] if shorts[k + 1] == 0 else None for k in range(4, 4 + 4 * shorts[3], 4)}


def first_ifd(data: bytes | memoryview, wanted: dict[int, tuple[int, int]] = _TAGS) -> dict[int, tuple] | None:
    """The first IFD's tags in ``wanted`` (tag: its type and the most values it may have; the GeoTIFF tags read here
    by default), each the tuple of its values (text as one ``bytes``); None when ``data`` is no TIFF or its directory
    does not parse. A tag of another type or with more values is left out."""
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(data[:2])]
        (magic,) = struct.unpack_from(order + "H", data, 2)
        if magic == 42:
            (ifd,) = struct.unpack_from(order + "I", data, 4)
            count_format, entry_format, inline_bytes = "H", "HHII", 4
        elif magic == 43:
            (ifd,) = struct.unpack_from(order + "Q", data, 8)
            count_format, entry_format, inline_bytes = "Q", "HHQQ", 8
        else:
            return None
        (entries,) = struct.unpack_from(order + count_format, data, ifd)
        if entries > _MAX_TAGS:
            return None
        first, size = ifd + struct.calcsize(count_format), struct.calcsize(order + entry_format)
        tags: dict[int, tuple] = {}
        for i in range(entries):
            at = first + i * size
            tag, kind, count, value = struct.unpack_from(order + entry_format, data, at)
            if tag == MODEL_TRANSFORMATION:
                tags[tag] = ()  # its presence is what counts
            if tag not in wanted or kind != wanted[tag][0] or count > wanted[tag][1]:
                continue
            width = {ASCII: 1, _SHORT: 2, _DOUBLE: 8}[kind]
            where = at + size - inline_bytes if width * count <= inline_bytes else value
            if kind == ASCII:
                tags[tag] = (bytes(data[where: where + count]),)
            else:
                tags[tag] = struct.unpack_from(f"{order}{count}{'H' if kind == _SHORT else 'd'}", data, where)
        return tags
    except (KeyError, struct.error):
        return None

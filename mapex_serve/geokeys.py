"""A GeoTIFF's GeoKey directory, read from its bytes before GDAL opens it: may GDAL build its CRS from the keys alone?

rasterio has GDAL build a file's CRS while it opens it. For a projected CRS named by its EPSG code
(what Sentinel, Landsat and HLS products in UTM carry), GDAL's default way also checks the code
against the keys: a 3-band 32 px upload opens in 585 µs of CPU, in 440 µs with
``GTIFF_SRS_SOURCE=GEOKEYS``, for the same CRS. For a geographic CRS ``GEOKEYS`` drops the EPSG
code, and where a file carries parameters of its own the two ways may disagree: those files, and
any this reader cannot follow, keep GDAL's default. (GeoTIFF 1.1, OGC 19-008r4: the key directory.)
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rasterio.env import get_gdal_config, set_gdal_config

__all__ = ["crs_from_keys", "is_tiff", "projected_by_code"]

SRS_SOURCE = "GTIFF_SRS_SOURCE"

GEO_KEY_DIRECTORY = 34735
_SHORT = 3
MODEL_TYPE, PROJECTED_CRS = 1024, 3072
_PROJECTED = 1
#: Keys that say nothing the EPSG code does not: the raster type (area or point) and citations.
_DESCRIPTIVE = frozenset({1025, 1026, 2049, 3073})
#: Unit keys GDAL writes beside the code, with the units of every UTM code: degrees (GeogAngularUnitsGeoKey) and
#: metres (ProjLinearUnitsGeoKey).
_STANDARD_UNITS = {2054: 9102, 3076: 9001}
#: Bounds past any real file (GDAL writes about 20 tags and 8 keys) that keep a crafted header from costing more
#: than a real one: a BigTIFF may claim 2**64 tags, a key directory 2**32 values.
_MAX_TAGS, _MAX_KEYS = 1024, 256


def is_tiff(data: bytes | memoryview) -> bool:
    """True when ``data`` starts as a classic TIFF or a BigTIFF does (either byte order)."""
    return bytes(data[:4]) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def projected_by_code(data: bytes) -> bool:
    """True when ``data`` is a (Big)TIFF whose first image's GeoKeys name a projected CRS by its EPSG code and add
    nothing but citations, the raster type, metres and degrees: GDAL then builds the same CRS from the keys alone."""
    keys = _geokeys(data)
    if keys is None or keys.get(MODEL_TYPE) != _PROJECTED:
        return False
    code = keys.get(PROJECTED_CRS)
    if code is None or not 1024 <= code <= 32766:  # 32767: user-defined, parameters follow
        return False
    return all(k in _DESCRIPTIVE or k in (MODEL_TYPE, PROJECTED_CRS) or (k in _STANDARD_UNITS and v == _STANDARD_UNITS[k])
               for k, v in keys.items())


@contextmanager
def crs_from_keys(data: bytes) -> Iterator[None]:
    """Files opened inside have GDAL build their CRS from their GeoKeys alone, when ``data``'s keys allow it (above).

    Left alone where the user set ``GTIFF_SRS_SOURCE``, and on a main thread that other threads share: rasterio
    sets GDAL's options process-wide there (per thread elsewhere), and another thread's file opened meanwhile could
    be geographic. Not a nested ``rasterio.Env``: leaving one rebuilds the outer environment, a fifth of the saving.
    """
    if (not projected_by_code(data) or get_gdal_config(SRS_SOURCE)
            or (threading.current_thread() is threading.main_thread() and threading.active_count() > 1)):
        yield
        return
    set_gdal_config(SRS_SOURCE, "GEOKEYS")
    try:
        yield
    finally:
        set_gdal_config(SRS_SOURCE, "")  # empty is GDAL's default way, as unset (rasterio has no public unset)


def _geokeys(data: bytes) -> dict[int, int | None] | None:
    """The first IFD's GeoKeys: each key's value when stored in the directory itself, None when stored elsewhere
    (doubles, text); None when ``data`` is no TIFF, has no key directory or does not parse."""
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
        for i in range(entries):
            at = first + i * size
            tag, kind, count, value = struct.unpack_from(order + entry_format, data, at)
            if tag != GEO_KEY_DIRECTORY:
                continue
            if kind != _SHORT or not 4 <= count <= 4 + 4 * _MAX_KEYS:
                return None
            where = at + size - inline_bytes if 2 * count <= inline_bytes else value
            shorts = struct.unpack_from(f"{order}{count}H", data, where)
            n = shorts[3]
            if count < 4 + 4 * n:
                return None
            return {shorts[k]: shorts[k + 3] if shorts[k + 1] == 0 else None for k in range(4, 4 + 4 * n, 4)}
        return None
    except (KeyError, struct.error):
        return None

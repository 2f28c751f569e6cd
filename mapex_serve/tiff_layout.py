"""Where a (Big)TIFF's directories end, and where the blocks of its first rows end, from the bytes received so far.

An upload arrives byte by byte into a shared-memory file. A Cloud-Optimised GeoTIFF (or a gdal_translate output)
has its directories first and its blocks in row order, so GDAL may open it and read its first rows long before the
last byte is in, as long as it never reads a byte that has not arrived. This reader walks the IFD chain (TIFF 6.0;
BigTIFF: 8-byte offsets and counts, 20-byte entries) and says how many bytes each of those steps needs.

GDAL's COG writer puts a 4-byte size before each block and repeats the block's last 4 bytes after it (its ghost
area's BLOCK_LEADER / BLOCK_TRAILER), and GDAL reads those: the leader lies before the block, in bytes counted
already; the trailer is counted after every block (``_TRAILER``), in every file, which costs at most 4 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["TiffLayout", "parse"]

#: Bytes per value of each field type (TIFF 6.0; BigTIFF adds LONG8, SLONG8, IFD8). Any other type: not followed.
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
#: The types a size, an offset or a byte count may have (BYTE, SHORT, LONG, LONG8), as numpy reads them.
_UNSIGNED = {1: "u1", 3: "u2", 4: "u4", 16: "u8"}
#: Bounds past any real file (GDAL writes a handful of IFDs of about 20 entries) that end a crafted chain.
_MAX_IFDS, _MAX_ENTRIES = 4096, 65536
_NEW_SUBFILE_TYPE, _WIDTH, _LENGTH, _REDUCED = 254, 256, 257, 1
_STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_COUNTS, _PLANAR, _SEPARATE = 273, 277, 278, 279, 284, 2
_TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_COUNTS = 322, 323, 324, 325
_TRAILER = 4
_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
#: One IFD's entries: tag -> (type, count, where its value lies: in the entry or at its offset).
Tags = dict[int, tuple[int, int, int]]


@dataclass(frozen=True)
class TiffLayout:
    """What must have arrived before GDAL may open the file (``directory_end``) and read its first rows.

    ``row_block_ends[j]``: the furthest end (offset + byte count + the 4 trailer bytes, at most the file's size) of
    any block in the first IFD's block rows 0..j, over every full-resolution IFD (the image and its mask), plane and
    block column; 0 for a sparse block (no bytes). Overviews are left out: reading full-resolution rows skips them.
    """

    directory_end: int
    height: int
    block_rows: int
    row_block_ends: np.ndarray

    def bytes_for_rows(self, rows: int) -> int:
        """Bytes that must have arrived before rows [0, rows) may be read: never less than ``directory_end``;
        rows <= 0: ``directory_end``; rows >= height: every full-resolution block."""
        if rows <= 0:
            return self.directory_end
        last = min((rows - 1) // self.block_rows, len(self.row_block_ends) - 1)
        return max(self.directory_end, int(self.row_block_ends[last]))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TiffLayout) and (self.directory_end, self.height, self.block_rows)
                == (other.directory_end, other.height, other.block_rows)
                and np.array_equal(self.row_block_ends, other.row_block_ends))

    __hash__ = None  # type: ignore[assignment]  # an array is no key


def parse(data: bytes | memoryview, size: int) -> TiffLayout | int | None:
    """The layout once every directory lies in ``data`` (the first len(data) bytes of a file of ``size`` bytes);
    else the number of bytes that must have arrived before parse can tell more (an int > len(data), <= size):
    the furthest end of every structure found needed so far, all of which the layout needs anyway; None for
    something that is not a TIFF or that this reader cannot follow (the caller then waits for the whole file).

    Nothing received yet (or under 8 bytes of a file that may be a TIFF): the 8 bytes of a classic header, after
    which a BigTIFF asks for its 16.
    """
    have, head = len(data), bytes(data[:4])
    if size < 8 or not any(magic.startswith(head) for magic in _MAGICS):
        return None
    if have < 8:
        return 8
    order = "<" if head[:2] == b"II" else ">"
    if head in (b"II*\0", b"MM\0*"):
        word, count_format, header, (at,) = 4, "H", 8, struct.unpack_from(order + "I", data, 4)
    else:
        if size < 16:
            return None
        if have < 16:
            return 16
        word, count_format, header = 8, "Q", 16
        bytesize, zero, at = struct.unpack_from(order + "HHQ", data, 4)
        if (bytesize, zero) != (8, 0):
            return None
    entry_format = order + ("HHII" if word == 4 else "HHQQ")
    count_bytes, entry_bytes = struct.calcsize(count_format), struct.calcsize(entry_format)
    need, ifds, seen = header, list[Tags](), set[int]()
    while at:
        if at in seen or len(seen) >= _MAX_IFDS or at < header or at + count_bytes > size:
            return None
        seen.add(at)
        need = max(need, at + count_bytes)
        if need > have:
            return need
        (entries,) = struct.unpack_from(order + count_format, data, at)
        end = at + count_bytes + entries * entry_bytes + word
        if entries > _MAX_ENTRIES or end > size:
            return None
        need = max(need, end)
        if need > have:
            return need
        tags: Tags = {}
        for entry in range(at + count_bytes, end - word, entry_bytes):
            tag, kind, count, value = struct.unpack_from(entry_format, data, entry)
            if kind not in _TYPE_SIZES:
                return None
            extent = count * _TYPE_SIZES[kind]
            if extent > word:  # the value lies at an offset, not in the entry
                if value + extent > size:
                    return None
                need = max(need, value + extent)
            tags[tag] = (kind, count, value if extent > word else entry + 4 + word)
        ifds.append(tags)
        (at,) = struct.unpack_from(order + ("I" if word == 4 else "Q"), data, end - word)
    if need > have:
        return need
    return _layout(data, order, ifds, need, size) if ifds else None


def _layout(data: bytes | memoryview, order: str, ifds: list[Tags], end: int, size: int) -> TiffLayout | None:
    """The layout of a chain read whole: the first IFD's block rows, each with the furthest block end of every
    full-resolution IFD up to it."""
    width, height = _scalar(data, order, ifds[0], _WIDTH), _scalar(data, order, ifds[0], _LENGTH)
    if not width or not height or any(_scalar(data, order, tags, _WIDTH) is None for tags in ifds):
        return None
    full = [tags for tags in ifds if tags is ifds[0] or (
        not (_scalar(data, order, tags, _NEW_SUBFILE_TYPE, 0) or 0) & _REDUCED
        and (_scalar(data, order, tags, _WIDTH), _scalar(data, order, tags, _LENGTH)) == (width, height))]
    blocks = [_blocks(data, order, tags, width, height, size) for tags in full]
    if any(b is None for b in blocks):
        return None
    block_rows = blocks[0][0]  # type: ignore[index]
    row_ends = np.zeros(-(-height // block_rows), np.int64)
    for rows, ends in blocks:  # type: ignore[misc]
        # A block that starts in the first IFD's block row j is needed by any read reaching row j (max-accumulated).
        np.maximum.at(row_ends, np.arange(len(ends), dtype=np.int64) * rows // block_rows, ends)
    row_ends = np.maximum.accumulate(row_ends)
    row_ends.setflags(write=False)
    return TiffLayout(end, height, block_rows, row_ends)


def _blocks(data: bytes | memoryview, order: str, tags: Tags, width: int, height: int,
            size: int) -> tuple[int, np.ndarray] | None:
    """An IFD's rows per block and, per block row, the furthest end of its blocks (over planes and columns)."""
    if _TILE_OFFSETS in tags:
        across_px, rows = _scalar(data, order, tags, _TILE_WIDTH), _scalar(data, order, tags, _TILE_LENGTH)
        offsets, counts = _array(data, order, tags, _TILE_OFFSETS), _array(data, order, tags, _TILE_COUNTS)
    else:
        across_px, rows = width, min(_scalar(data, order, tags, _ROWS_PER_STRIP, 2**32 - 1) or 0, height)
        offsets, counts = _array(data, order, tags, _STRIP_OFFSETS), _array(data, order, tags, _STRIP_COUNTS)
    planar = _scalar(data, order, tags, _PLANAR, 1)
    planes = _scalar(data, order, tags, _SAMPLES, 1) if planar == _SEPARATE else 1
    if not across_px or not rows or not planes or offsets is None or counts is None:
        return None
    across, down = -(-width // across_px), -(-height // rows)
    blocks = planes * down * across
    if min(len(offsets), len(counts)) < blocks:
        return None
    offsets, counts = offsets[:blocks], counts[:blocks]
    if blocks and max(int(offsets.max()), int(counts.max())) > size:  # checked before int64 can wrap a LONG8
        return None
    ends = offsets.astype(np.int64) + counts.astype(np.int64)
    if blocks and int(ends.max()) > size:
        return None
    ends = np.where(counts > 0, np.minimum(ends + _TRAILER, size), 0)
    return rows, ends.reshape(planes, down, across).max(axis=(0, 2))


def _array(data: bytes | memoryview, order: str, tags: Tags, tag: int) -> np.ndarray | None:
    """An unsigned integer tag's values, None when missing or of another type."""
    kind, count, where = tags.get(tag, (0, 0, 0))
    return np.frombuffer(data, np.dtype(order + _UNSIGNED[kind]), count, where) if kind in _UNSIGNED else None


def _scalar(data: bytes | memoryview, order: str, tags: Tags, tag: int, default: int | None = None) -> int | None:
    """An unsigned integer tag's first value; ``default`` when missing; None when of another type or empty."""
    if tag not in tags:
        return default
    values = _array(data, order, tags, tag)
    return int(values[0]) if values is not None and len(values) else None

"""Archives sent as uploads, unpacked into the raster files they hold.

Earth Engine's ``getDownloadURL`` answers with a ZIP of one GeoTIFF a band by default
(``download.B4.tif``, ``download.B3.tif`` ...), Sentinel Hub's Process API with a tar when a request
asks for several outputs (``default.tif`` and ``userdata.json``), and people gzip what they mail. Each
member that is a raster (or a raster's sidecar) becomes a file of the request, as if sent as a part of
its own; the others (metadata, previews) are named in the answer as left out. Of a satellite product
as its provider packs it (a Landsat bundle, a Sentinel-2 SAFE) the band files its rules pick are
read, scaled as its metadata says (``products``). ``/predict`` unpacks into memory (``unpack``), a job
onto its volume beside the upload (``unpack_file``: GDAL then reads windows of plain files, where
through ``/vsigzip/`` every seek back would inflate the stream again). What an archive unpacks to
counts against the upload limit, before and while it is read: a small archive cannot unpack into
gigabytes.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from pathlib import Path, PurePosixPath
from typing import IO, Any

from mapex_serve import products
from mapex_serve.errors import MapexError

__all__ = ["ArchiveTooLargeError", "Capped", "Member", "UnreadableArchiveError", "Unpacked", "archive_kind", "unpack",
           "unpack_file"]

#: What a file is, by its first bytes, when it is an archive or a compressed file: (offset, magic, kind).
_MAGIC = ((0, b"PK\x03\x04", "a ZIP archive"), (0, b"PK\x05\x06", "a ZIP archive"), (0, b"\x1f\x8b", "a gzip file"),
          (257, b"ustar", "a tar archive"), (0, b"BZh", "a bzip2 file"), (0, b"\xfd7zXZ\x00", "an xz file"),
          (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"), (0, b"\x28\xb5\x2f\xfd", "a zstd file"))
#: Compressed streams: the function that opens one, and the suffix a file so compressed ends with.
_STREAMS: dict[str, tuple[Callable[..., IO[bytes]], str]] = {
    "a gzip file": (gzip.open, ".gz"), "a bzip2 file": (bz2.open, ".bz2"), "an xz file": (lzma.open, ".xz")}
#: Members read as files of the request: rasters in the formats the service opens, and the sidecars GDAL reads
#: beside them (ENVI headers, PAM metadata, masks, overviews).
RASTER_SUFFIXES = (".tif", ".tiff", ".gtif", ".jp2", ".nc", ".nc4", ".h5", ".hdf5", ".he5", ".vrt", ".img", ".dat",
                   ".bin", ".bsq", ".bil", ".bip", ".envi", ".hgt", ".hdr", ".aux.xml", ".msk", ".ovr")
#: The most raster files one archive may hold (as many as file parts a multipart body may have), and the most files.
MAX_MEMBERS = 64
MAX_ENTRIES = 1000
#: What archives, broken ones included, raise as they are read.
_BROKEN = (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error, NotImplementedError,
           RuntimeError)


class UnreadableArchiveError(MapexError, ValueError):
    """An archive that cannot be read (damaged, encrypted, a kind not read here) or holds no raster."""


class ArchiveTooLargeError(MapexError, ValueError):
    """An archive that unpacks to more than the upload limit."""


@dataclass(frozen=True)
class Member:
    """One raster file of an archive, unpacked: its name (without the archive's folders) and its bytes, or the
    path it was written to."""

    name: str
    content: bytes | Path
    #: Made here, not found in the archive: a sidecar stating what the archive's metadata says of a band.
    made: bool = False


@dataclass(frozen=True)
class Unpacked:
    """What one archive held: the members read as files of the request and those left out."""

    archive: str
    kind: str
    files: tuple[Member, ...]
    skipped: tuple[str, ...]
    #: Bytes it unpacked to, skipped members included (what counts against the limit).
    size: int
    #: What was taken from its metadata, in words.
    notes: tuple[str, ...] = ()
    #: When its products' metadata says their scenes were sensed (start, stop): a BEAM-DIMAP product's ``.dim``.
    sensed: tuple[tuple[datetime, datetime], ...] = ()

    def report(self) -> dict[str, Any]:
        """How the answer states it (``archives``)."""
        return {"name": self.archive, "kind": self.kind.split(" ", 1)[1],
                "read": [m.name for m in self.files if not m.made], "skipped": list(self.skipped),
                **({"notes": list(self.notes)} if self.notes else {})}


#: Where a member goes: ``store(name, stream, room)`` -> (its content, its size), reading at most ``room + 1`` bytes.
_Store = Callable[[str, IO[bytes], int], tuple[bytes | Path, int]]


def archive_kind(data: bytes | memoryview) -> str | None:
    """"a ZIP archive", "a gzip file" ... by the first bytes; None for anything else (a raster)."""
    head = bytes(data[:264])
    return next((kind for at, magic, kind in _MAGIC if head[at:at + len(magic)] == magic), None)


def unpack(name: str, data: bytes | memoryview, limit: int) -> Unpacked | None:
    """The raster files in the archive ``name`` read into memory (None when it is no archive), at most ``limit``
    bytes unpacked.

    Raises ``UnreadableArchiveError`` (400) for an archive that cannot be read or holds no raster, and
    ``ArchiveTooLargeError`` (413) for one that unpacks to more than ``limit``.
    """
    kind = archive_kind(data)
    if kind is None:
        return None
    try:
        return _unpack(name, kind, io.BytesIO(data if isinstance(data, bytes) else bytes(data)), limit, _in_memory)
    except ArchiveTooLargeError as e:
        raise ArchiveTooLargeError(f"{e}; MAPEX_MAX_UPLOAD_MB bounds what the archives of a request unpack to: "
                                   f"send fewer bands or a crop, or a whole product as a job (POST /jobs/{{task}})"
                                   ) from None


def unpack_file(name: str, path: Path, limit: int) -> Unpacked | None:
    """``unpack`` for an archive saved at ``path``: its raster files written under their own names to a folder
    beside it (``path`` + ``.d``: GDAL finds a sidecar beside its raster there), then the archive removed."""
    with path.open("rb") as f:
        kind = archive_kind(f.read(264))
        if kind is None:
            return None
        f.seek(0)
        try:
            unpacked = _unpack(name, kind, f, limit, _in_folder(path.with_name(f"{path.name}.d")))
        except ArchiveTooLargeError as e:
            raise ArchiveTooLargeError(f"{e}; MAPEX_JOB_MAX_UPLOAD_MB bounds what a job's archives unpack to: send "
                                       f"fewer bands or a crop") from None
    path.unlink()
    return unpacked


def _in_memory(_name: str, stream: IO[bytes], room: int) -> tuple[bytes, int]:
    data = stream.read(room + 1)
    return data, len(data)


def _in_folder(folder: Path) -> _Store:
    folder.mkdir()
    numbers = count(1)

    def store(name: str, stream: IO[bytes], room: int) -> tuple[Path, int]:
        path = folder / name
        if path.exists():  # two members of one name in different folders of the archive
            path = folder / f"{next(numbers)}_{name}"
        with path.open("wb") as out:
            shutil.copyfileobj(Capped(stream, room + 1), out, 2**20)
            return path, out.tell()

    return store


class Capped:
    """The first ``n`` bytes of a stream: what a store copies past the room left is never inflated (or fetched)."""

    def __init__(self, stream: IO[bytes], n: int) -> None:
        self._stream, self._left = stream, n

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(size) if size else b""
        self._left -= len(data)
        return data


def _unpack(name: str, kind: str, raw: IO[bytes], limit: int, store: _Store) -> Unpacked:
    try:
        if kind == "a ZIP archive":
            return _read(name, kind, _zip_members(raw, name), limit, store)
        if kind == "a tar archive" or (kind in _STREAMS and _is_compressed_tar(raw)):
            if kind != "a tar archive":
                kind = f"a tar archive ({kind.split(' ', 1)[1].split()[0]}-compressed)"
            return _read(name, kind, _tar_members(raw), limit, store)
        if kind in _STREAMS:  # one compressed file: the file, whatever its name
            opener, suffix = _STREAMS[kind]
            inner = PurePosixPath(name[: -len(suffix)] if name.lower().endswith(suffix) else name).name or "upload"
            with opener(raw) as stream:
                content, size = store(inner, stream, limit)
            if size > limit:
                raise _too_large(name, size, limit)
            return Unpacked(name, kind, (Member(inner, content),), (), size)
    except _BROKEN as e:
        raise UnreadableArchiveError(f"{name} is {kind} that cannot be read ({e}); send it whole (was it cut "
                                     f"short?), or send the raster files inside it") from None
    raise UnreadableArchiveError(f"{name} is {kind}, which is not read here: send its raster files, or pack them as "
                                 f"a ZIP or a tar (.tar.gz)")


#: One member: its path in the archive, its size as the archive states it, and a function that opens it.
_Listed = tuple[str, int, Callable[[], IO[bytes]]]


def _zip_members(raw: IO[bytes], name: str) -> Iterator[_Listed]:
    archive = zipfile.ZipFile(raw)
    for info in archive.infolist():
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise UnreadableArchiveError(f"{name}: its member {info.filename} is encrypted; send it unencrypted")
        yield info.filename, info.file_size, lambda info=info: archive.open(info)


def _is_compressed_tar(raw: IO[bytes]) -> bool:
    """A .tar.gz (or .tar.bz2, .tar.xz) rather than one compressed file."""
    try:
        tarfile.open(fileobj=raw, mode="r:*").close()
        return True
    except tarfile.TarError:
        return False
    finally:
        raw.seek(0)


def _tar_members(raw: IO[bytes]) -> Iterator[_Listed]:
    archive = tarfile.open(fileobj=raw, mode="r:*")
    for info in archive:
        if info.isfile():  # not folders, links or devices: a link could name any file
            yield info.name, info.size, lambda info=info: archive.extractfile(info)


def _read(name: str, kind: str, members: Iterator[_Listed], limit: int, store: _Store) -> Unpacked:
    """Every member counts against ``limit`` (a skipped one in a compressed tar is inflated to pass it), the rasters
    are stored: by the sizes the archive states before anything is inflated, by the bytes while they are; a
    product's metadata is read for what it says of its bands (``products``)."""
    files: list[Member] = []
    skipped: list[str] = []
    metadata: dict[str, str] = {}
    total = 0
    for entries, (path, size, open_member) in enumerate(members, start=1):
        path = path.replace("\\", "/")  # a Windows tool's zip may part folders with backslashes
        base = PurePosixPath(path).name
        if entries > MAX_ENTRIES:
            raise UnreadableArchiveError(products.no_raster_hint([path]) or f"{name} holds more than {MAX_ENTRIES} "
                                                                          f"files; send the bands of one scene")
        if total + size > limit:
            raise _too_large(name, total + size, limit)
        total += size
        what = products.role(path, size) or ("raster" if _is_raster(path, base) else "skip")
        if what == "skip":
            skipped.append(path)
            continue
        with open_member() as stream:
            if what == "metadata":
                metadata[base] = stream.read().decode("utf-8", "replace")
                continue
            if len(files) == MAX_MEMBERS:
                raise UnreadableArchiveError(f"{name} holds more than {MAX_MEMBERS} raster files; send the bands of "
                                             f"one scene")
            content, stored = store(base, stream, limit - total + size)
        total += stored - size
        if total > limit:
            raise _too_large(name, total, limit)
        files.append(Member(base, content))
    if not files:
        raise UnreadableArchiveError(products.no_raster_hint(skipped) or (
            f"{name} is {kind} with no raster file in it ({_listing(skipped)}); rasters are read as GeoTIFF, COG, "
            f"NetCDF, HDF5, JPEG 2000 or ENVI files ({', '.join(RASTER_SUFFIXES[:5])} ...)"))
    made = products.sidecars(metadata, [m.name for m in files])
    for sidecar, xml in made.files:
        content, stored = store(sidecar, io.BytesIO(xml), limit)  # a few hundred bytes
        total += stored
        files.append(Member(sidecar, content, made=True))
    return Unpacked(name, kind, tuple(files), tuple(skipped), total, made.notes, products.sensed(metadata))


def _is_raster(path: str, base: str) -> bool:
    """A member read as a file of the request: a raster or a sidecar, not macOS's resource forks."""
    return not (path.startswith("__MACOSX/") or base.startswith("._")) and base.lower().endswith(RASTER_SUFFIXES)


def _listing(paths: list[str], most: int = 5) -> str:
    if not paths:
        return "it is empty"
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return "it holds " + ", ".join(paths[:most]) + more


def _too_large(name: str, size: int, limit: int) -> ArchiveTooLargeError:
    return ArchiveTooLargeError(f"{name} unpacks to more than {limit / 2**20:g} MiB ({size / 2**20:.1f} MiB so far)")

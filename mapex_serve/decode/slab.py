"""A request's shared memory: one file on a tmpfs, mapped by the service and by the decode worker that serves it.

One slab a request holds the upload's files and a tile and a probability buffer for each batch in
flight (the worker reads the next batch while the engine runs the others). Plain files under
``/dev/shm`` (``MAPEX_SHM_DIR``) rather than ``multiprocessing.shared_memory``: Python 3.11's
resource tracker would count the worker's attachments as its own and unlink or warn about slabs
the service still owns. Only the service creates and unlinks slabs; a slab left by a killed
service is removed when the next one starts (``clean_stale``). Every part of a slab is reserved
before it is written (``Slab.create``, ``Slab.reserve``), so a full tmpfs refuses a request up
front instead of killing the writer.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np

from mapex_serve.repository import Manifest

__all__ = ["ALIGN", "Layout", "Slab", "SlabPool", "SlabSpaceError", "clean_stale", "slab_folder", "slab_folder_of", "aligned"]

ALIGN = 64  # numpy and ONNX Runtime like their float32 buffers on cache lines
#: ``Slab.write`` copies pieces this large or larger through the file.
WRITE_THROUGH_FILE = 64 * 2**10
_names = count()


class SlabSpaceError(RuntimeError):
    """The tmpfs has no room for this request's slab (Docker gives /dev/shm 64 MiB unless told otherwise)."""


def batch_bytes(manifest: Manifest, n: int) -> tuple[int, int]:
    """Bytes of ``n`` float32 input tiles of a specialist and of their ``n`` outputs: what its buffers hold."""
    return 4 * n * len(manifest.bands) * manifest.tile_size**2, 4 * n * math.prod(manifest.output.shape[1:])


def aligned(n: int) -> int:
    """``n`` rounded up to where the next array in a slab may start."""
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class Layout:
    """Where a request's arrays lie in its slab: ``(name, offset, size)`` a file, then the tile and probability slots."""

    files: tuple[tuple[str, int, int], ...]
    tiles: tuple[int, ...]
    probs: tuple[int, ...]
    size: int

    @classmethod
    def plan(cls, files: Sequence[tuple[str, int]], tile_bytes: int, prob_bytes: int, slots: int = 2) -> Layout:
        """Files of ``(name, size)``, then ``slots`` buffers of ``tile_bytes`` and as many of ``prob_bytes``."""
        offset, placed = 0, []
        for name, size in files:
            placed.append((name, offset, size))
            offset = aligned(offset + size)
        t, q = aligned(tile_bytes), aligned(prob_bytes)
        tiles = tuple(offset + i * t for i in range(slots))
        probs = tuple(offset + slots * t + i * q for i in range(slots))
        return cls(tuple(placed), tiles, probs, max(offset + slots * (t + q), 1))

    def share(self, i: int, sessions: int) -> Layout:
        """Session ``i`` of ``sessions`` that share the slab (a scene split across workers): its files, its slots."""
        per = len(self.tiles) // sessions
        return Layout(self.files, self.tiles[i * per : (i + 1) * per], self.probs[i * per : (i + 1) * per], self.size)

    @property
    def files_end(self) -> int:
        """Where the files end and the buffers begin: the part of the slab written before any worker reads it."""
        return self.tiles[0]


class Slab:
    """A file on a tmpfs mapped into this process; ``array`` views it without copying."""

    def __init__(self, path: Path, buf: mmap.mmap) -> None:
        self.path, self._buf = path, buf

    @classmethod
    def create(cls, folder: Path, size: int, reserve: int | None = None, prefix: str = "slab") -> Slab:
        """A new slab of ``size`` bytes, its first ``reserve`` (all) reserved; ``SlabSpaceError`` if they do not fit.

        Reserved, not only sized: a sparse file's pages are allocated when first written, and a
        tmpfs that filled up meanwhile (two uploads that each fitted when their slabs were made)
        killed the writer with SIGBUS. Every part of a slab is reserved before it is written: the
        upload's files here, the tile and probability buffers by the worker once it knows how many
        tiles the scene has (``reserve``; a batch of them for a single tile was 0.1 ms of the event
        loop's 0.78 ms a request).
        """
        need = size if reserve is None else reserve
        if shutil.disk_usage(folder).free < need:
            raise SlabSpaceError(f"{folder} has less than {need / 2**20:.1f} MiB free")
        path = folder / f"{prefix}-{next(_names)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            _allocate(fd, 0, need, folder)
            return cls(path, mmap.mmap(fd, size))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)

    def reserve(self, spans: Sequence[tuple[int, int]]) -> None:
        """Reserve the pages of ``(offset, size)`` spans before writing them; ``SlabSpaceError`` if they do not fit."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            for offset, size in spans:
                _allocate(fd, offset, size, self.path.parent)
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, path: str | Path) -> Slab:
        """The slab the service created at ``path`` (a worker's view of it)."""
        fd = os.open(path, os.O_RDWR)
        try:
            return cls(Path(path), mmap.mmap(fd, os.fstat(fd).st_size))
        finally:
            os.close(fd)

    @property
    def _mapping(self) -> mmap.mmap:
        if self._buf is None:
            raise ValueError(f"slab {self.path.name} is closed")
        return self._buf

    def array(self, offset: int, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """A view of ``shape`` at ``offset`` (float32 unless told): writes go straight to the other process."""
        return np.ndarray(shape, dtype, buffer=self._mapping, offset=offset)

    def write(self, offset: int, data: bytes) -> None:
        """``data`` at ``offset``: pieces of ``WRITE_THROUGH_FILE`` bytes or more through the file, not the mapping.

        Copying into a fresh mapping faults its pages in one by one: a 129 MiB upload in the HTTP
        server's 256 KiB chunks cost the event loop 62 ms that way and 22 ms with ``pwrite``
        (docs/performance.md, stop 34). A few kilobytes (a single tile, often into a kept slab whose
        pages are mapped already) go faster through the mapping.
        """
        if len(data) < WRITE_THROUGH_FILE:
            self._mapping[offset : offset + len(data)] = data
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            view, at = memoryview(data), offset
            while view:
                written = os.pwrite(fd, view, at)
                view, at = view[written:], at + written
        finally:
            os.close(fd)

    def read(self, offset: int, size: int) -> bytes:
        return self._mapping[offset : offset + size]

    def view(self, offset: int, size: int) -> memoryview:
        """``size`` bytes at ``offset``, not copied (the mapping stays while the view lives)."""
        return memoryview(self._mapping)[offset : offset + size]

    def close(self) -> None:
        """Let go of the mapping: it is unmapped when the last view made by ``array`` is gone.

        Never ``mmap.close()``: numpy views keep the ``mmap`` object, not a buffer export, so an
        explicit close unmapped the pages under a batch still queued for the engine (a segfault
        when a client left mid-request). Dropping the reference leaves the unmap to the views.
        """
        self._buf = None

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)


class SlabPool:
    """Slabs of small requests (a single tile's), kept for the next ones instead of made and removed each time.

    Creating, reserving, mapping, unmapping and removing a tmpfs file cost the event loop 45 µs a
    single-tile request (of about 0.65 ms), a kept one 1 µs (docs/performance.md, stop 33). A slab
    comes back only from a request that ended cleanly (its worker answered its last message:
    nothing writes there any more); any other is removed, as every slab was before. Kept slabs are
    named ``pooled-*`` and hold at most ``keep`` x ``capacity`` bytes of the tmpfs (the pages their
    requests reserved).
    """

    def __init__(self, folder: Path, capacity: int = 2 * 2**20, keep: int = 8) -> None:
        self.folder, self.capacity, self.keep = folder, capacity, keep
        self._free: list[Slab] = []
        self._reserved: dict[Path, int] = {}  # bytes from the start of each kept slab already reserved

    def take(self, size: int, reserve: int) -> Slab:
        """A slab of at least ``size`` bytes with its first ``reserve`` reserved (``Slab.create``): a kept one when
        ``size`` is small."""
        if size > self.capacity:
            return Slab.create(self.folder, size, reserve)
        if not self._free:
            slab = Slab.create(self.folder, self.capacity, reserve, prefix="pooled")
            self._reserved[slab.path] = reserve
            return slab
        slab = self._free.pop()
        if reserve > self._reserved[slab.path]:  # a tmpfs keeps a file's reserved pages: only the rest
            try:
                slab.reserve([(0, reserve)])
            except BaseException:
                self.give(slab, clean=False)  # no room: removed, not lost from the pool's sight
                raise
            self._reserved[slab.path] = reserve
        return slab

    def give(self, slab: Slab, clean: bool) -> None:
        """A request is over with ``slab``: kept if it is a pooled one, ``clean`` and there is room; else removed."""
        if clean and slab.path in self._reserved and len(self._free) < self.keep:
            self._free.append(slab)
            return
        self._reserved.pop(slab.path, None)
        slab.close()
        slab.unlink()

    def clear(self) -> None:
        """Remove the kept slabs (the service is stopping)."""
        for slab in self._free:
            self.give(slab, clean=False)
        self._free = []


def _allocate(fd: int, offset: int, size: int, folder: Path) -> None:
    """``posix_fallocate``: ENOSPC now (as ``SlabSpaceError``) instead of SIGBUS when the pages are written."""
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, offset, size)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        raise SlabSpaceError(f"{folder} has no room for {size / 2**20:.1f} MiB more ({e.strerror})") from None


def slab_folder(shm: Path = Path("/dev/shm")) -> Path:
    """This service's folder of slabs (``slab_folder_of``), made if it is not there."""
    folder = slab_folder_of(os.getpid(), shm)
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def slab_folder_of(pid: int, shm: Path = Path("/dev/shm")) -> Path:
    """The folder of service ``pid``'s slabs, named by its process id: under ``shm`` (a tmpfs) if writable, else the
    temp folder."""
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / f"mapex-{pid}"


def clean_stale(folder: Path) -> None:
    """Remove the slab folders of services that are gone (a killed service cannot clean up after itself)."""
    for other in folder.parent.glob("mapex-*"):
        pid = other.name.removeprefix("mapex-")
        if other != folder and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(other, ignore_errors=True)

"""An upload read while it still arrives: the bytes in its slab so far, and waits for those a read needs.

A raw body streams into its slab; a large one's session opens as soon as the TIFF's directories are in and
reads each row of tiles once the blocks those rows need are in (``tiff_layout``), so that the engine runs
the first rows while the client still sends the last (on a 100 Mbit/s link a 4096² scene takes 11 s to
arrive, as long as its engine time on these cores). GDAL must never read a byte that has not arrived:
the slab is sized for the whole body, and a byte not yet written reads as zero, a corrupt block that
GDAL would keep in its cache. The service tells the worker how much has arrived (``ArrivalGate.update``);
the session's thread waits here (``session``, ``worker``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mapex_serve.errors import ClientGoneError
from mapex_serve.tiff_layout import TiffLayout, parse

__all__ = ["MARGIN", "ArrivalGate", "UploadEndedError", "directory_and_rows"]

#: Bytes past those a read needs that must have arrived too: GDAL reads a local file through stdio, whose buffer
#: (4 KiB on tmpfs) may take bytes past the block it was asked for, and a COG repeats a block's last 4 bytes after it.
MARGIN = 64 * 1024


class UploadEndedError(ClientGoneError):
    """The session ended (the request was cancelled or the client left) while it waited for the upload's bytes."""


class ArrivalGate:
    """How many of an upload's ``size`` bytes are in its slab; ``wait`` blocks a session's thread until enough are.

    ``size`` is a raw body's Content-Length, or for a multipart body's first file part the most it may hold until
    the part ends (``update(..., whole=True)``).
    """

    def __init__(self, arrived: int, size: int) -> None:
        self.size = size
        self._arrived = arrived
        self._ended = False
        self._changed = threading.Condition()

    @property
    def arrived(self) -> int:
        return self._arrived

    @property
    def complete(self) -> bool:
        """Whether the whole upload is in."""
        return self._arrived >= self.size

    def update(self, arrived: int, whole: bool = False) -> None:
        """More bytes are in, ``whole``: all of them (the service's word, on the worker's main thread)."""
        with self._changed:
            if whole:
                self.size = arrived
            self._arrived = max(self._arrived, min(arrived, self.size))
            self._changed.notify_all()

    def end(self) -> None:
        """The session is over: a wait returns with ``UploadEndedError``, now or when it starts."""
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait(self, needed: int) -> None:
        """Until the first ``needed`` bytes (at most the whole upload) are in."""
        with self._changed:
            while self._arrived < min(needed, self.size):
                if self._ended:
                    raise UploadEndedError("the request ended while its upload was arriving")
                self._changed.wait()


def directory_and_rows(gate: ArrivalGate, head: Callable[[int], memoryview]) -> Callable[[int], None]:
    """Wait until GDAL may open the upload (``head(n)``: its first ``n`` bytes); what a read of rows ``[0, r)``
    must wait for then.

    A TIFF opens once every directory and its first row of blocks are in (GDAL may look at the first
    block as it opens some files); anything else, or a TIFF this reader cannot follow, once it is all in.
    """
    needed = 16
    while True:
        gate.wait(needed)
        got = parse(head(gate.arrived), gate.size)
        if isinstance(got, TiffLayout):
            break
        if got is None:
            gate.wait(gate.size)
            return lambda _rows: None
        needed = got
    layout = got
    gate.wait(layout.bytes_for_rows(layout.block_rows) + MARGIN)
    return lambda rows: gate.wait(layout.bytes_for_rows(rows) + MARGIN)

"""A request's upload on its way into its slab: a raw body or a multipart body's file parts written there as they
arrive, how much of the first file is in, and the slab let go once nothing writes there any more.

The event loop's side of reading a scene while it arrives (``decode.arriving`` is the worker's): it tells the
session's worker how much has arrived, decides from the header whether the file can be read before its end,
and notices a multipart body that brings a second file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from mapex_serve.decode.slab import ALIGN, Layout, Slab, SlabSpaceError, aligned
from mapex_serve.errors import MapexError
from mapex_serve.inputs import UploadedFile
from mapex_serve.tiff_layout import TiffLayout
from mapex_serve.tiff_layout import parse as parse_tiff
from mapex_serve.upload import RAW_NAME, MalformedUploadError

__all__ = ["RESERVE_STEP", "NoRoomToReceiveError", "Reading", "Upload", "parts_room"]

#: How a body of ``READ_WHILE_ARRIVING`` or more is read (``Upload.reading``; ``mapex_large_uploads_total{read}``).
Reading = Literal["while_arriving", "arrived_first", "directory_last", "not_a_tiff"]

#: Pages of slab reserved at a time for a body whose size is not known (sent chunked).
RESERVE_STEP = 4 * 2**20
#: A worker reading an upload that still arrives hears of its progress this often (and at its end).
_TELL_EVERY = 2**20
#: A (Big)TIFF's header: where its first directory lies.
_HEADER = 16
#: The most file parts a multipart body brings (``upload._MAX_PARTS``).
_MAX_PARTS = 64


class NoRoomToReceiveError(MapexError, RuntimeError):
    """The tmpfs filled up while a body of unknown size (sent chunked) was arriving into its slab."""


def parts_room(body: int) -> int:
    """Bytes of slab the file parts of a multipart body of ``body`` bytes may take, each aligned."""
    return body + _MAX_PARTS * ALIGN


@dataclass
class Upload:
    """A request's files and the slab they go to; the files are dropped once copied (none for a body that streams
    into the slab: a raw one, or the file parts of a large multipart one)."""

    slab: Slab
    layout: Layout
    files: list[UploadedFile]
    #: Called once, by the first ``discard``, with the slab and ``clean``: whether the request's sessions ended
    #: with their last answer (the slab may serve another request) or not (a worker may still write there).
    release: Callable[[Slab, bool], None]
    clean: bool = False
    discarded: bool = False
    #: A body still streaming into the slab while its session reads it (``decode.arriving``): the task that receives
    #: it, started by the route; None when the whole upload was in before the request began.
    arriving: asyncio.Task[Any] | None = None
    #: Bytes of the raw body in the slab so far; of a multipart body's first file part.
    arrived: int = 0
    #: A body whose files go into the slab as they arrive, each file's size learnt as it ends (``part_sink``): a
    #: multipart body's file parts, or a raw body sent chunked; ``layout.files`` lists the files that have ended.
    open_ended: bool = False
    #: Bytes from the slab's start reserved when it was made, for a body whose size is not known (sent chunked: its
    #: sink reserves the pages it writes as it goes, ``_SlabSink``); None: the whole files region.
    reserved: int | None = None
    #: Whether the first file (the raw body, a multipart body's first file part) has all arrived.
    first_complete: bool = False
    #: Who hears of the first file's arrival: a callable a session that reads it as it arrives (``listen``).
    _listeners: dict[int, Callable[[int, bool], None]] = field(default_factory=dict, init=False, repr=False)
    _told: int = field(default=0, init=False, repr=False)
    _header: asyncio.Future[None] | None = field(default=None, init=False, repr=False)
    #: A multipart body's files region of the slab: ``(offset, size)``.
    region: tuple[int, int] = (0, 0)
    _first_name: str = field(default=RAW_NAME, init=False, repr=False)
    _more_files: Callable[[], None] | None = field(default=None, init=False, repr=False)
    _placed: list[tuple[str, int, int]] = field(default_factory=list, init=False, repr=False)

    @property
    def size_known(self) -> bool:
        """Whether the body's size was declared (a Content-Length): its files region was reserved whole."""
        return self.reserved is None

    @property
    def still_arriving(self) -> bool:
        return self.arriving is not None and not self.arriving.done()

    async def reading(self) -> Reading:
        """How the body, received as it arrives, is read, decided once its header is in: ``while_arriving`` when it
        begins with a TIFF whose directories come before its blocks (a COG, a ``gdal_translate`` copy); otherwise
        once it is all in, since it ``arrived_first`` (all of it, or its first file, before the header was looked
        at), or its TIFF directory lies in the second half of the file (``directory_last``: GDAL's writer leaves it
        at the end of a file written window by window), or it is ``not_a_tiff``."""
        if self.arrived < _HEADER and self.still_arriving:
            self._header = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._header, self.arriving}, return_when=asyncio.FIRST_COMPLETED)
        if not self.still_arriving or self.first_complete:  # all in already (or cut short)
            return "arrived_first"
        _name, offset, size = self.layout.files[0]
        needs = parse_tiff(self.slab.view(offset, min(self.arrived, _HEADER)), size)
        # Directories first: in the first half of the file, or, of a body whose size is not known yet (sent
        # chunked, looked at once its first READ_WHILE_ARRIVING bytes are in), among the bytes in.
        first_half = size // 2 if self.size_known else self.arrived
        if isinstance(needs, TiffLayout) or (isinstance(needs, int) and needs <= first_half):
            return "while_arriving"
        return "not_a_tiff" if needs is None else "directory_last"

    def listen(self, session: int, listener: Callable[[int, bool], None] | None) -> None:
        """Call ``listener`` with the first file's bytes in so far and whether that is all of it, every ``_TELL_EVERY``
        bytes and at its end (``session``'s worker waits for them; each part of a split scene is a session); None:
        that session listens no more."""
        if listener is None:
            self._listeners.pop(session, None)
        else:
            self._listeners[session] = listener

    def on_more_files(self, call: Callable[[], None] | None) -> None:
        """Call ``call`` if a multipart body turns out to bring a second file (a session reading the first as it
        arrives then reads the wrong scene); None: nobody needs to know any more."""
        self._more_files = call

    def first_file(self) -> Layout:
        """The layout a session reads the first file with while it arrives: where it starts, and room to its end."""
        _name, offset, size = self.layout.files[0]
        return replace(self.layout, files=((self._first_name, offset, size),))

    def _arrive(self, arrived: int, complete: bool = False) -> None:
        self.arrived = arrived
        if not self.open_ended and arrived == self.layout.files[0][2]:
            complete = True
        self.first_complete = complete
        if self._header is not None and (arrived >= _HEADER or complete) and not self._header.done():
            self._header.set_result(None)
        if arrived - self._told >= _TELL_EVERY or complete:
            self._told = arrived
            for listener in list(self._listeners.values()):
                listener(arrived, complete)

    def fill(self) -> None:
        """Copy the files into the slab (a raw body streamed there already: nothing to copy)."""
        if not self.files:
            return
        for f, (_name, offset, _size) in zip(self.files, self.layout.files, strict=True):
            self.slab.write(offset, f.data)
        self.files = []

    def read_files(self) -> list[UploadedFile]:
        """The upload's files, read back from the slab."""
        return [UploadedFile(name, self.slab.read(offset, size)) for name, offset, size in self.layout.files]

    def sink(self, _index: int, _name: str) -> _SlabSink:
        """Where ``upload.receive`` writes a raw body: straight into the slab, no copy held in between."""
        _name, offset, size = self.layout.files[0]
        return _SlabSink(self.slab, offset, size, self._arrive)

    def part_sink(self, index: int, name: str) -> _SlabSink:
        """Where ``upload.receive`` writes file part ``index`` of a multipart body: in the slab's files region, after
        the parts before it, each in ``layout.files`` once it has ended; the first is read as it arrives."""
        start, room = self.region
        if index == 0:
            self._first_name, arrived = name, self._arrive
        else:
            if self._more_files is not None:
                self._more_files()
            arrived = None
        _name, before, size = self._placed[-1] if self._placed else (name, start, 0)
        at = aligned(before + size)

        def ended(size: int) -> None:
            self._placed.append((name, at, size))
            self.layout = replace(self.layout, files=tuple(self._placed))
            if index == 0:
                self._arrive(size, complete=True)

        return _SlabSink(self.slab, at, start + room - at, arrived, ended,
                         None if self.size_known else self._reserve_until)

    def _reserve_until(self, end: int) -> None:
        """The slab's pages reserved up to ``end`` at least, ``RESERVE_STEP`` at a time (a body of unknown size: its
        sinks reserve as they write, so that a full tmpfs refuses it, 503, instead of a write into the mapping
        killing the service with SIGBUS)."""
        if self.reserved is None or end <= self.reserved:
            return
        start, room = self.region
        step = min(max(RESERVE_STEP, end - self.reserved), start + room - self.reserved)
        try:
            self.slab.reserve([(self.reserved, step)])
        except SlabSpaceError as e:
            raise NoRoomToReceiveError(
                f"the service's shared memory has no room for the rest of this upload ({e}); retry shortly, or send "
                f"it with its size (a Content-Length, as curl -F file=@scene.tif or --data-binary @scene.tif do), "
                f"whose room is set aside first") from None
        self.reserved += step

    def discard(self) -> None:
        """Let go of the slab (idempotent): the request is over, answered or not; once the body has stopped arriving
        (the route drains it, or cancels it when the client left), since nothing may write to a released slab."""
        self.files = []
        if not self.discarded:
            self.discarded = True
            if self.still_arriving:
                self.arriving.add_done_callback(lambda _task: self.release(self.slab, self.clean))
            else:
                self.release(self.slab, self.clean)


class _SlabSink:
    """A raw body, or a file part of a multipart one, written into its place in the slab as it arrives (the HTTP
    server holds a body to its Content-Length; the parts of a body fit in it). ``reserve(end)``: for a body of
    unknown size, whose slab's pages are reserved as it is written (``Upload._reserve_until``)."""

    def __init__(self, slab: Slab, offset: int, room: int, arrived: Callable[[int], None] | None,
                 ended: Callable[[int], None] | None = None, reserve: Callable[[int], None] | None = None) -> None:
        self._slab, self._start, self._at, self._end = slab, offset, offset, offset + room
        self._arrived, self._ended, self._reserve = arrived, ended, reserve

    def write(self, data: bytes, /) -> None:
        if self._at + len(data) > self._end:
            raise MalformedUploadError("the body is longer than its Content-Length")
        if self._reserve is not None:
            self._reserve(self._at + len(data))
        self._slab.write(self._at, data)
        self._at += len(data)
        if self._arrived is not None:
            self._arrived(self._at - self._start)

    def close(self) -> None:
        """The part's size is known now (nothing to release: the slab outlives its sink)."""
        if self._ended is not None:
            self._ended, ended = None, self._ended
            ended(self._at - self._start)

"""Receiving rasters: one or more multipart fields ``file`` (and the route's options as fields), or the raw body;
parsed while it streams in.

The body is never buffered whole and then parsed again: multipart parts are assembled as their
bytes arrive (python-multipart's streaming parser, the one Starlette uses), and the size limit is
checked chunk by chunk, so an oversized upload is refused as soon as it passes the limit.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from mapex_serve.errors import ClientGoneError, MapexError
from mapex_serve.inputs import UploadedFile

__all__ = [
    "MULTIPART_FRAMING", "BodyProgress", "MalformedUploadError", "OptionFieldError", "OptionFields", "Sink",
    "UnsupportedContentEncodingError", "UnsupportedMediaTypeError", "UploadTimeoutError", "UploadTooLargeError",
    "body_chunks", "body_head", "body_progress", "check_not_encoded", "declared_size", "raw_name", "read_upload",
    "receive", "resumed", "save_upload", "sent_chunked", "still_arriving_error",
]

#: Archives of raster files (Earth Engine's ZIP of one GeoTIFF a band, a tar, a .tif.gz) are unpacked (``archives``);
#: a raw body of one is named by its type (what the answer's report calls it).
ARCHIVE_TYPES = {"application/zip": "upload.zip", "application/x-zip-compressed": "upload.zip",
                 "application/x-tar": "upload.tar", "application/x-gtar": "upload.tar", "application/gzip": "upload.gz",
                 "application/x-gzip": "upload.gz", "application/x-bzip2": "upload.bz2", "application/x-xz": "upload.xz"}
#: Raster formats other than TIFF by the media types STAC assets give them (``image/jp2`` for a SAFE's bands,
#: ``application/x-netcdf``, ``application/x-hdf5``): a raw body of one is named by its type, as its format's files are.
RASTER_TYPES = {"image/jp2": "upload.jp2", "application/x-netcdf": "upload.nc", "application/netcdf": "upload.nc",
                "application/x-hdf5": "upload.h5", "application/x-hdf": "upload.hdf"}
RAW_TYPES = ("image/tiff", "image/geotiff", "application/octet-stream", *RASTER_TYPES, *ARCHIVE_TYPES)
#: The file name a raw body gets (multipart parts bring their own).
RAW_NAME = "upload.tif"
MULTIPART_FRAMING = 64 * 1024  # room for multipart boundaries and part headers
_PROGRESS = "mapex.body"  # the scope's key of a request's BodyProgress
_MAX_PARTS = 64
#: The largest option a multipart field may give (an aoi polygon of 100,000 vertices is about 4 MiB of GeoJSON).
_MAX_OPTION = 16 * 2**20


class UploadTooLargeError(MapexError, ValueError):
    """The upload is larger than MAPEX_MAX_UPLOAD_MB."""


class UnsupportedMediaTypeError(MapexError, ValueError):
    """Neither multipart/form-data nor a raw image/tiff body."""


class UnsupportedContentEncodingError(UnsupportedMediaTypeError):
    """An upload sent with a Content-Encoding (gzip, br ...): uploads are taken as they are."""


class MalformedUploadError(MapexError, ValueError):
    """A multipart body that does not parse."""


class OptionFieldError(MapexError, ValueError):
    """A multipart option field that cannot be taken: given twice, after a file read as it arrives, or not text."""


class UploadTimeoutError(MapexError, TimeoutError):
    """The request's time ran out while its body was still arriving (a slow link, not a slow service)."""


@dataclass
class BodyProgress:
    """How much of a request's body has arrived: what a time limit that runs out mid-upload reports."""

    received: int = 0
    complete: bool = False


def body_progress(request: Request) -> BodyProgress:
    """The request's body progress, kept in its scope (made on first use: a request whose body was never read)."""
    progress = request.scope.get(_PROGRESS)
    if progress is None:
        progress = request.scope[_PROGRESS] = BodyProgress()
    return progress


def still_arriving_error(request: Request, limit_s: float, way_round: str) -> UploadTimeoutError | None:
    """The 408 of a request whose ``limit_s`` ran out while its body still arrived (None once it was all in): how
    much came at what speed, how long all of it would need, and ``way_round``. A slow link, not a slow service: a
    129 MiB scene needs 108 s at 10 Mbit/s."""
    progress = body_progress(request)
    if progress.complete:
        return None
    rate = progress.received / limit_s  # bytes a second since the request began
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else 0
    need = f"; at that speed its {size / 2**20:.1f} MiB need about {size / rate:.0f} s" if size and rate else ""
    return UploadTimeoutError(
        f"the upload was still arriving after {limit_s:g} s, the time limit of the upload and the work together "
        f"(MAPEX_REQUEST_TIMEOUT_S): {progress.received / 2**20:.1f} MiB in, {rate * 8 / 1e6:.2f} Mbit/s{need}. Over a "
        f"link this slow {way_round}, or ask the operator to raise MAPEX_REQUEST_TIMEOUT_S")


def _too_large(limit: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"the upload is larger than {limit / 2**20:g} MiB (MAPEX_MAX_UPLOAD_MB); send a "
                               f"smaller GeoTIFF or crop the scene")


class Sink(Protocol):
    """Where one part's bytes go: memory or shared memory for ``/predict``, a file on disk for a job."""

    def write(self, data: bytes, /) -> object: ...

    def close(self) -> None: ...


@dataclass
class OptionFields:
    """The options a multipart body gives as fields (``-F units=dB``) besides its files, for the route to take with its
    query's: ``names`` are the route's options. A body read whole first may give them anywhere; one read as it arrives
    (``read_as_it_arrives``) starts with the options given by then, so they must come before its first file, which
    ``known`` then says has begun."""

    names: Collection[str]
    given: dict[str, str] = field(default_factory=dict)
    known: asyncio.Future[None] | None = None

    def read_as_it_arrives(self) -> None:
        self.known = asyncio.get_running_loop().create_future()


class _Parts:
    """python-multipart callbacks that collect each part's headers and send its bytes to a sink of its own; a field
    named as one of the route's options goes to ``fields``."""

    def __init__(self, open_sink: Callable[[int, str], Sink], fields: OptionFields | None = None,
                 path: str = "") -> None:
        self.parts: list[tuple[dict[bytes, bytes], Sink | None]] = []
        self._open_sink = open_sink
        self._fields, self._path = fields, path
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""
        self._sink: Sink | None = None
        self._option: tuple[str, bytearray] | None = None  # an option field's name, and its value so far

    def on_part_begin(self) -> None:
        if len(self.parts) >= _MAX_PARTS:
            raise MalformedUploadError(f"the multipart body has more than {_MAX_PARTS} parts")
        self._headers, self._sink = {}, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def on_headers_finished(self) -> None:
        """``file`` parts go to their sinks, option fields to ``fields``; other fields are read past (their names go
        into the error message)."""
        _, disposition = parse_options_header(self._headers.get(b"content-disposition", b""))
        named = disposition.get(b"name", b"").decode("utf-8", "replace")
        files = sum(1 for _, sink in self.parts if sink is not None)
        if named == "file":
            name = disposition.get(b"filename", b"").decode("utf-8", "replace") or f"part{files}.tif"
            self._sink = self._open_sink(files, name)
            if self._fields is not None and self._fields.known is not None and not self._fields.known.done():
                self._fields.known.set_result(None)
        elif self._fields is not None and named in self._fields.names:
            if named in self._fields.given:
                raise OptionFieldError(f"the multipart field {named!r} is given twice; give each option once")
            if files and self._fields.known is not None:
                raise OptionFieldError(
                    f"the multipart field {named!r} comes after the file: a scene this large is read as it arrives, "
                    f"with the options given before it; put -F {named}=... before -F file=@..., or send it in the "
                    f"query (POST {self._path}?{named}=...)")
            self._option = named, bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(data[start:end])
        elif self._option is not None:
            name, value = self._option
            if len(value) + end - start > _MAX_OPTION:
                raise OptionFieldError(f"the multipart field {name!r} is larger than {_MAX_OPTION // 2**20} MiB; "
                                       f"an option's value is smaller (simplify an aoi polygon: ogr2ogr -simplify)")
            value.extend(data[start:end])

    def on_part_end(self) -> None:
        if self._option is not None and self._fields is not None:
            name, value = self._option
            try:
                self._fields.given[name] = value.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise OptionFieldError(f"the multipart field {name!r} is not UTF-8 text") from None
            self._option = None
        if self._sink is not None:
            self._sink.close()
        self.parts.append((self._headers, self._sink))
        self._sink = None

    def close(self) -> None:
        """Close every part's sink, the one being written included (an upload cut short leaves no open file)."""
        for sink in [*(sink for _, sink in self.parts), self._sink]:
            if sink is not None:
                sink.close()

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in ("on_part_begin", "on_header_field", "on_header_value",
                                                       "on_header_end", "on_headers_finished", "on_part_data",
                                                       "on_part_end")}


class _InMemory(io.BytesIO):
    """A part held in memory, each chunk ``hold``-ed first (``Reservation.grow``: the service's memory budget);
    ``close`` keeps the bytes (they are read after the body ends)."""

    def __init__(self, name: str, hold: Callable[[int], None]) -> None:
        super().__init__()
        self.name, self._hold = name, hold

    def write(self, data: bytes, /) -> int:
        self._hold(len(data))
        return super().write(data)

    def close(self) -> None:
        self.data = self.getvalue()


async def body_chunks(request: Request, ceiling: int, limit: int,
                      too_large: Callable[[int], MapexError] = _too_large) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, its progress kept (``body_progress``); ``too_large(limit)`` as soon as they
    pass ``ceiling`` bytes. A client that leaves mid-upload is a ``ClientGoneError`` (499, counted and logged in a
    line, not a traceback)."""
    size, progress = 0, body_progress(request)
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > ceiling:
                raise too_large(limit)
            progress.received = size
            yield chunk
        progress.complete = True
    except ClientDisconnect:
        raise ClientGoneError(f"the client closed the connection after {size:,} bytes of its upload") from None


def _media_type(request: Request) -> tuple[str, dict[bytes, bytes]]:
    """The request's media type, lower case, and its parameters (a multipart boundary)."""
    media, options = parse_options_header(request.headers.get("content-type", ""))
    return media.decode("latin-1").lower(), options


def check_not_encoded(request: Request) -> None:
    """Refuse (415) an upload sent with a Content-Encoding the service does not decode: one it did not look at would
    be read as if it were the file. A raw body sent with ``gzip`` is taken: it is a gzip file, which the decode
    worker inflates as it unpacks any (``archives``), off the event loop and within the upload limit."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return
    if encoding in ("gzip", "x-gzip") and _media_type(request)[0] != "multipart/form-data":
        return
    raise UnsupportedContentEncodingError(
        f"Content-Encoding {encoding!r} is not accepted for this upload; send the file as it is (a GeoTIFF compresses "
        f"inside: a COG with DEFLATE or ZSTD is about as small) without a Content-Encoding header, or gzip it and "
        f"send it as the raw body (Content-Encoding: gzip, or Content-Type: application/gzip)")


async def receive(request: Request, limit: int, open_sink: Callable[[int, str], Sink],
                  chunks: AsyncIterator[bytes] | None = None, fields: OptionFields | None = None) -> list[Sink]:
    """Every ``file`` part (or the raw body) streamed into sinks, and a multipart body's option fields into ``fields``;
    refuses a body as soon as it passes ``limit`` bytes. ``chunks``: the body's, from its start, when the caller began
    to read it (``resumed``)."""
    check_not_encoded(request)
    media, media_parameters = _media_type(request)
    if media != "multipart/form-data" and media not in RAW_TYPES:
        raise UnsupportedMediaTypeError(
            f"unsupported media type {media or '(none)'!r}; send the GeoTIFF as multipart/form-data with a "
            f"field named 'file', or as the raw body with Content-Type: image/tiff (image/jp2, application/x-netcdf "
            f"or application/x-hdf5 for those formats; application/zip, application/x-tar or application/gzip for an "
            f"archive of raster files)"
        )
    multipart = media == "multipart/form-data"
    ceiling = limit + (MULTIPART_FRAMING if multipart else 0)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > ceiling:
        raise _too_large(limit)
    if chunks is None:
        chunks = body_chunks(request, ceiling, limit)
    if not multipart:
        sink = open_sink(0, raw_name(request))
        try:
            async for chunk in chunks:
                sink.write(chunk)
        finally:
            sink.close()
        return [sink]
    boundary = media_parameters.get(b"boundary")
    if not boundary:
        raise MalformedUploadError("the multipart body declares no boundary (Content-Type: multipart/form-data; "
                                   "boundary=...); let the client build it, e.g. curl -F file=@scene.tif")
    parts = _Parts(open_sink, fields, request.url.path)
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise MalformedUploadError(f"the multipart body does not parse ({e}); send -F file=@scene.tif") from None
    finally:
        parts.close()
    sinks = [sink for _, sink in parts.parts if sink is not None]
    if not sinks:
        names = sorted({parse_options_header(h.get(b"content-disposition", b""))[1].get(b"name", b"").decode(
            "utf-8", "replace") for h, _ in parts.parts})
        raise UnsupportedMediaTypeError(
            f"the multipart body has no file field named 'file' (fields: {names}); send the GeoTIFF as "
            f"-F file=@scene.tif (repeat -F file=@... for several files of one scene)"
        )
    return sinks


def declared_size(request: Request) -> tuple[bool, int] | None:
    """``(multipart, size)`` of a body whose Content-Length declares its size (a raw image body, or a multipart one),
    None otherwise.

    Then the upload's size, or a bound on its file parts', is known before it arrives, so that it can be written
    straight to where it will be read (a decode worker's shared memory) instead of collected first.
    """
    media, declared = _media_type(request)[0], request.headers.get("content-length", "")
    if (media in RAW_TYPES or media == "multipart/form-data") and declared.isdigit():
        return media == "multipart/form-data", int(declared)
    return None


def raw_name(request: Request) -> str:
    """The file name a raw body gets: ``upload.tif``, ``upload.jp2`` (``.nc`` ...) for another raster format, or
    ``upload.zip`` (``.tar`` ...) for an archive."""
    media = _media_type(request)[0]
    return RASTER_TYPES.get(media) or ARCHIVE_TYPES.get(media, RAW_NAME)


def sent_chunked(request: Request) -> Literal["raw", "multipart"] | None:
    """How a body without a Content-Length (sent chunked) is framed: a raw image, or multipart; None for one with a
    Content-Length (or of a type not accepted). Its size is known only once it has all arrived."""
    if "content-length" in request.headers:  # nearly every request: no second parse of its type
        return None
    media = _media_type(request)[0]
    return "raw" if media in RAW_TYPES else "multipart" if media == "multipart/form-data" else None


async def body_head(request: Request, limit: int, size: int, hold: Callable[[int], None], *,
                    multipart: bool = False) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """A body of unknown length: its first ``size`` bytes or a little more (all of it if it is shorter), each chunk
    ``hold``-ed as it arrives, and the rest still to come (None when the body has ended), which the caller must read
    or close (``aclose``); refused (413) as soon as it passes ``limit`` bytes (and a multipart body's framing)."""
    chunks = body_chunks(request, limit + (MULTIPART_FRAMING if multipart else 0), limit)
    head = bytearray()
    async for chunk in chunks:
        hold(len(chunk))
        head += chunk
        if len(head) >= size:
            return bytes(head), chunks
    return bytes(head), None


async def resumed(head: bytes, rest: AsyncIterator[bytes] | None) -> AsyncIterator[bytes]:
    """A body's chunks from its start again: the ``head`` read already (``body_head``), then the ``rest``."""
    yield head
    if rest is not None:
        try:
            async for chunk in rest:
                yield chunk
        finally:
            await rest.aclose()


async def read_upload(request: Request, limit: int, hold: Callable[[int], None] = lambda _n: None,
                      chunks: AsyncIterator[bytes] | None = None,
                      fields: OptionFields | None = None) -> list[UploadedFile]:
    """The uploaded files (every ``file`` part, in order), in memory, each chunk ``hold``-ed as it arrives
    (``chunks``, ``fields``: as ``receive``)."""
    sinks = await receive(request, limit, lambda _i, name: _InMemory(name, hold), chunks, fields)
    files = [UploadedFile(s.name, s.data) for s in sinks]
    if sum(len(f.data) for f in files) > limit:
        raise _too_large(limit)
    return files


async def save_upload(request: Request, folder: Path, limit: int,
                      fields: OptionFields | None = None) -> list[tuple[str, Path]]:
    """The uploaded files written to ``folder`` as they stream in: ``(name as sent, path)``, in order.

    For whole-scene jobs: a scene of many GB never sits in memory. Each part is saved under its
    index (the name the client sent is kept for band identification, not used as a path).
    """
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []

    def open_file(index: int, name: str) -> Sink:
        names.append(name)
        return (folder / f"part{index:02d}").open("wb")

    sinks = await receive(request, limit, open_file, fields=fields)
    return [(name, Path(s.name)) for name, s in zip(names, sinks, strict=True)]

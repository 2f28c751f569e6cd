"""Receiving rasters: one or more multipart fields ``file``, or the raw body; size-limited while streaming."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request

from mapex_serve.errors import MapexError
from mapex_serve.inputs import UploadedFile

__all__ = ["UnsupportedMediaTypeError", "UploadTooLargeError", "read_upload"]

RAW_TYPES = ("image/tiff", "image/geotiff", "application/octet-stream")


class UploadTooLargeError(MapexError, ValueError):
    """The upload is larger than MAPEX_MAX_UPLOAD_MB."""


class UnsupportedMediaTypeError(MapexError, ValueError):
    """Neither multipart/form-data nor a raw image/tiff body."""


def _too_large(limit: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"the upload is larger than {limit / 2**20:g} MiB (MAPEX_MAX_UPLOAD_MB); send a "
                               f"smaller GeoTIFF or crop the scene")


async def read_upload(request: Request, limit: int) -> list[UploadedFile]:
    """The uploaded files (every ``file`` part, in order); refuses a body as soon as it passes ``limit`` bytes."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data" and media not in RAW_TYPES:
        raise UnsupportedMediaTypeError(
            f"unsupported media type {media or '(none)'!r}; send the GeoTIFF as multipart/form-data with a "
            f"field named 'file', or as the raw body with Content-Type: image/tiff"
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + 64 * 1024:  # a little room for multipart framing
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if media != "multipart/form-data":
        if len(body) > limit:
            raise _too_large(limit)
        return [UploadedFile("upload.tif", body)]
    return await _multipart_files(request, body, limit)


async def _multipart_files(request: Request, body: bytes, limit: int) -> list[UploadedFile]:
    """Parse the buffered multipart body with Starlette's parser and return its ``file`` fields."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, receive).form(max_files=64)
    try:
        fields = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not fields:
            raise UnsupportedMediaTypeError(
                f"the multipart body has no file field named 'file' (fields: {sorted(form.keys())}); "
                f"send the GeoTIFF as -F file=@scene.tif (repeat -F file=@... for several files of one scene)"
            )
        files = [UploadedFile(f.filename or f"part{i}.tif", await f.read()) for i, f in enumerate(fields)]
    finally:
        await form.close()
    if sum(len(f.data) for f in files) > limit:
        raise _too_large(limit)
    return files

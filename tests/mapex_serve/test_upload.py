"""Receiving uploads with Starlette's real Request over a streamed ASGI body."""

import asyncio
import tracemalloc

import httpx
import pytest
from starlette.requests import Request

from mapex_serve.upload import (
    MalformedUploadError,
    OptionFieldError,
    OptionFields,
    UnsupportedMediaTypeError,
    UploadTooLargeError,
    read_upload,
)


def streamed(content: bytes, content_type: str, chunk: int = 64 * 1024) -> tuple[Request, list[int]]:
    """A Request whose body arrives in ``chunk``-byte messages; the list counts the messages it took."""
    taken: list[int] = []
    pieces = [content[i: i + chunk] for i in range(0, len(content), chunk)] or [b""]

    async def receive() -> dict:
        i = len(taken)
        taken.append(i)
        return {"type": "http.request", "body": pieces[i], "more_body": i + 1 < len(pieces)}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", content_type.encode())]}
    return Request(scope, receive), taken


def multipart(files: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart body exactly as httpx (the client most Python users have) encodes it; a part named None is a
    form field (no file name)."""
    req = httpx.Request("POST", "http://x", files=[(field, (name, data)) for field, name, data in files])
    return req.read(), req.headers["content-type"]


def test_several_file_parts_keep_their_names_and_order():
    body, ctype = multipart([("file", "VV.tif", b"vv-bytes"), ("other", "x.txt", b"ignored"), ("file", "VH.tif", b"vh")])
    files = asyncio.run(read_upload(streamed(body, ctype, chunk=7)[0], 10**6))
    assert [(f.name, f.data) for f in files] == [("VV.tif", b"vv-bytes"), ("VH.tif", b"vh")]


def test_an_oversized_upload_is_refused_while_it_streams():
    body, ctype = multipart([("file", "big.tif", b"\0" * 5_000_000)])
    request, taken = streamed(body, ctype)
    with pytest.raises(UploadTooLargeError, match="MAPEX_MAX_UPLOAD_MB"):
        asyncio.run(read_upload(request, 1_000_000))
    assert len(taken) < 20, "refused after about 1 MB, not after reading all 5 MB"


def test_malformed_and_fieldless_bodies():
    with pytest.raises(MalformedUploadError, match="boundary"):
        asyncio.run(read_upload(streamed(b"x", "multipart/form-data")[0], 1000))
    body, ctype = multipart([("data", "a.tif", b"x")])
    with pytest.raises(UnsupportedMediaTypeError, match=r"no file field named 'file' \(fields: \['data'\]\)"):
        asyncio.run(read_upload(streamed(body, ctype)[0], 1000))
    with pytest.raises(UnsupportedMediaTypeError, match="image/tiff"):
        asyncio.run(read_upload(streamed(b"x", "text/plain")[0], 1000))


OPTIONS = ("aoi", "bands", "units")


@pytest.mark.parametrize("first", ["option", "file"])
def test_a_multipart_body_gives_options_as_fields_before_or_after_its_file(first):
    """``curl -F file=@s.tif -F units=dB`` was read as if units were not given: the service guessed them."""
    parts = [("units", None, b"dB"), ("file", "s.tif", b"tiff"), ("note", None, b"read past")]
    body, ctype = multipart(parts if first == "option" else parts[1:2] + parts[:1] + parts[2:])
    fields = OptionFields(OPTIONS)
    files = asyncio.run(read_upload(streamed(body, ctype, chunk=5)[0], 10**6, fields=fields))
    assert [f.data for f in files] == [b"tiff"] and fields.given == {"units": "dB"}


@pytest.mark.parametrize(("parts", "refusal"), [
    ([("units", None, b"dB"), ("units", None, b"linear"), ("file", "s.tif", b"tiff")], "'units' is given twice"),
    ([("file", "s.tif", b"tiff"), ("aoi", "basin.geojson", b"{}")], r"'aoi' comes after the file.*before -F file="),
    ([("bands", None, b"\xff\xfe"), ("file", "s.tif", b"tiff")], "'bands' is not UTF-8 text"),
])
def test_option_fields_that_cannot_be_taken_are_refused(parts, refusal):
    body, ctype = multipart(parts)

    async def read() -> None:  # a scene read as it arrives takes the options given before its first file
        fields = OptionFields(OPTIONS)
        fields.read_as_it_arrives()
        await read_upload(streamed(body, ctype)[0], 10**6, fields=fields)

    with pytest.raises(OptionFieldError, match=refusal):
        asyncio.run(read())


def test_a_multipart_upload_is_held_about_once_not_three_times():
    """Buffering the body, then Starlette's form parser, then ``field.read()`` held a 20 MB upload 3-4 times."""
    payload = bytes(range(256)) * (20 * 2**20 // 256)
    body, ctype = multipart([("file", "scene.tif", payload)])
    request, _ = streamed(body, ctype)
    del body  # the client's copy; what the server holds is what counts (the receive() pieces stay: 1x)

    async def measured() -> tuple[list, int]:  # inside the loop: asyncio.run's own teardown is not the upload's
        tracemalloc.start()
        try:
            got = await read_upload(request, 100 * 2**20)
            return got, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    files, peak = asyncio.run(measured())
    assert files[0].data == payload
    print(f"peak while reading a 20 MiB multipart upload: {peak / 2**20:.1f} MiB")
    assert peak < 1.5 * len(payload)  # the joined part; the old path (join, form parser, read) held it 2-3 times

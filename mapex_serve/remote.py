"""What a file read in place by its URL (a job's ``/vsicurl/``, ``/vsis3/`` or ``/vsigs/`` source) fails with, said
so that its sender can act on it.

GDAL reports a server's refusal as ``HTTP response code: 401`` and an unreachable server as a curl error, which
reached the user as "the upload is not a readable raster". The products this service reads most are behind
logins (NASA Earthdata's HLS and OPERA, Copernicus Data Space) or signed URLs (the Planetary Computer), so a 401
or 403 is the common case, and its remedies are the sender's or the deployment's, never the file's. A server
may also stop serving a file it served when the job started (a signed URL that expires during a long job), which
GDAL reports as a short read. Messages name the file, never its URL, which may carry a signature.
"""

from __future__ import annotations

import re
import warnings
from xml.sax.saxutils import escape

import rasterio
from rasterio.errors import NotGeoreferencedWarning

from mapex_serve.errors import MapexError

__all__ = ["RemoteFileError", "RemoteFileUnavailableError", "first_bytes", "read_failure", "remote_failure"]

_HTTP_CODE = re.compile(r"HTTP response code: (\d{3})")
_CURL_ERROR = re.compile(r"CURL error: (.+)")
#: What GDAL's /vsis3/ and /vsigs/ say from an object store's error document (or of their own missing credentials).
_S3_REFUSED = re.compile(r"Access ?Denied|InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|"
                         r"(AWS|GS)_NO_SIGN_REQUEST(=YES)? configuration options not defined", re.I)
_S3_MISSING = re.compile(r"The specified (?:key|bucket) does not exist|NoSuchKey|NoSuchBucket", re.I)
#: What GDAL says when the bytes of a block stop coming (libtiff's short read), or the server's own words.
_STOPPED = re.compile(r"got 0 bytes|HTTP response code|CURL error", re.I)


class RemoteFileError(MapexError, ValueError):
    """A file by URL its server will not serve: it needs an authorisation the service lacks, or is not there."""


class RemoteFileUnavailableError(MapexError):
    """A file by URL whose server could not be reached or failed: the same request may succeed later."""


def remote_failure(name: str, message: str) -> MapexError | None:
    """The error GDAL's ``message`` about the remote file ``name`` stands for; None for one that is not the
    server's or the network's (a file that is there but is no raster)."""
    http = _HTTP_CODE.search(message)
    code = int(http.group(1)) if http else None
    if code in (401, 403) or _S3_REFUSED.search(message):
        said = f"HTTP {code}" if code else _no_credentials(message) or message.strip().rstrip(".")
        return RemoteFileError(
            f"{name}: its server refused it ({said}): the file needs an authorisation the service does not hold; "
            f"send a signed URL (an S3 presigned URL, a Planetary Computer href signed with its SAS token), have the "
            f"deployment give GDAL credentials for that server (NASA Earthdata: a .netrc for urs.earthdata.nasa.gov "
            f"with GDAL_HTTP_COOKIEFILE and GDAL_HTTP_COOKIEJAR set, or GDAL_HTTP_HEADERS='Authorization: Bearer "
            f"<token>'; S3: the AWS_* variables; Google Cloud Storage: GOOGLE_APPLICATION_CREDENTIALS, or "
            f"GS_NO_SIGN_REQUEST=YES for a public bucket), or upload the file")
    if code in (404, 410) or _S3_MISSING.search(message):
        said = f"HTTP {code}" if code else message.strip().rstrip(".")
        return RemoteFileError(f"{name}: its server has no file at that URL ({said}); check the URL")
    if code == 429 or (code or 0) >= 500:
        return RemoteFileUnavailableError(f"{name}: its server failed to serve it (HTTP {code}); try again later, or "
                                          f"upload the file")
    if code is not None:
        return RemoteFileError(f"{name}: its server refused to serve it (HTTP {code})")
    if (curl := _CURL_ERROR.search(message)) is not None:
        return RemoteFileUnavailableError(f"{name}: its server could not be reached ({curl.group(1).strip()}); check "
                                          f"the URL, or upload the file")
    return None


def _no_credentials(message: str) -> str | None:
    for variable, store in (("AWS_NO_SIGN_REQUEST", "S3"), ("GS_NO_SIGN_REQUEST", "Google Cloud Storage")):
        if variable in message:
            return f"the service holds no {store} credentials"
    return None


def read_failure(name: str, error: BaseException) -> MapexError | None:
    """The error a failed read of the remote file ``name`` stands for when its server stopped serving it after it
    was opened (a signed URL that expired during a long job, a server gone); None for a block that came but does
    not decode. GDAL chains the reason under "Read failed. See previous exception"."""
    said, e = [], error
    while e is not None and len(said) < 8:
        said.append(str(e))
        e = e.__cause__ or e.__context__
    if not any(_STOPPED.search(m) for m in said):
        return None
    return RemoteFileUnavailableError(
        f"{name}: its server stopped serving it while it was read (a signed URL that expired, or a server that "
        f"failed); send the job again with a URL valid for longer than the job runs, or upload the file")


def first_bytes(path: str, size: int) -> bytes:
    """The first ``size`` bytes of a file GDAL reads where it lies (``/vsicurl/``, ``/vsis3/``, ``/vsigs/``), through
    GDAL's own I/O, so with the credentials and headers the deployment gives GDAL: a raw VRT band of one row over it
    (rasterio has no public call for a file's bytes). A few bytes past the file's end read as zeros; GDAL refuses a
    range far past it ("Image file is too small"), as it does a file it cannot read: rasterio's error."""
    vrt = (f'<VRTDataset rasterXSize="{size}" rasterYSize="1"><VRTRasterBand dataType="Byte" band="1" '
           f'subClass="VRTRawRasterBand"><SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>'
           f"<ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>{size}</LineOffset>"
           f"</VRTRasterBand></VRTDataset>")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a row of bytes has no place on the ground
        with rasterio.open(vrt, driver="VRT") as raw:
            return raw.read(1)[0].tobytes()

"""Every error the service raises on purpose is a MapexError; this is the one table of their HTTP statuses."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from mapex_serve.aoi import BboxError
from mapex_serve.archives import ArchiveTooLargeError, UnreadableArchiveError
from mapex_serve.areas import AreaError
from mapex_serve.backscatter import BackscatterError
from mapex_serve.batcher import QueueFullError, ServiceStoppingError
from mapex_serve.budget import MemoryBudgetError, OverBudgetError
from mapex_serve.dea import DeaNameError
from mapex_serve.decode.incoming import NoRoomToReceiveError
from mapex_serve.decode.pool import DecodeUnavailableError
from mapex_serve.earth_engine import ImageStackError
from mapex_serve.engine import EngineInputError
from mapex_serve.errors import (
    ClientGoneError,
    DuplicateBandError,
    JobsLoopError,
    JobsServerUnreachableError,
    MapexError,
    RequestTimeoutError,
    UnknownBandError,
    UnknownModalityError,
    UnknownModelError,
    UnknownTaskError,
)
from mapex_serve.ground import PixelSizeError
from mapex_serve.inputs import (
    ForbiddenReferenceError,
    GridMismatchError,
    RasterTooLargeError,
    SubdatasetsError,
    UnreadableInputError,
)
from mapex_serve.jobs.sources import JobSourceError
from mapex_serve.predict import UnreadableRasterError
from mapex_serve.rasters import BandIdentityConflictError, BandNamesMissingError, LandsatSensorUnknownError
from mapex_serve.reflectance import ReflectanceLevelError
from mapex_serve.remote import RemoteFileError, RemoteFileUnavailableError
from mapex_serve.responses import GeoJSONNotAvailableError
from mapex_serve.routes.jobs import (
    JobConflictError,
    JobExpiredError,
    JobNotFoundError,
    JobRequestError,
    JobsDisabledError,
)
from mapex_serve.routes.query import UnknownOptionError
from mapex_serve.routing import NoMatchingSpecialistError
from mapex_serve.thresholds import MaskThresholdError
from mapex_serve.units import ImplausibleValuesError, UnitError
from mapex_serve.upload import (
    MalformedUploadError,
    OptionFieldError,
    UnsupportedContentEncodingError,
    UnsupportedMediaTypeError,
    UploadTimeoutError,
    UploadTooLargeError,
)
from mapex_serve.vectorize import NotGeoreferencedError

__all__ = ["STATUS", "error_headers", "mapex_error_response", "status_of"]

STATUS: dict[type[MapexError], int] = {
    UnreadableRasterError: 400, UnreadableInputError: 400, ForbiddenReferenceError: 400, MalformedUploadError: 400,
    UnreadableArchiveError: 400, ArchiveTooLargeError: 413,
    UnknownTaskError: 404, UnknownModelError: 404, UploadTimeoutError: 408, UploadTooLargeError: 413, RasterTooLargeError: 413, OverBudgetError: 413,
    UnsupportedMediaTypeError: 415,
    BandNamesMissingError: 422, BandIdentityConflictError: 422, ImageStackError: 422, LandsatSensorUnknownError: 422,
    DeaNameError: 422,
    NoMatchingSpecialistError: 422, UnknownBandError: 422,
    EngineInputError: 422, DuplicateBandError: 422, UnknownModalityError: 422, GridMismatchError: 422,
    SubdatasetsError: 422, UnitError: 422, PixelSizeError: 422, ReflectanceLevelError: 422,
    BackscatterError: 422, ImplausibleValuesError: 422, BboxError: 422, MaskThresholdError: 422,
    OptionFieldError: 422, UnknownOptionError: 422,
    JobNotFoundError: 404, JobConflictError: 409, JobExpiredError: 410, JobRequestError: 422, JobSourceError: 422,
    RemoteFileError: 422, RemoteFileUnavailableError: 502,
    GeoJSONNotAvailableError: 422, NotGeoreferencedError: 422, AreaError: 422,
    ClientGoneError: 499,  # nginx's "client closed request": logged and counted, read by no one
    QueueFullError: 503, ServiceStoppingError: 503, DecodeUnavailableError: 503, NoRoomToReceiveError: 503, MemoryBudgetError: 503, JobsDisabledError: 503,
    JobsServerUnreachableError: 503, RequestTimeoutError: 504, JobsLoopError: 508,
}


def status_of(error: MapexError) -> int:
    return next((code for cls, code in STATUS.items() if isinstance(error, cls)), 400)


def error_headers(code: int, error: MapexError | None = None) -> dict[str, str] | None:
    """503s say when to come back; 408s close the connection (the rest of the body is never read); a 415 for a
    Content-Encoding says that uploads are taken unencoded (RFC 9110, 15.5.16: Accept-Encoding)."""
    if isinstance(error, UnsupportedContentEncodingError):
        return {"Accept-Encoding": "identity"}
    return {"Retry-After": "1"} if code == 503 else {"Connection": "close"} if code == 408 else None


async def mapex_error_response(_request: Request, error: MapexError) -> JSONResponse:
    """``{"error", "detail"}`` with the status of the error's class (``error_headers``)."""
    code = status_of(error)
    return JSONResponse({"error": type(error).__name__, "detail": str(error)}, status_code=code,
                        headers=error_headers(code, error))

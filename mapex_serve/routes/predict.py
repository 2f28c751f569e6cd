"""``POST /predict/{task}``: one or more files in, routed by their band metadata, a GeoTIFF or JSON out."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from mapex_serve.budget import Reservation
from mapex_serve.decode.incoming import Upload
from mapex_serve.decode.pool import DecodePool, NoRoomForTilesError
from mapex_serve.decode.slab import SlabSpaceError
from mapex_serve.deps import authorised, ready_registry, service_state
from mapex_serve.errors import ClientGoneError, MapexError, RequestTimeoutError, UnknownTaskError
from mapex_serve.http_errors import status_of
from mapex_serve.inputs import UploadedFile
from mapex_serve.predict import predict
from mapex_serve.registry import Registry
from mapex_serve.repository import Manifest
from mapex_serve.responses import Format, encode
from mapex_serve.routes.lane import Lane
from mapex_serve.routes.query import check_options, declare_option_fields, query_parameters, with_fields
from mapex_serve.state import ServiceState
from mapex_serve.units import BackscatterChoice, PixelSizeChoice, ReflectanceChoice, UnitOverrides
from mapex_serve.upload import (
    MULTIPART_FRAMING,
    OptionFields,
    body_head,
    check_not_encoded,
    declared_size,
    raw_name,
    read_upload,
    receive,
    resumed,
    sent_chunked,
    still_arriving_error,
)

__all__ = ["PREDICT_LANE", "READ_WHILE_ARRIVING", "router"]

log = logging.getLogger("mapex_serve")

T = TypeVar("T")

router = APIRouter()

#: Requests still running after this long are watched for a client that went away.
_WATCH_AFTER_S = 0.05

#: Bodies of this many bytes or more are read by their decode worker while they arrive (``decode.arriving``; of a
#: multipart body, its first file): a scene's rows go to the engine before its last byte is in. Smaller ones arrive
#: first (in a few ms on a fast link).
READ_WHILE_ARRIVING = 4 * 2**20

#: The bodies the route takes, declared so that the OpenAPI schema is true (clients and fuzzers send them).
_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {"file": {
        "type": "array", "items": {"type": "string", "format": "binary"},
        "description": "one or more raster files of one scene (GeoTIFF, COG, NetCDF, HDF5, JPEG 2000, ENVI, VRT), "
                       "or archives of them (ZIP, tar, gzip)"}}}},
    "image/tiff": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    **{media: {"schema": {"type": "string", "format": "binary", "description": "a raster file of that format"}}
       for media in ("image/jp2", "application/x-netcdf", "application/x-hdf5")},
    **{media: {"schema": {"type": "string", "format": "binary", "description": "an archive of raster files"}}
       for media in ("application/zip", "application/x-tar", "application/gzip")},
}}}


@dataclass(frozen=True)
class _Options:
    """What a request asks for, from its query and the option fields of its multipart body."""

    bands: list[str] | None
    modality: str | None
    format: Format | None
    overrides: UnitOverrides

    @classmethod
    def of(cls, given: Mapping[str, str | None]) -> _Options:
        """Parsed (a 422 for a value that does not parse), from ``predict_task``'s parameters by name."""
        overrides = UnitOverrides.parse(*(given.get(name) for name in _OVERRIDES))
        bands = given.get("bands")
        return cls(bands.split(",") if bands else None, given.get("modality"), given.get("format"), overrides)


#: ``UnitOverrides.parse``'s arguments, in order.
_OVERRIDES = ("units", "scale", "offset", "pixel_size", "reflectance", "backscatter", "bbox", "mask_threshold", "aoi")


async def _respond(request: Request, state: ServiceState, manifests: list[Manifest], given: dict[str, str | None],
                   options: _Options) -> Response:
    """Upload -> routed prediction -> GeoTIFF or JSON: everything MAPEX_REQUEST_TIMEOUT_S bounds. ``given``: the
    query's options, by name, parsed as ``options``; a multipart body's option fields join them."""
    settings = state.settings
    accept = request.headers.get("accept", "")
    held = Reservation(state.budget, 0)  # the upload's bytes while this process holds them in memory
    fields = OptionFields(_QUERY)
    try:
        got = await _receive(request, state, [m.name for m in manifests], held, fields)
        if isinstance(got, Upload):
            upload = got
            try:
                if fields.known is not None:  # read as it arrives: once its first file begins, its options are in
                    await asyncio.wait({fields.known, upload.arriving}, return_when=asyncio.FIRST_COMPLETED)
                    if not fields.known.done():
                        await upload.arriving  # it ended without a file: its 4xx
                options = _Options.of(with_fields(given, fields.given, _QUERY)) if fields.given else options
                work = asyncio.ensure_future(state.decode.predict(
                    upload, [m.name for m in manifests], state.batchers, bands=options.bands, modality=options.modality,
                    overrides=options.overrides, max_pixels=settings.max_pixels,
                    max_unpacked=settings.max_upload_bytes, max_batch=settings.max_batch, budget=state.budget,
                    format=options.format, accept=accept, wait_s=min(10.0, settings.request_timeout_s / 2)))
                if upload.arriving is not None:
                    await _arrival(upload.arriving, work)
                encoded = await _unless_client_leaves(request, work)
                return Response(encoded.body, media_type=encoded.media_type, headers=encoded.headers)
            except NoRoomForTilesError as e:  # shared memory filled up after the upload arrived: decoded here
                _no_room(e)
                got = e.files
                held.grow(sum(len(f.data) for f in got), _HELD)
            finally:
                if upload.still_arriving:  # cancelled (its time limit) while the body arrived: stop writing to the slab
                    upload.arriving.cancel()
                    await asyncio.gather(upload.arriving, return_exceptions=True)
                upload.discard()  # also when the request was cancelled before its work began
        else:
            options = _Options.of(with_fields(given, fields.given, _QUERY)) if fields.given else options
        work = asyncio.ensure_future(predict(got, manifests, state.batchers, bands=options.bands,
                                             modality=options.modality, max_pixels=settings.max_pixels,
                                             max_unpacked=settings.max_upload_bytes, max_batch=settings.max_batch,
                                             overrides=options.overrides, budget=state.budget))
        del got  # encoding needs the prediction only: the upload's bytes can go first
        result = await _unless_client_leaves(request, work)
        try:
            provider = state.registry.specialists[result.route.manifest.name].engine.provider
            encoded = await run_in_threadpool(encode, result, options.format, accept, provider)
            return Response(encoded.body, media_type=encoded.media_type, headers=encoded.headers)
        finally:
            result.reservation.release()
    finally:
        held.release()


async def _receive(request: Request, state: ServiceState, specialists: list[str], held: Reservation,
                   fields: OptionFields) -> Upload | list[UploadedFile]:
    """The upload in a decode worker's slab (a raw body streams straight there), or in memory for this process.

    Decoded here instead when there are no workers or the tmpfs has no room (logged: /dev/shm too small). A body
    received into memory (a multipart one under ``READ_WHILE_ARRIVING``, a chunked one's head, any without workers)
    is ``held`` against the memory budget as it arrives, until the request ends (also once copied to a slab:
    simpler, and a little more than it holds): concurrent uploads of the largest accepted size would otherwise hold
    as many copies in the service, unbounded (503 with Retry-After once the budget is full).
    """
    check_not_encoded(request)  # before a slab is made for it
    settings, pool = state.settings, state.decode
    limit = settings.max_upload_bytes
    multipart, size = declared_size(request) or (False, 0)
    if pool is not None and multipart and READ_WHILE_ARRIVING <= size <= limit:
        try:  # its parts are written to the slab as they come, the first read as it arrives (decode.arriving)
            upload = pool.prepare_parts(size, specialists, settings.max_batch)
        except SlabSpaceError as e:
            _no_room(e)
        else:
            fields.read_as_it_arrives()
            upload.arriving = asyncio.ensure_future(receive(request, limit, upload.part_sink, fields=fields))
            return upload
    chunked = sent_chunked(request)
    if pool is not None and chunked is not None:
        return await _receive_chunked(request, pool, chunked, specialists, limit, settings.max_batch, held, fields)
    if pool is not None and not multipart and 0 < size <= limit:
        try:
            upload = pool.prepare_raw(size, specialists, settings.max_batch, raw_name(request))
        except SlabSpaceError as e:
            _no_room(e)
        else:
            if size >= READ_WHILE_ARRIVING:  # its worker reads it as it arrives (decode.arriving)
                upload.arriving = asyncio.ensure_future(receive(request, limit, upload.sink))
                return upload
            try:
                await receive(request, limit, upload.sink)
            except BaseException:
                upload.discard()
                raise
            return upload
    files = await read_upload(request, limit, partial(held.grow, what=_HELD), fields=fields)
    if pool is None:
        return files
    return _prepared(pool, files, specialists, settings.max_batch)


async def _receive_chunked(request: Request, pool: DecodePool, framing: Literal["raw", "multipart"],
                           specialists: list[str], limit: int, max_batch: int, held: Reservation,
                           fields: OptionFields) -> Upload | list[UploadedFile]:
    """A body of unknown size (sent chunked), looked at once its first ``READ_WHILE_ARRIVING`` bytes are in (``held``
    meanwhile): a larger one streams into a slab with room for the largest accepted body (and its multipart
    framing), its pages reserved as they are written (the raw body, or the file parts; read while it arrives); a
    smaller one, or one the tmpfs has no room for, is read in memory, held as it is kept."""
    hold = partial(held.grow, what=_HELD)
    head, rest = await body_head(request, limit, READ_WHILE_ARRIVING, hold, multipart=framing == "multipart")
    body = resumed(head, rest)
    if rest is not None:
        try:
            upload = pool.prepare_parts(limit + MULTIPART_FRAMING, specialists, max_batch, chunked=True)
        except SlabSpaceError as e:
            _no_room(e)
        else:
            if framing == "multipart":  # a raw body has no option fields to wait for
                fields.read_as_it_arrives()
            upload.arriving = asyncio.ensure_future(receive(request, limit, upload.part_sink, body, fields))
            held.release()  # its head goes to the slab as the task starts
            return upload
    held.release()  # held again as it is kept
    return _prepared(pool, await read_upload(request, limit, hold, body, fields), specialists, max_batch)


#: What ``Reservation.grow``'s 503 says the body's bytes are.
_HELD = "by this upload, received into the service's memory"


def _prepared(pool: DecodePool, files: list[UploadedFile], specialists: list[str],
              max_batch: int) -> Upload | list[UploadedFile]:
    """The files in a worker's slab, or left in memory for this process when the tmpfs has no room."""
    try:
        return pool.prepare(files, specialists, max_batch)
    except SlabSpaceError as e:
        _no_room(e)
        return files


async def _arrival(arriving: asyncio.Task[object], work: asyncio.Future[T]) -> None:
    """The rest of a raw body that its worker reads as it arrives. A body cut short (the client left) or longer than
    its Content-Length ends ``work`` and raises; a request that fails meanwhile (a 422 on its bands) is answered once
    the body is in, as when it arrives first."""
    try:
        await arriving
    except BaseException:
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise


def _no_room(e: SlabSpaceError) -> None:
    log.warning("no shared memory for this upload (%s); decoding it in the service process: give /dev/shm more room "
                "(docs/deploy.md)", e)


async def _unless_client_leaves(request: Request, work: asyncio.Future[T]) -> T:
    """``work``'s result, or its cancellation (its queued tiles then never reach the engine) if the client leaves.

    Only after the body is read: ``receive()`` then returns nothing until the connection closes. A
    request that is done within ``_WATCH_AFTER_S`` is not watched at all: waiting on ``receive()``
    costs a single-tile request about 1.5 ms (measured with bench.serve), more than it could save.
    """
    async def gone() -> None:
        message = await request.receive()
        while message["type"] != "http.disconnect":
            message = await request.receive()

    watch: asyncio.Future | None = None
    try:
        await asyncio.wait({work}, timeout=_WATCH_AFTER_S)
        if not work.done():
            watch = asyncio.ensure_future(gone())
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done():  # the client left, or this request was itself cancelled (its time limit)
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        if watch is not None:
            watch.cancel()
    if work.cancelled():
        raise ClientGoneError("the client closed the connection before the answer was ready")
    return work.result()


@router.post("/predict/{task}", tags=["predict"], dependencies=[Depends(authorised)], openapi_extra=_BODY,
             responses={200: {"content": {"image/tiff": {}, "application/json": {}, "application/geo+json": {}}}})
async def predict_task(
    task: str,
    request: Request,
    reg: Annotated[Registry, Depends(ready_registry)],
    state: Annotated[ServiceState, Depends(service_state)],
    bands: Annotated[str | None, Query(description="names of the bands in order, over all files, e.g. "
                                                   "red,green,blue; '-' skips a band")] = None,
    modality: Annotated[str | None, Query(description="force the specialist of this modality, e.g. SWIR")] = None,
    format: Annotated[Format | None,
                      Query(description="else by the Accept header; geojson: the mask's polygons in WGS84")] = None,
    units: Annotated[str | None, Query(description="unit of the values: dB, linear, amplitude, reflectance, m, ft; "
                                                   "for every band or per band (VV:linear,VH:linear)")] = None,
    scale: Annotated[str | None, Query(description="physical = stored x scale + offset, e.g. 0.0001 "
                                                   "(or per band: B04:0.0001)")] = None,
    offset: Annotated[str | None, Query(description="added after scale, e.g. -0.1 for Sentinel-2 L2A "
                                                    "baseline >= 04.00")] = None,
    pixel_size: Annotated[PixelSizeChoice | None,
                          Query(description="a scene whose pixels are not the size the specialist learned (30 m for "
                                            "a 10 m model): model resamples it to that size, native reads it as it "
                                            "is; without it such a scene is refused")] = None,
    reflectance: Annotated[ReflectanceChoice | None,
                           Query(description="as-is: run Sentinel-2 files of the other processing level than the "
                                             "specialist learned (Level-1C for a Level-2A model) anyway; without it "
                                             "they are refused")] = None,
    backscatter: Annotated[BackscatterChoice | None,
                           Query(description="as-is: run Sentinel-1 files of the other backscatter than the "
                                             "specialist learned (gamma0 for a sigma0 model) anyway; without it "
                                             "they are refused")] = None,
    bbox: Annotated[str | None, Query(description="the part of the scene to read and answer: west,south,east,north "
                                                  "in degrees (WGS84), e.g. 10.10,45.20,10.30,45.35")] = None,
    mask_threshold: Annotated[str | None,
                              Query(description="where a cloud probability or clear score layer masks, in its own "
                                                "values: 0.5 for the scene's one such layer (Cloud Score+ cs_cdf), or "
                                                "per layer: cs_cdf:0.5,CLP:80")] = None,
    aoi: Annotated[str | None, Query(description="a polygon of interest, GeoJSON in WGS84 (a Polygon, a MultiPolygon, "
                                                 "a Feature or a FeatureCollection of them): the box around it is read "
                                                 "and answered, the pixels outside it masked; not with bbox")] = None,
) -> Response:
    started = time.perf_counter()
    name, status, known = "-", 500, False
    settings = state.settings
    try:
        manifests = [s.manifest for s in reg.for_task(task)]
        known = bool(manifests)
        if not known:
            raise UnknownTaskError(f"no specialist does task {task!r}; tasks served: {', '.join(reg.tasks()) or 'none'}")
        check_options(request, _QUERY)
        given = {"bands": bands, "modality": modality, "format": format, "units": units, "scale": scale,
                 "offset": offset, "pixel_size": pixel_size, "reflectance": reflectance, "backscatter": backscatter,
                 "bbox": bbox, "mask_threshold": mask_threshold, "aoi": aoi}
        options = _Options.of(given)  # the query's 422s before the body is read
        try:
            async with asyncio.timeout(settings.request_timeout_s):  # upload, tiles and encoding
                response = await _respond(request, state, manifests, given, options)
        except TimeoutError:
            raise _timed_out(request, settings.request_timeout_s) from None
        name, status = response.headers["x-mapex-specialist"], 200
        return response
    except MapexError as e:
        status = status_of(e)
        raise
    except HTTPException as e:
        status = e.status_code
        raise
    finally:
        state.metrics.request_done(task if known else "unknown", name, status, time.perf_counter() - started)


def _timed_out(request: Request, limit_s: float) -> MapexError:
    """The time limit ran out: a 408 while the upload still arrived (its speed, and the ways round), else a 504."""
    return still_arriving_error(request, limit_s, "submit the scene as a job (POST /jobs: the same upload, not "
                                                  "bounded in time), send a smaller or compressed file (a deflate COG)") \
        or RequestTimeoutError(f"the request took longer than {limit_s:g} s (MAPEX_REQUEST_TIMEOUT_S); send a smaller "
                               f"scene or retry later")


#: ``predict_task``'s query parameters, with their closed sets of values (``format``, ``pixel_size``): the lane passes
#: whatever parameter the route gains.
_QUERY = query_parameters(predict_task)
declare_option_fields(_BODY, _QUERY)


def _predict_lane(request: Request, state: ServiceState, reg: Registry,
                  match: re.Match[str]) -> Awaitable[Response] | None:
    """``predict_task`` with the query FastAPI would parse; None for a value of a closed set it must refuse (its
    422)."""
    q = request.query_params
    given = {name: q.get(name) for name in _QUERY}
    if any(value is not None and closed is not None and value not in closed
           for value, closed in zip(given.values(), _QUERY.values(), strict=True)):
        return None
    return predict_task(match[1], request, reg, state, **given)


#: ``POST /predict/{task}`` past FastAPI's routing (``routes/lane.py``).
PREDICT_LANE = Lane(re.compile(r"/predict/([^/]+)"), _predict_lane)

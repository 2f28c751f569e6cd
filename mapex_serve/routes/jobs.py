"""``/jobs``: whole scenes as jobs (Sentinel Hub's batch API is the model): submit, watch, cancel, download.

``POST /jobs/{task}`` checks everything it can before answering (the source is read, the bands
identified and routed, the units decided on a sample of the values), so a bad request is a 4xx at
once and an accepted job fails only on what shows later. It answers 202 with the job's
``Location``; ``GET /jobs/{id}`` reports state and progress; ``GET /jobs/{id}/result`` serves the
outputs; ``DELETE /jobs/{id}`` cancels.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from rasterio.errors import RasterioIOError
from starlette.types import Receive, Scope, Send

from mapex_serve.deps import authorised, ready_registry, service_state
from mapex_serve.errors import MapexError, UnknownTaskError
from mapex_serve.jobs.models import JobRequest, JobRequestError, JobStatus
from mapex_serve.jobs.notify import checked_notify_url
from mapex_serve.jobs.runner import JobRunner, new_id, resolve_sources
from mapex_serve.jobs.scene import checked_route
from mapex_serve.jobs.sources import redacted
from mapex_serve.jobs.stac_result import result_item
from mapex_serve.jobs.store import FINISHED, JobRecord
from mapex_serve.registry import Registry
from mapex_serve.routes.query import check_options, declare_option_fields, query_parameters, with_fields
from mapex_serve.state import ServiceState
from mapex_serve.units import BackscatterChoice, PixelSizeChoice, ReflectanceChoice, parse_mask_threshold
from mapex_serve.upload import OptionFields, save_upload

__all__ = ["JobConflictError", "JobExpiredError", "JobNotFoundError", "JobRequestError", "JobsDisabledError", "router"]

router = APIRouter(tags=["jobs"], dependencies=[Depends(authorised)])

_MEDIA = {"geotiff": ("result.tif", "image/tiff"), "probabilities": ("probabilities.tif", "image/tiff"),
          "geojson": ("result.geojson", "application/geo+json")}


class JobNotFoundError(MapexError, LookupError):
    """No job has this id (or its result has no such format)."""


class JobConflictError(MapexError, RuntimeError):
    """The job is not in a state that allows this (a result before it is done, a cancel after)."""


class JobExpiredError(MapexError, LookupError):
    """The job's results expired (MAPEX_JOB_TTL_H) and were removed."""


class JobsDisabledError(MapexError, RuntimeError):
    """Jobs are off (the jobs volume could not be opened, or several service processes); /predict still answers."""


def _runner(state: ServiceState) -> JobRunner:
    if state.jobs is None:
        raise JobsDisabledError(f"jobs are disabled: {state.jobs_problem}")
    return state.jobs


def _record(runner: JobRunner, job_id: str) -> JobRecord:
    record = runner.store.get(job_id) if job_id.isalnum() else None
    if record is None:
        raise JobNotFoundError(f"no job {job_id!r}; submit one with POST /jobs/{{task}}")
    return record


async def _job_request(request: Request) -> JobRequest | None:
    """The JSON body's request, or None for an upload (its options are query parameters or multipart fields)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return None
    try:
        return JobRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise JobRequestError(f"the job request is not valid ({_problems(e)}); send e.g. {{\"url\": "
                              f"\"https://host/scene.tif\"}} or {{\"stac_item\": \"https://host/item.json\", "
                              f"\"assets\": [\"vv\", \"vh\"]}}") from None


def _problems(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())


def _upload_request(request: Request, fields: dict[str, str]) -> JobRequest:
    """An upload's job request from its query and the option fields of its multipart body (``-F aoi=@basin.json``):
    what ``submit_job``'s parameters declare, read from the request to take only those given."""
    try:
        return JobRequest.model_validate(with_fields(dict(request.query_params), fields, _OPTIONS))
    except ValidationError as e:
        raise JobRequestError(f"the job's options are not valid ({_problems(e)})") from None


_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": JobRequest.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {"file": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/tiff": {"schema": {"type": "string", "format": "binary"}},
}}}


@router.post("/jobs/{task}", status_code=202, openapi_extra=_BODY, response_model=JobStatus)
async def submit_job(
    task: str, request: Request,
    reg: Annotated[Registry, Depends(ready_registry)],
    state: Annotated[ServiceState, Depends(service_state)],
    # An upload's options: checked by FastAPI and shown in the OpenAPI schema here, read with its multipart option
    # fields by ``_upload_request`` (from the request, so that only those given count).
    bands: Annotated[str | None, Query(description="for uploads: names of the bands in order")] = None,
    modality: Annotated[str | None, Query(description="for uploads: force the specialist of this modality")] = None,
    units: Annotated[str | None, Query(description="for uploads: unit of the values")] = None,
    scale: Annotated[str | None, Query(description="for uploads: physical = stored x scale + offset")] = None,
    offset: Annotated[str | None, Query(description="for uploads: added after scale")] = None,
    pixel_size: Annotated[PixelSizeChoice | None, Query(description="for uploads: pixels not the size the model "
                                                                    "learned: model (resample) or native")] = None,
    reflectance: Annotated[ReflectanceChoice | None, Query(description="for uploads: as-is runs files of the other "
                                                                       "processing level than the model's")] = None,
    backscatter: Annotated[BackscatterChoice | None, Query(description="for uploads: as-is runs files of the other "
                                                                       "backscatter than the model's")] = None,
    bbox: Annotated[str | None, Query(description="for uploads: the part of the scene to read, west,south,east,north "
                                                  "in degrees (WGS84)")] = None,
    mask_threshold: Annotated[str | None, Query(description="for uploads: where a cloud probability or clear score "
                                                            "layer masks (0.5, or per layer: cs_cdf:0.5)")] = None,
    aoi: Annotated[str | None, Query(description="for uploads: a polygon of interest, GeoJSON in WGS84; the pixels "
                                                 "outside it are masked")] = None,
    probabilities: Annotated[bool, Query(description="for uploads: also write per-class probabilities")] = False,
    geojson: Annotated[bool, Query(description="for uploads: also vectorise the mask to GeoJSON")] = True,
    simplify: Annotated[float, Query(ge=0, allow_inf_nan=False, description="for uploads: simplification tolerance (CRS units)")] = 0.0,
    min_area_m2: Annotated[float, Query(ge=0, allow_inf_nan=False, description="for uploads: drop smaller polygons (m²)")] = 0.0,
    notify: Annotated[str | None, Query(description="for uploads: a URL to POST the job's status to when it ends")] = None,
) -> JSONResponse:
    runner = _runner(state)
    manifests = [s.manifest for s in reg.for_task(task)]
    if not manifests:
        raise UnknownTaskError(f"no specialist does task {task!r}; tasks served: {', '.join(reg.tasks()) or 'none'}")
    check_options(request, _OPTIONS)
    job_id = new_id()
    body = await _job_request(request)
    if body is not None and request.query_params:
        given = ", ".join(f"{k}={v}" for k, v in request.query_params.items())
        raise JobRequestError(f"a job request sent as JSON takes its options in the JSON, not in the query string "
                              f"({given}): send e.g. {{\"url\": \"https://host/scene.tif\", \"units\": \"dB\"}}")
    if notified := (body.notify if body is not None else notify):
        checked_notify_url(notified, state.settings.job_notify_prefixes)
    uploads: list[tuple[str, Path]] = []
    folder = runner.store.folder(job_id)
    try:
        if body is None:
            parse_mask_threshold(mask_threshold)  # a 422 that names the layers, before the upload is taken
            body = _upload_request(request, {})  # the query's options (an aoi that does not parse: a 422, not a 500)
            fields = OptionFields(_OPTIONS)
            uploads = await save_upload(request, folder / "input", state.settings.job_max_upload_bytes, fields)
            if fields.given:
                body = _upload_request(request, fields.given)
                parse_mask_threshold(body.mask_threshold)
                if body.notify:
                    checked_notify_url(body.notify, state.settings.job_notify_prefixes)
        elif not body.has_source:
            raise JobRequestError("the job request names no scene: give url (http(s)://, s3:// or gs://) or stac_item, "
                                  "or upload the file as multipart (-F file=@scene.tif)")
        prefixes = state.settings.job_url_prefixes
        sources = await asyncio.to_thread(resolve_sources, body, uploads, prefixes, state.settings.job_max_upload_bytes,
                                          state.settings.planetary_computer_sas)
        route = None  # an archive by URL is fetched, then checked, when the job starts
        if not sources.fetch:
            try:
                route = await asyncio.to_thread(checked_route, body, sources, manifests, state.settings.job_max_pixels)
            except MapexError as e:  # GDAL names the saved upload by its path on the server: name it as it was sent
                raise type(e)(redacted(str(e), sources.files)) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    record = runner.submit(task, body, sources, route, job_id, base_url=str(request.base_url))
    return JSONResponse(runner.status(record).model_dump(mode="json"), status_code=202,
                        headers={"Location": f"/jobs/{record.id}"})


#: What a job upload takes in its query string or as multipart fields, with the closed sets of values.
_OPTIONS = query_parameters(submit_job)
declare_option_fields(_BODY, _OPTIONS)


@router.get("/jobs", response_model=list[JobStatus], responses={200: {"content": {"application/geo+json": {}}}})
async def list_jobs(
    request: Request, state: Annotated[ServiceState, Depends(service_state)],
    limit: Annotated[int, Query(ge=1, le=1000, description="newest first")] = 50,
    task: Annotated[str | None, Query(description="only this task's jobs")] = None,
    format: Annotated[Literal["json", "stac"], Query(description="stac: the results of the done ones among them as "
                                                                 "a STAC ItemCollection")] = "json",
) -> Response:
    """The newest jobs, whatever their state; ``format=stac``: the done ones' results as a STAC ItemCollection (one
    Item a job, as ``/jobs/{id}/result?format=stac``), which GDAL's STACIT driver opens as one mosaic by its URL."""
    runner = _runner(state)
    records = [r for r in runner.store.recent(limit) if task is None or r.task == task]
    if format == "json":
        return JSONResponse([runner.status(r).model_dump(mode="json") for r in records])
    items = await asyncio.to_thread(_result_items, request, runner, [r for r in records if r.state == "done"
                                                                     and not r.expired])
    return JSONResponse({"type": "FeatureCollection", "features": items, "numberReturned": len(items),
                         "links": [{"rel": "self", "href": str(request.url), "type": "application/geo+json"}]},
                        media_type="application/geo+json")


def _result_items(request: Request, runner: JobRunner, records: list[JobRecord]) -> list[dict[str, Any]]:
    """The STAC Items of done jobs' results; a job whose files expiry removed meanwhile is left out."""
    items = []
    for record in records:
        try:
            items.append(result_item(record, runner.store.folder(record.id), _result_href(request, record.id)))
        except RasterioIOError:
            continue
    return items


def _result_href(request: Request, job_id: str) -> Callable[[str], str]:
    """The absolute URL of a job's result in a format, as this request reached the service."""
    url = request.url_for("job_result", job_id=job_id)
    return lambda fmt: f"{url}?format={fmt}"


@router.get("/jobs/{job_id}", response_model=JobStatus)
async def get_job(job_id: str, state: Annotated[ServiceState, Depends(service_state)]) -> JobStatus:
    runner = _runner(state)
    return runner.status(_record(runner, job_id))


@router.delete("/jobs/{job_id}", response_model=JobStatus)
async def cancel_job(job_id: str, state: Annotated[ServiceState, Depends(service_state)]) -> JobStatus:
    runner = _runner(state)
    record = _record(runner, job_id)
    if record.state in FINISHED:
        raise JobConflictError(f"job {job_id} is {record.state} already; only queued or running jobs can be cancelled")
    runner.cancel(job_id)
    return runner.status(_record(runner, job_id))


@router.get("/jobs/{job_id}/result", responses={200: {"content": {"image/tiff": {}, "application/json": {},
                                                                   "application/geo+json": {}}}})
async def job_result(
    job_id: str, request: Request, state: Annotated[ServiceState, Depends(service_state)],
    format: Annotated[Literal["geotiff", "json", "geojson", "probabilities", "stac"] | None,
                      Query(description="default: geotiff for masks, json for class tasks; stac: a STAC Item of the "
                                        "results, their hrefs here")] = None,
) -> Response:
    runner = _runner(state)
    record = _record(runner, job_id)
    if record.state != "done":
        why = f": {record.error['detail']}" if record.error else ""
        raise JobConflictError(f"job {job_id} is {record.state}{why}; results are ready once GET /jobs/{job_id} says "
                               f"done")
    expired = JobExpiredError(f"the results of job {job_id} expired {state.settings.job_ttl_h:g} h after it finished "
                              f"(MAPEX_JOB_TTL_H); submit the job again")
    if record.expired:
        raise expired
    summary = record.summary or {}
    outputs = summary.get("outputs", [])
    format = format or ("geotiff" if "probabilities" in outputs or "geojson" in outputs else "json")
    if format == "json":
        return JSONResponse(summary)
    if format == "stac":
        try:
            item = await asyncio.to_thread(result_item, record, runner.store.folder(job_id),
                                           _result_href(request, job_id))
        except RasterioIOError:  # expiry removed the files since the record was read
            raise expired from None
        return JSONResponse(item, media_type="application/geo+json")
    if format not in outputs:
        hint = {"probabilities": "submit with probabilities=true", "geojson": "masks only, submit with geojson=true"}
        raise JobNotFoundError(f"job {job_id} has no {format} result ({hint.get(format, '')}); it has: "
                               f"{', '.join(outputs)}")
    name, media = _MEDIA[format]
    try:
        held = (runner.store.folder(job_id) / name).open("rb")
    except FileNotFoundError:  # expiry removed it since the record was read
        raise expired from None
    return HeldFileResponse(held, media_type=media, filename=f"{record.task}-{job_id}{Path(name).suffix}")


# HEAD too, as for any file download: download managers and `curl -I` ask for the size first (not in OpenAPI:
# the GET documents the route).
router.add_api_route("/jobs/{job_id}/result", job_result, methods=["HEAD"], include_in_schema=False)


class HeldFileResponse(FileResponse):
    """A FileResponse (ranges included) over a file opened before answering: expiry may remove the result while it
    downloads, and an open file outlives its unlinking, so the download completes instead of breaking off."""

    def __init__(self, held: IO[bytes], *, media_type: str, filename: str) -> None:
        self._held = held
        fd = held.fileno()
        proc = f"/proc/self/fd/{fd}"  # reopens the held inode even once unlinked; /dev/fd/N where there is no /proc
        super().__init__(proc if os.path.exists(proc) else f"/dev/fd/{fd}", stat_result=os.fstat(fd),
                         media_type=media_type, filename=filename)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._held.close()

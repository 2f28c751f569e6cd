"""The repository's specialists: ``GET /models`` and the Open Inference Protocol's server and model routes.

The protocol's routes follow KServe's Open Inference Protocol (REST) with Triton's binary tensor
data extension, so that ``tritonclient.http`` and KServe's ``InferenceRESTClient`` work unmodified
(``mapex_serve/oip.py`` holds the body codec). Their errors keep the service's ``{"error",
"detail"}``, but ``error`` carries the message too: both clients show the user only that field.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mapex_serve import __version__
from mapex_serve.budget import Reservation
from mapex_serve.deps import authorised, ready_registry, service_state
from mapex_serve.errors import MapexError, RequestTimeoutError, UnknownModelError
from mapex_serve.http_errors import error_headers, status_of
from mapex_serve.oip import (
    HEADER_LENGTH,
    InferRequestBody,
    ModelIO,
    datatype_of,
    decode_content,
    encode_infer,
    parse_infer,
)
from mapex_serve.registry import Registry
from mapex_serve.routes.lane import Lane
from mapex_serve.state import ServiceState
from mapex_serve.upload import UploadTooLargeError, body_chunks, still_arriving_error

__all__ = ["INFER_LANE", "router"]

router = APIRouter()
Ready = Annotated[Registry, Depends(ready_registry)]


#: Bodies past this size are parsed and encoded in a worker thread, not on the event loop.
_INLINE_BYTES = 256 * 1024


def _specialist(reg: Registry, name: str, version: str | None = None) -> Any:
    if name not in reg.specialists:
        raise UnknownModelError(f"no model {name!r}; served: {', '.join(sorted(reg.specialists)) or 'none'}")
    s = reg.specialists[name]
    if version is not None and version != str(s.version):
        raise UnknownModelError(f"model {name!r} has no version {version!r}; served: version {s.version} "
                                f"(or leave the version out)")
    return s


def _oip_error(error: MapexError) -> JSONResponse:
    """``{"error", "detail"}`` with the status of ``http_errors``; ``error`` reads "<kind>: <detail>" for OIP clients."""
    code = status_of(error)
    return JSONResponse({"error": f"{type(error).__name__}: {error}", "detail": str(error)}, status_code=code,
                        headers=error_headers(code))


def _without_paths(text: str, repo: Path) -> str:
    """A reason as clients may read it: the server's folders replaced by ``<repo>``."""
    for root in {str(repo.resolve()), str(repo)}:
        text = text.replace(root, "<repo>")
    return text


@router.get("/models", tags=["models"])
async def models(reg: Ready) -> dict[str, Any]:
    """Serving specialists with their manifests; refused entries by name and version, with reasons but no paths."""
    repo = Path(reg.settings.model_repo)
    return {
        "specialists": {n: {"version": s.version, "provider": s.engine.provider,
                            "runners": s.engine.threads.runners, "intra_op_threads": s.engine.threads.intra_op,
                            "manifest": s.manifest.model_dump(mode="json")} for n, s in reg.specialists.items()},
        "refused": [{"entry": f"{r.entry.parent.name}/{r.entry.name}", "reason": _without_paths(r.reason, repo)}
                    for r in reg.refused],
        "tasks": reg.tasks(),
    }


def _metadata(s: Any) -> dict[str, Any]:
    m = s.manifest
    return {"name": m.name, "versions": [str(m.version)], "platform": "onnxruntime_onnx",
            "inputs": [{"name": m.input.name, "datatype": datatype_of(m.input.dtype), "shape": m.input.shape}],
            "outputs": [{"name": m.output.name, "datatype": datatype_of(m.output.dtype), "shape": m.output.shape}]}


@router.get("/v2", tags=["open inference protocol"])
async def v2_server() -> dict[str, Any]:
    """Server metadata: name, version and the protocol extensions served."""
    return {"name": "mapex-serve", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/v2/models/{name}", tags=["open inference protocol"])
@router.get("/v2/models/{name}/versions/{version}", tags=["open inference protocol"])
async def v2_model(name: str, reg: Ready, version: str | None = None) -> Any:
    """Model metadata as the protocol defines it; shapes carry -1 on the batch axis."""
    try:
        return _metadata(_specialist(reg, name, version))
    except MapexError as e:
        return _oip_error(e)


@router.get("/v2/models/{name}/ready", tags=["open inference protocol"])
@router.get("/v2/models/{name}/versions/{version}/ready", tags=["open inference protocol"])
async def v2_model_ready(name: str, reg: Ready, version: str | None = None) -> Any:
    """200 once the model's engine is warm (readiness is the status; the body is for people)."""
    try:
        _specialist(reg, name, version)
    except MapexError as e:
        return _oip_error(e)
    return {"name": name, "ready": True}


def _inlined(schema: Any, defs: dict[str, Any] | None = None) -> Any:
    """A pydantic JSON schema with its ``$defs`` references inlined: OpenAPI resolves no ``#/$defs/...`` of a body."""
    if defs is None:
        defs = schema.pop("$defs", {}) if isinstance(schema, dict) else {}
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inlined(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
        return {k: _inlined(v, defs) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inlined(v, defs) for v in schema]
    return schema


_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inlined(InferRequestBody.model_json_schema())},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": (
        f"binary tensor data extension: a JSON inference request of {HEADER_LENGTH} bytes, then each input's "
        "little-endian row-major bytes (binary_data_size parameter)")}}}}}


def _too_large(limit: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"the inference request is larger than {limit / 2**20:g} MiB (MAPEX_MAX_UPLOAD_MB); "
                               f"send fewer tiles per request")


async def _read_body(request: Request, limit: int, held: Reservation) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes (FastAPI's body parameters have no limit), each
    chunk ``held`` against the memory budget as it arrives (``Reservation.grow``: 503 once the budget is full)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks = []
    async for chunk in body_chunks(request, limit, limit, _too_large):
        held.grow(len(chunk), "by this inference request's body")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v2/models/{name}/infer", tags=["open inference protocol"], dependencies=[Depends(authorised)],
             openapi_extra=_INFER_BODY)
@router.post("/v2/models/{name}/versions/{version}/infer", tags=["open inference protocol"],
             dependencies=[Depends(authorised)], openapi_extra=_INFER_BODY)
async def v2_infer(name: str, request: Request, reg: Ready,
                   state: Annotated[ServiceState, Depends(service_state)], version: str | None = None) -> Response:
    """Open Inference Protocol inference (JSON or binary tensors), with ``/predict``'s upload, memory and time limits."""
    settings = state.settings
    try:
        s = _specialist(reg, name, version)
        async with asyncio.timeout(settings.request_timeout_s):
            return await _infer(s, name, request, state)
    except TimeoutError:
        limit = settings.request_timeout_s
        return _oip_error(still_arriving_error(request, limit, "send fewer tiles per request")
                          or RequestTimeoutError(f"the request took longer than {limit:g} s (MAPEX_REQUEST_TIMEOUT_S); "
                                                 f"send fewer tiles or retry later"))
    except MapexError as e:
        return _oip_error(e)


async def _infer(s: Any, name: str, request: Request, state: ServiceState) -> Response:
    limit = state.settings.max_upload_bytes
    held = Reservation(state.budget, 0)
    try:
        raw = decode_content(await _read_body(request, limit, held), request.headers.get("content-encoding"), limit)
    finally:
        held.release()  # the reservation below counts the body's copies
    header_length = request.headers.get(HEADER_LENGTH)
    json_bytes = int(header_length) if header_length and header_length.isdigit() else len(raw)
    # A JSON list of floats costs ~8x its text as Python objects; binary tensors are copied about three times.
    nbytes = 8 * min(json_bytes, len(raw)) + 3 * max(len(raw) - json_bytes, 0)
    reservation = state.budget.reserve(nbytes, f"this {len(raw) / 2**20:.1f} MiB inference request",
                                       "send fewer tiles per request")
    try:
        m = s.manifest
        io = ModelIO(m.input.name, tuple(m.input.shape[1:]), np.dtype(m.input.dtype), m.output.name)
        offload = len(raw) > _INLINE_BYTES
        parsed = (await run_in_threadpool(parse_infer, raw, header_length, io) if offload
                  else parse_infer(raw, header_length, io))
        out = await state.batchers[name].submit(parsed.tiles)
        args = (parsed, out, name, str(s.version), m.output.name)
        body, headers = (await run_in_threadpool(encode_infer, *args) if offload or out.nbytes > _INLINE_BYTES
                         else encode_infer(*args))
        return Response(body, headers=headers)
    finally:
        reservation.release()


def _infer_lane(request: Request, state: ServiceState, reg: Registry, match: re.Match[str]) -> Awaitable[Response]:
    return v2_infer(match[1], request, reg, state, match[2])


#: ``POST /v2/models/{name}[/versions/{version}]/infer`` past FastAPI's routing (``routes/lane.py``).
INFER_LANE = Lane(re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer"), _infer_lane)

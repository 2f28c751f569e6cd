"""The repository's specialists: ``GET /models`` and the Open Inference Protocol's model routes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ValidationError

from mapex_serve.deps import authorised, ready_registry, service_state
from mapex_serve.errors import RequestTimeoutError, UnknownModelError
from mapex_serve.registry import Registry
from mapex_serve.state import ServiceState
from mapex_serve.upload import UploadTooLargeError

__all__ = ["router"]

router = APIRouter()
Ready = Annotated[Registry, Depends(ready_registry)]


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP32"] = "FP32"
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[InferTensor]


def _specialist(reg: Registry, name: str) -> Any:
    if name not in reg.specialists:
        raise UnknownModelError(f"no model {name!r}; served: {', '.join(sorted(reg.specialists)) or 'none'}")
    return reg.specialists[name]


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
                            "manifest": s.manifest.model_dump(mode="json")} for n, s in reg.specialists.items()},
        "refused": [{"entry": f"{r.entry.parent.name}/{r.entry.name}", "reason": _without_paths(r.reason, repo)}
                    for r in reg.refused],
        "tasks": reg.tasks(),
    }


@router.get("/v2/models/{name}", tags=["open inference protocol"])
async def v2_model(name: str, reg: Ready) -> dict[str, Any]:
    m = _specialist(reg, name).manifest
    return {"name": m.name, "versions": [str(m.version)], "platform": "onnxruntime_onnx",
            "inputs": [{"name": m.input.name, "datatype": "FP32", "shape": m.input.shape}],
            "outputs": [{"name": m.output.name, "datatype": "FP32", "shape": m.output.shape}]}


@router.get("/v2/models/{name}/ready", tags=["open inference protocol"])
async def v2_model_ready(name: str, reg: Ready) -> dict[str, Any]:
    _specialist(reg, name)
    return {"name": name, "ready": True}


_INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": InferRequest.model_json_schema()}}}}


async def _json_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes ``limit`` bytes (FastAPI's body parameters have no limit)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(f"the inference request is larger than {limit / 2**20:g} MiB (MAPEX_MAX_UPLOAD_MB); "
                                  f"send fewer tiles per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLargeError(f"the inference request is larger than {limit / 2**20:g} MiB "
                                      f"(MAPEX_MAX_UPLOAD_MB); send fewer tiles per request")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v2/models/{name}/infer", tags=["open inference protocol"], dependencies=[Depends(authorised)],
             openapi_extra=_INFER_BODY)
async def v2_infer(name: str, request: Request, reg: Ready,
                   state: Annotated[ServiceState, Depends(service_state)]) -> dict[str, Any]:
    """Open Inference Protocol inference, with the same upload, memory and time limits as ``/predict``."""
    s = _specialist(reg, name)
    settings = state.settings
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            raw = await _json_body(request, int(settings.max_upload_mb * 2**20))
            # A JSON list of floats costs ~8x its text as Python objects: reserved like /predict's outputs.
            reservation = state.budget.reserve(8 * len(raw), f"this {len(raw) / 2**20:.1f} MiB inference request")
            try:
                try:
                    body = InferRequest.model_validate_json(raw)
                except ValidationError as e:
                    raise HTTPException(422, f"not an Open Inference Protocol request: {e.errors(include_url=False)}"
                                        ) from None
                return await _infer(s, name, body, state)
            finally:
                reservation.release()
    except TimeoutError:
        raise RequestTimeoutError(f"the request took longer than {settings.request_timeout_s:g} s "
                                  f"(MAPEX_REQUEST_TIMEOUT_S); send fewer tiles or retry later") from None


async def _infer(s: Any, name: str, body: InferRequest, state: ServiceState) -> dict[str, Any]:
    if len(body.inputs) != 1:
        raise HTTPException(422, f"send exactly one input tensor named {s.manifest.input.name!r}")
    tensor = body.inputs[0]
    expected = s.manifest.input.shape[1:]
    if tensor.shape[1:] != expected or np.prod(tensor.shape) != len(tensor.data):
        raise HTTPException(422, f"input shape {tensor.shape} with {len(tensor.data)} values; expected "
                                 f"[N, {', '.join(map(str, expected))}] and N*{int(np.prod(expected))} values")
    x = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
    out = await state.batchers[name].submit(x)
    return {"model_name": name, "model_version": str(s.version),
            "outputs": [{"name": s.manifest.output.name, "datatype": "FP32", "shape": list(out.shape),
                         "data": out.ravel().tolist()}]}

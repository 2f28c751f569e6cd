"""The repository's specialists: ``GET /models`` and the Open Inference Protocol's model routes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

from mapex_serve.deps import authorised, ready_registry, service_state
from mapex_serve.errors import UnknownModelError
from mapex_serve.registry import Registry
from mapex_serve.state import ServiceState

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


@router.post("/v2/models/{name}/infer", tags=["open inference protocol"], dependencies=[Depends(authorised)])
async def v2_infer(name: str, body: InferRequest, reg: Ready,
                   state: Annotated[ServiceState, Depends(service_state)]) -> dict[str, Any]:
    s = _specialist(reg, name)
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

"""Liveness, readiness (ours and the Open Inference Protocol's) and Prometheus metrics: always open."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mapex_serve.deps import service_state
from mapex_serve.state import ServiceState

router = APIRouter()
State = Annotated[ServiceState, Depends(service_state)]


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "live"}


@router.get("/readyz", tags=["health"])
async def readyz(state: State) -> JSONResponse:
    body = {"ready": state.ready, "specialists": sorted(state.registry.specialists) if state.registry else []}
    if state.decode is not None:
        body["decode_workers"] = {"ready": state.decode.ready_count, "size": state.decode.size,
                                  "restarts": state.decode.restarts, "holding": state.decode.holding}
    return JSONResponse(body, status_code=200 if state.serving else 503)


@router.get("/v2/health/live", tags=["open inference protocol"])
async def v2_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", tags=["open inference protocol"])
async def v2_ready(state: State) -> JSONResponse:
    return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)


@router.get("/metrics", tags=["health"])
async def prometheus(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

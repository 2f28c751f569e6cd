"""FastAPI dependencies of every router: the service state, a ready registry, the API key."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from mapex_serve.registry import Registry
from mapex_serve.state import ServiceState

__all__ = ["authorised", "ready_registry", "service_state"]


# async: they do no blocking work, and FastAPI runs a plain ``def`` dependency in a worker thread.
async def service_state(request: Request) -> ServiceState:
    return request.app.state.mapex


async def ready_registry(state: Annotated[ServiceState, Depends(service_state)]) -> Registry:
    """The registry once engines are warm; 503 with Retry-After while they warm up."""
    if not state.ready:
        raise HTTPException(503, "the service is starting: engines are warming up", headers={"Retry-After": "5"})
    return state.registry


async def authorised(request: Request, state: Annotated[ServiceState, Depends(service_state)]) -> None:
    """``Authorization: Bearer <MAPEX_API_KEY>`` when a key is set; compared in constant time."""
    if state.settings.api_key is None:
        return
    given = request.headers.get("authorization", "")
    expected = f"Bearer {state.settings.api_key.get_secret_value()}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "send the API key as 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})

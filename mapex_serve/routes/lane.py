"""The hot routes past FastAPI's stack: ``POST /predict/{task}`` and ``POST /v2/models/{name}/infer``.

Why: on small requests the event loop bounds the service (on a GPU node single tiles are bound by
it, docs/performance.md), and FastAPI's route matching, dependency solving and exception wrappers
were a large share of its time (py-spy): half of it on binary ``/v2`` infer requests, and on
single-tile ``/predict`` requests 1.02 -> 0.77 ms of loop CPU once they were skipped. The
middleware FastAPI and Starlette wrap every request in (body limit, telemetry, server errors) held
another eighth of the loop's samples on ``/v2``; taken before it, the loop's CPU a request fell by
5-10% (docs/performance.md).

``FastLane.take`` runs first in the app (``app.MapexApp``). For a path of its table it runs the
same checks as the routes' dependencies (API key, then readiness) and calls the route's own
endpoint with the parameters FastAPI would have given; ``MapexError`` and ``HTTPException`` get the
responses the app's handlers make, anything else the plain 500 of Starlette's
``ServerErrorMiddleware`` and is raised on to the server, which logs it. A request a lane cannot
take as FastAPI would (a query FastAPI must refuse with its 422) goes on to FastAPI. The routes stay
declared, for OpenAPI and for those requests.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import PlainTextResponse, Response

from mapex_serve.deps import authorised, ready_registry
from mapex_serve.errors import MapexError
from mapex_serve.http_errors import mapex_error_response
from mapex_serve.registry import Registry
from mapex_serve.state import ServiceState

__all__ = ["FastLane", "Lane", "error_response", "route_path"]

#: A lane's handler: the endpoint's response, or None to leave the request to FastAPI.
Handler = Callable[[Request, ServiceState, Registry, re.Match[str]], Awaitable[Response] | None]


@dataclass(frozen=True)
class Lane:
    """``POST`` requests whose path matches ``path`` in full go to ``handler``."""

    path: re.Pattern[str]
    handler: Handler


class FastLane:
    """The ``lanes``' requests, answered straight by their endpoints."""

    def __init__(self, lanes: Sequence[Lane]) -> None:
        self.lanes = tuple(lanes)

    async def take(self, app: Any, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Answer the request if a lane takes it; False leaves it to ``app``'s own stack, untouched."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        path = route_path(scope)
        found = next(((lane, m) for lane in self.lanes if (m := lane.path.fullmatch(path))), None)
        if found is None:
            return False
        lane, match = found
        scope["app"] = app  # what Starlette sets for the request's app and state
        request = Request(scope, receive)
        state: ServiceState = app.state.mapex
        try:
            await authorised(request, state)
            call = lane.handler(request, state, await ready_registry(state), match)
            if call is None:
                return False
            response = await call
        except (HTTPException, MapexError) as e:
            response = await error_response(request, e)
        except Exception:
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise  # the server logs it, as it does behind ServerErrorMiddleware
        await response(scope, receive, send)
        return True


async def error_response(request: Request, error: HTTPException | MapexError) -> Response:
    """The answer the app's handlers give ``error``, for requests taken before FastAPI's stack."""
    if isinstance(error, HTTPException):
        return await http_exception_handler(request, error)
    return await mapex_error_response(request, error)


def route_path(scope: dict[str, Any], *, raw: bool = False) -> str:
    """The path the routes see: without the ``root_path`` a proxy mounts the service under; ``raw``: percent-encoded."""
    path, root = scope["path"], scope.get("root_path", "")
    if raw and scope.get("raw_path") is not None:
        path = scope["raw_path"].decode("latin-1")
    return path[len(root):] if root and path.startswith(root) else path

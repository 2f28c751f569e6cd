"""``/jobs`` passed on to the server that runs this deployment's whole-scene jobs (``MAPEX_JOBS_URL``).

Why: a job's state lives in one server's store (SQLite on its volume). Behind one Service with
several replicas, ``GET /jobs/{id}`` would reach replicas that never saw the job. A replica with
``MAPEX_JOBS_URL`` set runs no jobs and streams every ``/jobs`` request to that server and its
answer back, unchanged: clients keep one address, and uploads are not held in memory. The API key
is checked here first and passed on, since both servers are given the same one. A ``Via`` header
marks what was passed on, so that two servers pointed at each other answer 508 instead of passing a
request round until it times out. ``X-Forwarded-For``, ``-Proto`` and ``-Host`` tell the jobs server
who asked and at which address (the de facto headers uvicorn reads where ``FORWARDED_ALLOW_IPS``
trusts the sender): otherwise every job would seem to come from a serving replica.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from fastapi import HTTPException, Request
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from mapex_serve.deps import authorised
from mapex_serve.errors import JobsLoopError, JobsServerUnreachableError, MapexError, RequestTimeoutError
from mapex_serve.routes.lane import error_response, route_path

__all__ = ["JobsProxy"]

log = logging.getLogger("mapex_serve.jobs")

#: Headers of one connection (RFC 9110 section 7.6.1), Host, which names this server, and Expect, which this
#: server has already answered (100 Continue): never passed on.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade", "host", "expect"})
#: What this server adds to ``Via`` (RFC 9110 section 7.6.3) on the requests it passes on.
VIA = "1.1 mapex-serve"
#: Request headers not passed on as they came: the hop-by-hop ones, and Via and X-Forwarded-For, passed on with
#: this hop added.
NOT_PASSED_ON = HOP_BY_HOP | {"via", "x-forwarded-for"}


def _forwarded_headers(request: Request) -> list[tuple[bytes, bytes]]:
    """``X-Forwarded-For`` with the client this server saw added (unless uvicorn already took the client from that
    header's last entry: a trusted proxy in front), and ``X-Forwarded-Proto`` and ``-Host`` unless a proxy in front
    set them."""
    chain = [a.strip() for v in request.headers.getlist("x-forwarded-for") for a in v.split(",") if a.strip()]
    client = request.client.host if request.client else None
    if client and (not chain or chain[-1] != client):
        chain.append(client)
    headers = [(b"x-forwarded-for", ", ".join(chain).encode("latin-1"))] if chain else []
    if "x-forwarded-proto" not in request.headers:
        headers.append((b"x-forwarded-proto", request.url.scheme.encode("latin-1")))
    if "x-forwarded-host" not in request.headers and "host" in request.headers:
        headers.append((b"x-forwarded-host", request.headers["host"].encode("latin-1")))
    return headers


class JobsProxy:
    """Streams ``/jobs`` requests to the jobs server at ``url`` and its answers back."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        # connect: a jobs server that is down answers at once; the rest: as long as a request may take here
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))

    async def take(self, app: Any, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Pass the request on if it is for ``/jobs``; False leaves it to ``app``, untouched."""
        if scope["type"] != "http":
            return False
        path = route_path(scope)
        if path != "/jobs" and not path.startswith("/jobs/"):
            return False
        scope["app"] = app
        request = Request(scope, receive)
        try:
            await authorised(request, app.state.mapex)
            if VIA in request.headers.get("via", ""):
                raise JobsLoopError(f"this server passes /jobs on to {self.url}, and so did the server that sent the "
                                    f"request here: unset MAPEX_JOBS_URL on the server that should run the jobs")
            response = await self._forward(request, route_path(scope, raw=True))
        except (HTTPException, MapexError) as e:
            response = await error_response(request, e)
        except ClientDisconnect:  # the client left mid-upload: nobody to answer
            return True
        await response(scope, receive, send)
        return True

    async def _forward(self, request: Request, raw_path: str) -> Response:
        """``raw_path`` still percent-encoded as sent: ``/jobs/..%2Fmodels`` must stay a job id there, not a path."""
        headers = [(k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in NOT_PASSED_ON]
        headers.append((b"via", ", ".join([*request.headers.getlist("via"), VIA]).encode("latin-1")))
        headers += _forwarded_headers(request)
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        query = request.url.query
        outgoing = self.client.build_request(request.method, f"{self.url}{raw_path}" + (f"?{query}" if query else ""),
                                             headers=headers, content=request.stream() if has_body else None)
        try:
            answer = await self.client.send(outgoing, stream=True)
        except httpx.TimeoutException as e:
            raise RequestTimeoutError(f"the jobs server at {self.url} did not answer in time ({type(e).__name__}); "
                                      f"ask GET /jobs before resubmitting: the job may have been accepted") from e
        except httpx.TransportError as e:
            log.warning("jobs server %s unreachable: %s", self.url, e)
            raise JobsServerUnreachableError(f"the jobs server at {self.url} cannot be reached ({type(e).__name__}: "
                                             f"{e}); retry shortly") from e
        passed = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, headers=passed,
                                 background=BackgroundTask(answer.aclose))

    async def aclose(self) -> None:
        await self.client.aclose()

"""A job's end told to the URL its sender gave (``notify``): a pipeline learns that its flood map is ready, or why
not, without polling ``GET /jobs/{id}``.

When a job ends (done, failed or cancelled) the service POSTs its status, as ``GET /jobs/{id}`` answers it with the
result URLs made absolute, to the job's ``notify`` URL, as Planet's Orders API notifies a webhook. It tries three
times, 1 s and then 5 s apart, while the receiver fails (5xx, 408, 429) or cannot be reached; a 4xx is its answer.
The job never changes for it: a receiver that is down loses the notification, not the job. A notification due when
the service stops is not sent after the restart.

Where the deployment sets a secret (``MAPEX_JOB_NOTIFY_SECRET``), each notification carries
``X-Mapex-Signature-256: sha256=<hex>``, the HMAC-SHA256 of its body's bytes with the secret, as GitHub signs its
webhooks: the receiver computes it again to know that the service sent it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any

import httpx

from mapex_serve.jobs.models import JobRequestError

__all__ = ["checked_notify_url", "notify"]

log = logging.getLogger("mapex_serve.jobs")

_DELAYS_S = (0.0, 1.0, 5.0)
_AGAIN = {408, 429}


def checked_notify_url(url: str, allowed_prefixes: Sequence[str]) -> str:
    """``url`` when it is an http(s) URL under one of ``allowed_prefixes`` (any, when none are set)."""
    if not url.startswith(("http://", "https://")):
        raise JobRequestError(f"notify={url!r} is not an http(s) URL; give the URL the service should POST the job's "
                             f"status to when it ends")
    if allowed_prefixes and not url.startswith(tuple(allowed_prefixes)):
        raise JobRequestError(f"notify={url!r} is not under a prefix this deployment allows (MAPEX_JOB_NOTIFY_PREFIXES: "
                             f"{', '.join(allowed_prefixes)})")
    return url


async def notify(url: str, status: dict[str, Any], secret: str | None = None,
                 delays_s: Sequence[float] = _DELAYS_S, timeout_s: float = 10) -> bool:
    """POST ``status`` to ``url`` (signed with ``secret``), again after each of ``delays_s`` while the receiver
    fails; whether it took it."""
    body = json.dumps(status, separators=(",", ":")).encode()
    headers = {"User-Agent": "mapex-serve", "Content-Type": "application/json"}
    if secret:
        headers["X-Mapex-Signature-256"] = f"sha256={hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}"
    failure = ""
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        for delay in delays_s:
            await asyncio.sleep(delay)
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as e:
                failure = f"{type(e).__name__}: {e}"
                continue
            if response.is_success:
                return True
            failure = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in _AGAIN:
                break  # the receiver's answer, not a failure to retry
    log.warning("job %s: its notify URL %s did not take its %s status (%s)", status.get("id"), url,
                status.get("state"), failure)
    return False

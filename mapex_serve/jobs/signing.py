"""A Planetary Computer item's assets signed as the Planetary Computer's own clients sign them.

Its STAC items point at Azure Blob Storage (``https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/...``),
which answers 403 to an unsigned read: a job by such an item failed until its sender signed the item first
(``planetary_computer.sign``). The Planetary Computer's SAS service gives a token for a storage container without
an account (``GET <endpoint>/{account}/{container}`` -> ``{"token": ..., "msft:expiry": ...}``), appended to an
href as its query: what ``planetary_computer.sign`` and rstac's ``sign_planetary_computer`` do. A token lasts about
an hour; one is fetched per container and kept until five minutes before it expires.

A job waits in the queue, or for the service to restart, longer than that: its files are signed afresh when it
starts (``resigned``). A job that reads longer than its token lasts still fails saying its URL stopped being served
(``mapex_serve.remote``).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from mapex_serve.jobs.sources import ResolvedSources
from mapex_serve.remote import RemoteFileUnavailableError

__all__ = ["PLANETARY_COMPUTER_SAS", "from_planetary_computer", "resigned", "signed_item"]

PLANETARY_COMPUTER_SAS = "https://planetarycomputer.microsoft.com/api/sas/v1/token"
_HOST = "planetarycomputer.microsoft.com"
_BLOB = ".blob.core.windows.net"
_MARGIN_S = 300.0
_tokens: dict[tuple[str, str, str], tuple[str, float]] = {}
_lock = threading.Lock()


def from_planetary_computer(item: dict[str, Any], item_url: str | None) -> bool:
    """True for an item the Planetary Computer's STAC API serves: fetched from it, or linking to it."""
    links = [link.get("href", "") for link in item.get("links") or [] if isinstance(link, dict)]
    return any(urlsplit(str(u)).hostname == _HOST for u in [item_url or "", *links])


def signed_item(item: dict[str, Any], endpoint: str, timeout: float = 30) -> dict[str, Any]:
    """A copy of ``item`` whose unsigned Azure Blob Storage hrefs carry a SAS token of their container."""
    assets = {}
    for key, asset in (item.get("assets") or {}).items():
        href = asset.get("href") if isinstance(asset, dict) else None
        blob = _blob(href) if isinstance(href, str) else None
        if blob is None or urlsplit(href).query:
            assets[key] = asset
            continue
        assets[key] = {**asset, "href": f"{href}?{_token(endpoint, *blob, timeout, fresh=False)}"}
    return {**item, "assets": assets}


def resigned(sources: ResolvedSources, endpoint: str, timeout: float = 30) -> ResolvedSources:
    """``sources`` (a Planetary Computer item's) with a token fetched now on each Azure Blob Storage file, in place
    of the one it was signed with when the job was submitted, which may have expired while the job waited."""
    tokens: dict[tuple[str, str], str] = {}
    files = []
    for f in sources.files:
        gdal, _, url = f.path.partition("https://")
        blob = _blob(f"https://{url}") if gdal == "/vsicurl/" else None
        if blob is not None:
            if blob not in tokens:
                tokens[blob] = _token(endpoint, *blob, timeout, fresh=True)
            f = replace(f, path=f"{gdal}https://{url.split('?', 1)[0]}?{tokens[blob]}")
        files.append(f)
    return replace(sources, files=files)


def _blob(href: str) -> tuple[str, str] | None:
    """The storage account and container of an Azure Blob Storage file's URL; None for any other."""
    parts = urlsplit(href)
    if not (parts.hostname or "").endswith(_BLOB) or "/" not in parts.path[1:]:
        return None
    return parts.hostname.removesuffix(_BLOB), parts.path[1:].split("/", 1)[0]


def _token(endpoint: str, account: str, container: str, timeout: float, *, fresh: bool) -> str:
    """The container's token: the one kept unless ``fresh`` or it expires within five minutes."""
    key = (endpoint, account, container)
    with _lock:
        token, expiry = _tokens.get(key, ("", 0.0))
        if not fresh and time.time() < expiry - _MARGIN_S:
            return token
        url = f"{endpoint.rstrip('/')}/{account}/{container}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the deployment's endpoint
                body = json.loads(response.read())
            token = body["token"]
            expiry = datetime.fromisoformat(str(body["msft:expiry"]).replace("Z", "+00:00")).timestamp()
        except (OSError, ValueError, KeyError, TypeError) as e:
            reason = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else f"{type(e).__name__}: {e}"
            raise RemoteFileUnavailableError(
                f"the Planetary Computer's SAS service gave no token for {account}/{container} ({reason}); try "
                f"again later, or send the item signed (planetary_computer.sign)") from None
        _tokens[key] = token, expiry
        return token

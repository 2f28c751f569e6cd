"""Errors shared by the service, the exporter and the model code.

One base class, narrow subclasses; each message says what was wrong and what would be accepted,
so that the service can hand it to the user unchanged.
"""

from __future__ import annotations

__all__ = [
    "ClientGoneError",
    "DuplicateBandError",
    "JobsLoopError",
    "JobsServerUnreachableError",
    "MapexError",
    "RequestTimeoutError",
    "UnknownBandError",
    "UnknownModalityError",
    "UnknownModelError",
    "UnknownTaskError",
]


class MapexError(Exception):
    """Base class of every error mapex-serve raises on purpose."""


class UnknownBandError(MapexError, ValueError):
    """A band name that the band vocabulary does not know."""


class DuplicateBandError(MapexError, ValueError):
    """Two names that resolve to the same canonical band."""


class UnknownModalityError(MapexError, ValueError):
    """A modality name outside the modality groups."""


class UnknownTaskError(MapexError, LookupError):
    """A task no serving specialist does."""


class UnknownModelError(MapexError, LookupError):
    """A model name the repository does not serve."""


class RequestTimeoutError(MapexError, TimeoutError):
    """A request that ran past MAPEX_REQUEST_TIMEOUT_S."""


class ClientGoneError(MapexError, ConnectionError):
    """The client closed the connection before its answer was ready; nothing is left to answer."""


class JobsServerUnreachableError(MapexError, ConnectionError):
    """The server that runs this deployment's jobs (MAPEX_JOBS_URL) could not be reached; try again shortly."""


class JobsLoopError(MapexError, RuntimeError):
    """A /jobs request passed on by one server to another that passes /jobs on too: MAPEX_JOBS_URL set on both."""

"""Errors shared by the service, the exporter and the model code.

One base class, narrow subclasses; each message says what was wrong and what would be accepted,
so that the service can hand it to the user unchanged.
"""

from __future__ import annotations

__all__ = ["MapexError", "UnknownBandError", "UnknownModalityError", "DuplicateBandError"]


class MapexError(Exception):
    """Base class of every error mapex-serve raises on purpose."""


class UnknownBandError(MapexError, ValueError):
    """A band name that the band vocabulary does not know."""


class DuplicateBandError(MapexError, ValueError):
    """Two names that resolve to the same canonical band."""


class UnknownModalityError(MapexError, ValueError):
    """A modality name outside the modality groups."""

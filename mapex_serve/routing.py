"""Band routing: which of a task's specialists can read this file, and in which band order.

Among the specialists of the task, the one whose modalities are all present in the file wins,
most modalities first (a SAR + SWIR specialist beats a SAR-only one when both fit); ``modality=``
forces one. The file's bands are then taken in the manifest's order, whatever order they had.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mapex_serve.bands import resolve_modality
from mapex_serve.errors import MapexError
from mapex_serve.repository import Manifest

__all__ = ["NoMatchingSpecialistError", "Route", "choose_route"]


class NoMatchingSpecialistError(MapexError, ValueError):
    """The file's bands cover no specialist of the task (or not the one forced with ``modality=``)."""


@dataclass(frozen=True)
class Route:
    manifest: Manifest
    #: 1-based indexes of the file's bands, in the manifest's band order (what rasterio reads).
    band_indexes: tuple[int, ...]

    @property
    def bands(self) -> list[str]:
        return self.manifest.band_names


def choose_route(manifests: Sequence[Manifest], file_bands: Sequence[str], modality: str | None = None) -> Route:
    """The specialist for a file whose bands are ``file_bands`` (canonical names, file order)."""
    forced = sorted(resolve_modality(m) for m in modality.split(",")) if modality else None
    candidates = sorted(manifests, key=lambda m: (-len(m.modalities), m.name))
    if forced is not None:
        candidates = [m for m in candidates if sorted(m.modalities) == forced]
    present = set(file_bands)
    for manifest in candidates:
        if present.issuperset(manifest.band_names):
            return Route(manifest, tuple(list(file_bands).index(b) + 1 for b in manifest.band_names))
    accepted = "; ".join(f"{m.name}: {', '.join(m.band_names)}" for m in sorted(manifests, key=lambda m: m.name))
    wanted = f" with modality={','.join(forced)}" if forced else ""
    raise NoMatchingSpecialistError(
        f"the file's bands {list(file_bands)} cover no specialist of this task{wanted}; "
        f"band sets accepted: {accepted or 'none (the repository holds no specialist for this task)'}"
    )

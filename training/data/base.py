"""The small shared base of the real data set loaders (ben-ge, Sen1Floods11, HLS burn scars, EuroSAT).

Each loader is one file that declares, once and as class attributes, the bands of each file kind
in the data set's own spelling and order (``FILE_BANDS``); ``__init_subclass__`` resolves them
through the band vocabulary (``mapex_serve.bands``), so a misspelt band fails at import and every
loader yields the service's canonical names. A sample is modality -> (C, H, W) float32 in
physical units (reflectance, dB, metres; nodata as NaN) plus named labels, the same shape of data
the synthetic generator gives. A layout that does not match says where the loader looked, what it
expected and what it found (a path and a count), as a ``DatasetLayoutError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import rasterio
import torch

from mapex_serve.bands import BANDS, MODALITIES, modalities_covered, resolve_bands
from mapex_serve.errors import MapexError

__all__ = ["DatasetLayoutError", "RealDataset", "Sample", "find_one", "list_files", "read_raster", "to_physical"]


class DatasetLayoutError(MapexError, FileNotFoundError):
    """A data set folder that is not laid out as the loader's documented source says."""


@dataclass
class Sample:
    """One item: modality -> (C, H, W) float32 in physical units, and label name -> tensor."""

    inputs: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = ""


def list_files(folder: Path, pattern: str, what: str, *, minimum: int = 1) -> list[Path]:
    """Files under ``folder`` (any depth) matching ``pattern``, sorted; raises naming the folder and the count."""
    if not folder.is_dir():
        parent = folder.parent
        found = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []
        raise DatasetLayoutError(
            f"{what}: expected a folder {folder}; it does not exist "
            f"({parent} holds {len(found)} entries{': ' + ', '.join(found[:8]) if found else ''})"
        )
    files = sorted(folder.rglob(pattern))
    if len(files) < minimum:
        raise DatasetLayoutError(
            f"{what}: expected at least {minimum} files matching {pattern!r} under {folder}, found {len(files)}"
        )
    return files


def find_one(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of ``candidates`` (paths relative to ``root``) that exists; raises listing every place tried."""
    for c in candidates:
        if (root / c).exists():
            return root / c
    tried = ", ".join(str(root / c) for c in candidates)
    found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    raise DatasetLayoutError(
        f"{what}: looked for {tried}; none exists ({root} holds {len(found)} entries"
        f"{': ' + ', '.join(found[:8]) if found else ''})"
    )


def read_raster(path: Path, count: int | None = None) -> np.ndarray:
    """All bands of a raster as (C, H, W) float32, the file's nodata as NaN; ``count`` bands expected."""
    with rasterio.open(path) as src:
        if count is not None and src.count != count:
            raise DatasetLayoutError(f"{path}: expected {count} bands, found {src.count}")
        data = src.read(masked=True).astype(np.float32)
    return data.filled(np.nan)


def to_physical(stored: np.ndarray, bands: Sequence[str], scale: float | None = None) -> np.ndarray:
    """``stored * scale + offset`` per band: the band table's scale (S2 DN / 10000) unless ``scale`` is given."""
    stored = np.asarray(stored, dtype=np.float32)
    out = np.empty_like(stored)
    for i, b in enumerate(bands):
        s = BANDS[b].scale if scale is None else scale
        out[i] = stored[i] * np.float32(s) + np.float32(BANDS[b].offset)
    return out


class RealDataset(torch.utils.data.Dataset):
    """Base of the loaders: band declarations resolved once, and the modalities they cover."""

    #: The data set's name on the command line (``training.evaluate --dataset``).
    name: ClassVar[str] = ""
    #: File kind -> band names in the data set's own spelling and file order.
    FILE_BANDS: ClassVar[Mapping[str, Sequence[str]]] = {}
    #: File kind -> the same bands as canonical names (filled in by ``__init_subclass__``).
    CANONICAL: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Chip side in pixels as distributed.
    CHIP_SIZE: ClassVar[int] = 0
    #: The size of a chip's pixels on the ground (m), every band resampled to one grid as distributed.
    PIXEL_SIZE_M: ClassVar[float] = 0.0
    #: Its Sentinel-2 reflectance: ``surface`` (Level-2A, HLS) or ``top-of-atmosphere`` (Level-1C); None: no
    #: optical bands.
    REFLECTANCE: ClassVar[str | None] = None
    #: Its Sentinel-1 backscatter: ``sigma0`` or ``gamma0`` (terrain-corrected); None: no radar bands.
    BACKSCATTER: ClassVar[str | None] = None
    #: Cut chips larger than the model's tile into tiles (mask data sets) rather than resize them.
    CUT_INTO_TILES: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.CANONICAL = {kind: resolve_bands(names) for kind, names in cls.FILE_BANDS.items()}

    @classmethod
    def all_bands(cls) -> tuple[str, ...]:
        return tuple(b for bands in cls.CANONICAL.values() for b in bands)

    @classmethod
    def modalities(cls) -> tuple[str, ...]:
        """The model's modalities that the data set covers completely (e.g. HLS has no B08, so no NIR)."""
        return modalities_covered(cls.all_bands())

    @staticmethod
    def group(values: Mapping[str, np.ndarray], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
        """Canonical band -> (H, W) arrays, regrouped as modality -> (C, H, W) tensors."""
        return {m: torch.from_numpy(np.ascontiguousarray(np.stack([values[b] for b in MODALITIES[m]]))) for m in modalities}

    @staticmethod
    def named(stack: np.ndarray, bands: Sequence[str]) -> dict[str, np.ndarray]:
        return dict(zip(bands, stack, strict=True))

    #: Label name -> (kind: "class", "mask" or "multilabel", class names).
    LABELS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}

    def derive(self, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Recompute the tile labels that summarise a mask (after cutting a chip into tiles); default none."""
        return labels

    def __getitem__(self, index: int) -> Sample:  # pragma: no cover - every loader defines it
        raise NotImplementedError

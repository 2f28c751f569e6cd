"""Real chips cut or resized to the model's tile size, and held in memory as a labelled tile set.

A preset takes square tiles of ``img_size`` px (32 for ``tiny``, 128 for ``mapex-130m``), while
the data sets ship 64 (EuroSAT), 120 (ben-ge) or 512 px chips (Sen1Floods11, HLS). A chip whose
side is a multiple of the tile size, at least twice it, is cut into non-overlapping tiles (no
resampling of the 512 px flood and burn chips); any other chip is resized (bilinear, antialiased;
masks nearest). Only the mask data sets cut (``CUT_INTO_TILES``); a classification chip is one
tile, resized, so it keeps its one label. Tile labels that summarise a mask (majority class, has flood, has burn) are
recomputed from each tile's own mask by the loader's ``derive``. NaN (nodata) in an input band is
filled with that band's mean over the chip (0 where the whole band is missing), since the model
takes finite values; masks keep -1 for nodata, which losses and scores ignore.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from training.data.base import RealDataset, Sample

__all__ = ["FittedTiles", "TileSet", "collate", "fill_nodata", "fit_sample"]


def fill_nodata(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) with NaN replaced by each band's mean over the finite pixels (0 if none)."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    counts = finite.sum(dim=(1, 2)).clamp(min=1)
    means = torch.where(finite, x, 0.0).sum(dim=(1, 2)) / counts
    return torch.where(finite, x, means[:, None, None])


def _cuts(side: int, size: int, cut: bool) -> int:
    """Tiles per side when a chip of ``side`` px is cut into ``size`` px tiles; 0 when it is resized instead."""
    return side // size if cut and side % size == 0 and side >= 2 * size else 0


def fit_sample(sample: Sample, size: int, mask_labels: Sequence[str],
               derive: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], cut: bool = True) -> list[Sample]:
    """The tiles of one chip at ``size`` px: cut (``cut`` and a side a multiple of ``size``, >= 2x), else resized."""
    side = next(iter(sample.inputs.values())).shape[-1]
    inputs = {m: fill_nodata(x.float()) for m, x in sample.inputs.items()}
    if side == size:
        return [Sample(inputs, derive(dict(sample.labels)), sample.name)]
    if n := _cuts(side, size, cut):
        out = []
        for r in range(n):
            for c in range(n):
                window = (slice(None), slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size))
                labels = {k: (v[window[1:]] if k in mask_labels else v) for k, v in sample.labels.items()}
                out.append(Sample({m: x[window] for m, x in inputs.items()}, derive(labels), f"{sample.name}:{r},{c}"))
        return out
    resized = {m: F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False,
                                antialias=side > size)[0] for m, x in inputs.items()}
    labels = {}
    for k, v in sample.labels.items():
        if k in mask_labels:
            v = F.interpolate(v[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
        labels[k] = v
    return [Sample(resized, derive(labels), sample.name)]


class FittedTiles(torch.utils.data.Dataset):
    """A loader's chips as ``size`` px tiles, item by item (what DataLoader workers read from disk)."""

    def __init__(self, dataset: RealDataset, size: int, modalities: Sequence[str] | None = None,
                 indices: Sequence[int] | None = None) -> None:
        self.dataset, self.size = dataset, size
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        if not self.indices:
            raise ValueError(f"no items of {dataset.name} to tile")
        self.modalities = tuple(modalities or dataset.modalities())
        self.mask_labels = tuple(k for k, (kind, _) in dataset.LABELS.items() if kind == "mask")
        first = dataset[self.indices[0]]
        side = next(iter(first.inputs.values())).shape[-1]
        self.cut = dataset.CUT_INTO_TILES
        self.per_chip = max(1, _cuts(side, size, self.cut)) ** 2 if side != size else 1
        #: The tiles' pixels on the ground (m): the data set's, times the resizing when chips are resized (a
        #: 120 px ben-ge chip of 10 m pixels resized to a 32 px tile has 37.5 m pixels); None if not known.
        resized = side != size and self.per_chip == 1
        self.pixel_size_m = (dataset.PIXEL_SIZE_M * side / size if resized else dataset.PIXEL_SIZE_M) or None

    def __len__(self) -> int:
        return len(self.indices) * self.per_chip

    def __getitem__(self, index: int) -> Sample:
        chip, tile = divmod(index, self.per_chip)
        sample = self.dataset[self.indices[chip]]
        sample.inputs = {m: sample.inputs[m] for m in self.modalities}
        tiles = fit_sample(sample, self.size, self.mask_labels, self.dataset.derive, self.cut)
        if len(tiles) != self.per_chip:
            raise ValueError(f"{sample.name}: {len(tiles)} tiles, expected {self.per_chip} (chips of one data set "
                             f"must share one size)")
        return tiles[tile]


def collate(samples: Sequence[Sample]) -> TileSet:
    """Stack samples into a ``TileSet`` (the DataLoader's ``collate_fn``)."""
    inputs = {m: torch.stack([s.inputs[m] for s in samples]) for m in samples[0].inputs}
    labels = {k: torch.stack([s.labels[k] for s in samples]) for k in samples[0].labels}
    return TileSet(inputs, labels, [s.name for s in samples])


@dataclass
class TileSet:
    """Labelled tiles in memory: modality -> (N, C, S, S) in physical units, label name -> (N, ...) tensors.

    Label names read as attributes (``tiles.tile_class``), as on a ``SyntheticBatch``, so the
    tasks, fine-tuning and scoring take either.
    """

    inputs: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    names: list[str]

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def __getattr__(self, name: str) -> torch.Tensor:
        labels = self.__dict__.get("labels", {})
        if name in labels:
            return labels[name]
        raise AttributeError(f"tile set has no label {name!r}; it has {sorted(labels)}")

    def take(self, index: torch.Tensor | np.ndarray | slice | Sequence[int]) -> TileSet:
        if isinstance(index, np.ndarray | list | tuple):
            index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        names = [self.names[i] for i in range(len(self))[index]] if isinstance(index, slice) else [self.names[int(i)] for i in index]
        return TileSet({m: x[index] for m, x in self.inputs.items()}, {k: v[index] for k, v in self.labels.items()}, names)

    def only(self, modalities: Sequence[str]) -> TileSet:
        return TileSet({m: self.inputs[m] for m in modalities}, self.labels, self.names)

    @classmethod
    def concat(cls, parts: Sequence[TileSet]) -> TileSet:
        return cls({m: torch.cat([p.inputs[m] for p in parts]) for m in parts[0].inputs},
                   {k: torch.cat([p.labels[k] for p in parts]) for k in parts[0].labels},
                   [n for p in parts for n in p.names])

    @classmethod
    def of(cls, tiles: FittedTiles, indices: Sequence[int] | None = None, workers: int = 0,
           batch: int = 64) -> TileSet:
        """Every tile (or ``indices``) of ``tiles``, read with ``workers`` DataLoader processes."""
        subset = tiles if indices is None else torch.utils.data.Subset(tiles, list(indices))
        loader = torch.utils.data.DataLoader(subset, batch_size=batch, shuffle=False, num_workers=workers,
                                             collate_fn=collate)
        return cls.concat(list(loader))


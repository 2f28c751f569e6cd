"""What the paper's tables measure on each data set: the rows (task x modality) and their tiles.

A row names a task (head, classes, the label fine-tuning learns), one input modality and the
tile-level label that k-NN scores (for a mask task, a summary of the mask: has flood, majority
class). ``synthetic`` is the generator's scenes; every other benchmark reads a real data set
through its loader (``training.data``) and its train/test split (``training.data.splits``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mapex_serve.bands import MODALITY_NAMES
from training.data import (
    DATASETS,
    EUROSAT_CLASSES,
    WORLDCOVER_CLASSES,
    FittedTiles,
    SceneConfig,
    SyntheticBatch,
    TileSet,
    generate_batch,
)
from training.data.splits import split_dataset
from training.seeds import HELDOUT, TRAIN, derive_seed
from training.tasks import TASKS, Task

__all__ = ["BENCHMARKS", "Benchmark", "Row", "benchmark", "synthetic_tileset"]


@dataclass(frozen=True)
class Row:
    """One line of the table: fine-tune ``task`` from ``modality``; k-NN scores ``knn_label``."""

    task: Task
    modality: str
    knn_label: str

    @property
    def key(self) -> str:
        return f"{self.task.name}/{self.modality}"


@dataclass(frozen=True)
class Benchmark:
    """A data set's rows and where its tiles come from (``root`` for a real one)."""

    name: str
    rows: tuple[Row, ...]
    root: Path | None = None
    train_tiles: int = 512  # synthetic only: tiles drawn per split
    test_tiles: int = 256
    workers: int = 0

    @property
    def synthetic(self) -> bool:
        return self.name == "synthetic"

    def tiles(self, seed: int, size: int, task: Task) -> tuple[TileSet, TileSet, str]:
        """Train and test tiles for ``task`` at ``size`` px, and a line saying how they were chosen.

        Synthetic: drawn afresh for each seed (TRAIN and HELDOUT seeds, the task's event rates).
        Real: the data set's fixed split, the same for every seed (seeds vary the fine-tuning).
        """
        if self.synthetic:
            scene = task.scene_config(size)
            return (synthetic_tileset(seed, TRAIN, self.train_tiles, scene), synthetic_tileset(seed, HELDOUT, self.test_tiles, scene),
                    f"synthetic scenes, {self.train_tiles} train / {self.test_tiles} held-out tiles drawn per seed")
        return _real_tiles(self.name, str(self.root), size, self.workers)


@functools.lru_cache(maxsize=8)
def synthetic_tileset(seed: int, purpose: int, n: int, scene: SceneConfig) -> TileSet:
    """``n`` synthetic tiles keyed (seed, purpose, 0, chunk) as a ``TileSet`` (every modality and label)."""
    parts = [generate_batch(derive_seed(seed, purpose, 0, c), min(64, n - 64 * c), scene) for c in range(math.ceil(n / 64))]
    fields = ("landcover", "tile_class", "flood", "burn", "has_burn")
    batch = SyntheticBatch(inputs={m: torch.cat([p.inputs[m] for p in parts]) for m in parts[0].inputs},
                           **{f: torch.cat([getattr(p, f) for p in parts]) for f in fields})
    labels = {f: getattr(batch, f).long() for f in fields}
    flooded = labels["flood"].flatten(1).float().mean(dim=1)
    labels["has_flood"] = (flooded >= 0.01).long()  # the tile label k-NN scores for the flood row, as on real data
    return TileSet(batch.inputs, labels, [f"synthetic:{purpose}:{i}" for i in range(n)])


@functools.lru_cache(maxsize=2)
def _real_tiles(name: str, root: str, size: int, workers: int) -> tuple[TileSet, TileSet, str]:
    split = split_dataset(name, root)
    train = TileSet.of(FittedTiles(split.train, size, indices=split.train_index), workers=workers)
    test = TileSet.of(FittedTiles(split.test, size, indices=split.test_index), workers=workers)
    return train, test, f"{split.how}: {len(split.train_index)} / {len(split.test_index)} items, {len(train)} / {len(test)} tiles"


def _landcover(classes: tuple[str, ...]) -> Task:
    return replace(TASKS["landcover"], classes=classes)


_WORLDCOVER = _landcover(WORLDCOVER_CLASSES)
_WATER = replace(TASKS["flood"], classes=("no water", "water"))
_BENGE_ROWS = (*(Row(_WORLDCOVER, m, "tile_class") for m in MODALITY_NAMES),
               Row(replace(TASKS["landcover-seg"], classes=WORLDCOVER_CLASSES), "RGB", "tile_class"))

#: Rows per benchmark: the paper's land cover per modality, flood from SAR, wildfire from SWIR,
#: land-cover segmentation from RGB, where the data set has the label and the modality.
BENCHMARKS: dict[str, tuple[Row, ...]] = {
    "synthetic": (*(Row(TASKS["landcover"], m, "tile_class") for m in MODALITY_NAMES),
                  Row(TASKS["flood"], "SAR", "has_flood"), Row(TASKS["wildfire"], "SWIR", "has_burn"),
                  Row(TASKS["landcover-seg"], "RGB", "tile_class")),
    "ben-ge": _BENGE_ROWS,
    "ben-ge-8k": _BENGE_ROWS,
    "sen1floods11": (Row(_WATER, "SAR", "has_flood"),),
    "hls-burn-scars": (Row(TASKS["wildfire"], "SWIR", "has_burn"),),
    "eurosat": tuple(Row(_landcover(EUROSAT_CLASSES), m, "tile_class") for m in ("RGB", "RED_EDGE", "NIR", "SWIR")),
}


def benchmark(name: str, root: str | Path | None = None, workers: int = 0, train_tiles: int = 512,
              test_tiles: int = 256) -> Benchmark:
    """The benchmark ``name``; a real data set needs its ``root``."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(BENCHMARKS)}")
    if name != "synthetic":
        if root is None:
            raise ValueError(f"--dataset {name} needs --root, the folder {DATASETS[name].__name__} reads")
        root = Path(root)
    return Benchmark(name, BENCHMARKS[name], root, train_tiles, test_tiles, workers)

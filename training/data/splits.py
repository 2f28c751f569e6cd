"""Train/test splits of the real data sets: the official one where the data set ships it, else seeded.

Sen1Floods11 ships ``flood_train_data.csv`` / ``flood_test_data.csv`` (its ``valid`` split is left
out of both), HLS burn scars ``training/`` and ``validation/`` (the latter is the test set). ben-ge
and EuroSAT are split here: a seeded permutation, 80% train and 20% test, the same for every run
with the same ``seed`` (0 unless asked), so pre-training never sees the test patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.base import RealDataset
from training.data.benge import BenGe
from training.data.eurosat import EuroSAT
from training.data.hls_burn_scars import HLSBurnScars
from training.data.sen1floods11 import Sen1Floods11

__all__ = ["DataSplit", "split_dataset"]


@dataclass
class DataSplit:
    """The training and test items of one data set (loader + item indices each), and how they were chosen."""

    train: RealDataset
    train_index: list[int]
    test: RealDataset
    test_index: list[int]
    how: str


def split_dataset(name: str, root: str | Path, seed: int = 0, test_share: float = 0.2) -> DataSplit:
    """Split the data set ``name`` found at ``root``; see the module docstring for which split each uses."""
    if name == "sen1floods11":
        train, test = Sen1Floods11(root, "train"), Sen1Floods11(root, "test")
        return DataSplit(train, list(range(len(train))), test, list(range(len(test))),
                         "official flood_handlabeled train / test split")
    if name == "hls-burn-scars":
        train, test = HLSBurnScars(root, "training"), HLSBurnScars(root, "validation")
        return DataSplit(train, list(range(len(train))), test, list(range(len(test))),
                         "official training / validation folders (validation as test)")
    loaders = {"ben-ge": BenGe, "ben-ge-8k": BenGe, "eurosat": EuroSAT}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(['sen1floods11', 'hls-burn-scars', *loaders])}")
    ds = loaders[name](root)
    order = np.random.default_rng(seed).permutation(len(ds))
    n_test = max(1, int(round(test_share * len(ds))))
    if n_test >= len(ds):
        raise ValueError(f"{name} at {root} has {len(ds)} items: too few to hold out {n_test} for testing")
    return DataSplit(ds, sorted(order[n_test:].tolist()), ds, sorted(order[:n_test].tolist()),
                     f"seeded {1 - test_share:.0%} / {test_share:.0%} split (seed {seed})")

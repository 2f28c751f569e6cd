"""Sen1Floods11 hand-labelled chips: Sentinel-1 and Sentinel-2 with water masks (the flood task).

Layout (Sen1Floods11 documentation, github.com/cloudtostreet/Sen1Floods11, docs/README.md,
"Bucket Structure"; ``v1.1/`` holds the current release)::

    ROOT[/v1.1]/data/flood_events/HandLabeled/S1Hand/<chip>_S1Hand.tif     2 bands float32, dB: VV, VH
    ROOT[/v1.1]/data/flood_events/HandLabeled/S2Hand/<chip>_S2Hand.tif     13 bands L1C DN: B1-B8, B8A, B9-B12
    ROOT[/v1.1]/data/flood_events/HandLabeled/LabelHand/<chip>_LabelHand.tif  int16: 1 water, 0 no water, -1 no data
    ROOT[/v1.1]/splits/flood_handlabeled/flood_{train,valid,test}_data.csv rows "<chip>_S1Hand.tif,<chip>_LabelHand.tif"

446 chips of 512 x 512 px at 10 m, ``<chip>`` is ``<Country>_<id>`` (e.g. ``Bolivia_103757``).
Sentinel-2 here is L1C (top of atmosphere), stored as reflectance x 10000 like L2A. Labels:
``flood`` is the water mask (-1 no data: ignored by losses and scores), ``has_flood`` whether at
least 1% of the chip's valid pixels are water (the tile label k-NN scores).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from training.data.base import DatasetLayoutError, RealDataset, Sample, find_one, list_files, read_raster, to_physical

__all__ = ["Sen1Floods11"]

Split = Literal["train", "valid", "test", "all"]


class Sen1Floods11(RealDataset):
    """The 446 hand-labelled Sen1Floods11 chips (SAR and the optical modalities) with water masks."""

    name: ClassVar[str] = "sen1floods11"
    FILE_BANDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "S1Hand": ("VV", "VH"),
        "S2Hand": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"),
    }
    CHIP_SIZE: ClassVar[int] = 512
    PIXEL_SIZE_M: ClassVar[float] = 10.0
    REFLECTANCE: ClassVar[str | None] = "top-of-atmosphere"  # S2Hand: Level-1C (Bonafilia et al. 2020)
    BACKSCATTER: ClassVar[str | None] = "sigma0"  # S1Hand: Earth Engine's COPERNICUS/S1_GRD, sigma0 in dB
    CUT_INTO_TILES: ClassVar[bool] = True
    LABELS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {
        "flood": ("mask", ("no water", "water")),
        "has_flood": ("class", ("no water", "water")),
    }
    MIN_EVENT_SHARE: ClassVar[float] = 0.01

    def __init__(self, root: str | Path, split: Split = "all") -> None:
        self.root = Path(root)
        base = find_one(self.root, ["data/flood_events/HandLabeled", "v1.1/data/flood_events/HandLabeled"],
                        "Sen1Floods11 hand-labelled data")
        self.folders = {kind: base / kind for kind in ("S1Hand", "S2Hand", "LabelHand")}
        found = {kind: {p.name[: -len(f"_{kind}.tif")]: p for p in list_files(folder, f"*_{kind}.tif", f"Sen1Floods11 {kind}")}
                 for kind, folder in self.folders.items()}
        chips = sorted(found["LabelHand"])
        if split != "all":
            chips = self._split(base.parent.parent.parent, split)
        for kind in ("S1Hand", "S2Hand", "LabelHand"):
            if absent := [c for c in chips if c not in found[kind]]:
                raise DatasetLayoutError(f"{self.folders[kind]}: {len(absent)} of {len(chips)} chips have no "
                                         f"{kind} file (e.g. {absent[0]}_{kind}.tif); found {len(found[kind])} files")
        self.chips, self.files = chips, found

    def _split(self, release: Path, split: str) -> list[str]:
        path = release / "splits" / "flood_handlabeled" / f"flood_{split}_data.csv"
        if not path.is_file():
            raise DatasetLayoutError(f"Sen1Floods11 split {split!r}: expected {path}; it does not exist")
        with path.open(newline="") as fh:
            rows = [r for r in csv.reader(fh) if r]
        chips = [r[0].strip().removesuffix(".tif").removesuffix("_S1Hand") for r in rows]
        if not chips:
            raise DatasetLayoutError(f"{path}: expected rows '<chip>_S1Hand.tif,<chip>_LabelHand.tif', found 0 rows")
        return chips

    def derive(self, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``has_flood`` from the (tile's) mask: at least ``MIN_EVENT_SHARE`` of the valid pixels."""
        mask = labels["flood"]
        share = float((mask == 1).sum()) / max(int((mask >= 0).sum()), 1)
        return {**labels, "has_flood": torch.tensor(int(share >= self.MIN_EVENT_SHARE))}

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int) -> Sample:
        chip = self.chips[index]
        s1 = read_raster(self.files["S1Hand"][chip], count=2)  # dB
        s2 = to_physical(read_raster(self.files["S2Hand"][chip], count=13), self.CANONICAL["S2Hand"])
        label = read_raster(self.files["LabelHand"][chip], count=1)[0]
        if not s1.shape[1:] == s2.shape[1:] == label.shape:
            raise DatasetLayoutError(f"chip {chip}: S1 {s1.shape}, S2 {s2.shape} and label {label.shape} differ in size")
        mask = np.where(np.isfinite(label), label, -1).astype(np.int64)
        if bad := sorted(set(np.unique(mask).tolist()) - {-1, 0, 1}):
            raise DatasetLayoutError(f"{self.files['LabelHand'][chip]}: expected labels -1, 0, 1, found also {bad}")
        values = {**self.named(s1, self.CANONICAL["S1Hand"]), **self.named(s2, self.CANONICAL["S2Hand"])}
        labels = self.derive({"flood": torch.from_numpy(mask)})
        return Sample(self.group(values, self.modalities()), labels, chip)

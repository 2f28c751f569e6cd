"""HLS burn scars: six-band Harmonized Landsat Sentinel-2 chips with burn-scar masks (the wildfire task).

Layout (data set card of huggingface.co/datasets/ibm-nasa-geospatial/hls_burn_scars, mirrored in
PurdueRCAC/DatasetDocs docs/geoai/hls_burn_scars.rst: "804 512x512 scenes ... randomly split into
training (2/3) and validation (1/3) directories"; the file names as the Prithvi fine-tuning
configs and TerraTorch's ``BurnScars`` glob them)::

    ROOT/training/<scene>_merged.tif     6 bands, reflectance: Blue, Green, Red, NIR (B8A), SWIR 1, SWIR 2
    ROOT/training/<scene>.mask.tif       1 band: 1 burn scar, 0 not burned, -1 missing data
    ROOT/validation/...                  the same

``<scene>`` reads like ``subsetted_512x512_HLS.S30.T10SEH.2018190.v1.4``. The bands are already
reflectance (scale 1, not x 10000); -9999 (the HLS fill value) and the file's nodata are NaN. HLS
has no B08, so of the model's modalities it covers RGB and SWIR. Labels: ``burn`` is the mask (-1
ignored), ``has_burn`` whether at least 1% of the chip's valid pixels are burned (the service's
wildfire task: does the tile hold a burn scar).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from training.data.base import DatasetLayoutError, RealDataset, Sample, list_files, read_raster, to_physical

__all__ = ["HLSBurnScars"]

Split = Literal["training", "validation", "all"]
_FILL = -9999.0


class HLSBurnScars(RealDataset):
    """HLS burn-scar chips (RGB and SWIR in reflectance) with burn masks and tile labels."""

    name: ClassVar[str] = "hls-burn-scars"
    FILE_BANDS: ClassVar[dict[str, tuple[str, ...]]] = {"merged": ("blue", "green", "red", "nir08", "swir16", "swir22")}
    CHIP_SIZE: ClassVar[int] = 512
    PIXEL_SIZE_M: ClassVar[float] = 30.0  # HLS: Landsat and Sentinel-2 harmonised on Landsat's 30 m grid
    REFLECTANCE: ClassVar[str | None] = "surface"  # HLS: nadir-adjusted surface reflectance
    CUT_INTO_TILES: ClassVar[bool] = True
    LABELS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {
        "burn": ("mask", ("not burned", "burn scar")),
        "has_burn": ("class", ("unburned", "burned")),
    }
    MIN_EVENT_SHARE: ClassVar[float] = 0.01

    def __init__(self, root: str | Path, split: Split = "all") -> None:
        self.root = Path(root)
        folders = ["training", "validation"] if split == "all" else [split]
        self.scenes: list[tuple[Path, Path]] = []
        for folder in folders:
            for image in list_files(self.root / folder, "*_merged.tif", f"HLS burn scars {folder}"):
                mask = image.with_name(image.name.removesuffix("_merged.tif") + ".mask.tif")
                if not mask.is_file():
                    masks = len(list((self.root / folder).glob("*.mask.tif")))
                    raise DatasetLayoutError(f"{image}: expected its mask {mask.name} beside it; it is missing "
                                             f"({self.root / folder} holds {masks} *.mask.tif files)")
                self.scenes.append((image, mask))

    def derive(self, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``has_burn`` from the (tile's) mask: at least ``MIN_EVENT_SHARE`` of the valid pixels."""
        mask = labels["burn"]
        share = float((mask == 1).sum()) / max(int((mask >= 0).sum()), 1)
        return {**labels, "has_burn": torch.tensor(int(share >= self.MIN_EVENT_SHARE))}

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Sample:
        image, mask_path = self.scenes[index]
        stored = read_raster(image, count=6)
        stored[stored == _FILL] = np.nan
        reflectance = to_physical(stored, self.CANONICAL["merged"], scale=1.0)
        label = read_raster(mask_path, count=1)[0]
        if label.shape != reflectance.shape[1:]:
            raise DatasetLayoutError(f"{mask_path}: mask {label.shape} differs from the scene's {reflectance.shape[1:]}")
        mask = np.where(np.isfinite(label), label, -1).astype(np.int64)
        if bad := sorted(set(np.unique(mask).tolist()) - {-1, 0, 1}):
            raise DatasetLayoutError(f"{mask_path}: expected labels -1, 0, 1, found also {bad}")
        labels = self.derive({"burn": torch.from_numpy(mask)})
        name = image.name.removesuffix("_merged.tif")
        return Sample(self.group(self.named(reflectance, self.CANONICAL["merged"]), self.modalities()), labels, name)

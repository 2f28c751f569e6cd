"""EuroSAT-MS: 27,000 Sentinel-2 chips of 64 x 64 px, all 13 bands, in one folder per class.

Layout (EuroSATallBands.zip of github.com/phelber/EuroSAT, as torchgeo's ``EuroSAT`` reads it:
``base_dir = ds/images/remote_sensing/otherDatasets/sentinel_2/tif``, files
``<Class>/<Class>_<n>.tif``, band order ``all_band_names`` = B01-B08, B8A, B09-B12)::

    ROOT/ds/images/remote_sensing/otherDatasets/sentinel_2/tif/AnnualCrop/AnnualCrop_1.tif   13 bands uint16 DN
    ...                                                       /SeaLake/SeaLake_3000.tif

The loader also accepts the class folders directly under ``ROOT`` (an unpacked copy without the
nested path). Values are L1C reflectance x 10000; of the model's modalities it covers RGB,
RED_EDGE, NIR and SWIR. Label: ``tile_class``, the index of the class folder in ``CLASSES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from training.data.base import DatasetLayoutError, RealDataset, Sample, read_raster, to_physical

__all__ = ["EUROSAT_CLASSES", "EuroSAT"]

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)
_NESTED = Path("ds/images/remote_sensing/otherDatasets/sentinel_2/tif")


class EuroSAT(RealDataset):
    """EuroSAT-MS land-cover chips, one class folder each."""

    name: ClassVar[str] = "eurosat"
    FILE_BANDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "tif": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"),
    }
    CHIP_SIZE: ClassVar[int] = 64
    PIXEL_SIZE_M: ClassVar[float] = 10.0  # 64 x 64 px, 640 m a side (Helber et al. 2019)
    REFLECTANCE: ClassVar[str | None] = "top-of-atmosphere"  # EuroSAT-MS: Level-1C, all 13 bands
    LABELS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {"tile_class": ("class", EUROSAT_CLASSES)}

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        base = self.root / _NESTED if (self.root / _NESTED).is_dir() else self.root
        present = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        if missing := [c for c in EUROSAT_CLASSES if c not in present]:
            raise DatasetLayoutError(
                f"EuroSAT-MS: expected the 10 class folders ({', '.join(EUROSAT_CLASSES)}) in {self.root / _NESTED} "
                f"or {self.root}; {base} holds {len(present)} folders, missing {', '.join(missing)}"
            )
        self.items: list[tuple[Path, int]] = []
        for label, cls in enumerate(EUROSAT_CLASSES):
            files = sorted(base.glob(f"{cls}/{cls}_*.tif"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
            if not files:
                raise DatasetLayoutError(f"EuroSAT-MS: expected files {cls}_<n>.tif in {base / cls}, found 0")
            self.items += [(f, label) for f in files]
        self.base = base

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.items[index]
        reflectance = to_physical(read_raster(path, count=13), self.CANONICAL["tif"])
        values = self.named(reflectance, self.CANONICAL["tif"])
        return Sample(self.group(values, self.modalities()), {"tile_class": torch.tensor(label)}, path.stem)

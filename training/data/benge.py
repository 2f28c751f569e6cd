"""ben-ge and ben-ge-8k: BigEarthNet Sentinel-1/2 patches with Copernicus DEM and ESA WorldCover (the paper's data).

Layout (ben-ge README, github.com/HSG-AIML/ben-ge, "Data Modalities and Products"; the file names
of the S1/S2 arrays as the ben-ge authors' own loaders read them, e.g. ``BenGeS._load_sentinel_2_image``
in their remote_sensing_core package)::

    ROOT/ben-ge-8k_meta.csv              patch_id, patch_id_s1, ... (ben-ge_meta.csv for the full set)
    ROOT/ben-ge-8k_esaworldcover.csv     patch_id + per-class WorldCover fractions (the patch index)
    ROOT/sentinel-2/**/<patch_id>_all_bands.npy     (12, 120, 120) L2A DN: B01-B08, B8A, B09, B11, B12
    ROOT/sentinel-1/**/<patch_id_s1>_all_bands.npy  (2, 120, 120) backscatter in dB: VV, VH
    ROOT/glo-30_dem/**/<patch_id>_dem.tif           one band, 16-bit integer metres above sea level
    ROOT/esaworldcover/**/<patch_id>_esaworldcover.tif  one band, uint8 WorldCover codes (10 ... 100)

Labels: ``landcover`` is the WorldCover map as class indices (-1 where the code is 0 or unknown),
``tile_class`` the majority class of the patch (the paper's land-cover classification) and
``multilabel`` a 0/1 vector of the classes covering more than ``multilabel_threshold`` of the
patch (0.3 as in the authors' loader, so at most three). Both tile labels are computed from the
map itself, so they agree with the segmentation label; the CSV's fractions are the same pixel
fractions and serve as the patch index.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from training.data.base import DatasetLayoutError, RealDataset, Sample, list_files, read_raster, to_physical

__all__ = ["WORLDCOVER_CLASSES", "WORLDCOVER_CODES", "BenGe"]

#: ESA WorldCover v200 legend (Product User Manual, p. 15): code -> class, in code order.
WORLDCOVER_CODES: dict[int, str] = {
    10: "tree cover", 20: "shrubland", 30: "grassland", 40: "cropland", 50: "built-up",
    60: "bare / sparse vegetation", 70: "snow and ice", 80: "permanent water bodies",
    90: "herbaceous wetland", 95: "mangroves", 100: "moss and lichen",
}
WORLDCOVER_CLASSES: tuple[str, ...] = tuple(WORLDCOVER_CODES.values())
_CODE_TO_INDEX = np.full(256, -1, dtype=np.int64)
for _i, _code in enumerate(WORLDCOVER_CODES):
    _CODE_TO_INDEX[_code] = _i


class BenGe(RealDataset):
    """ben-ge / ben-ge-8k patches: SAR, the optical modalities and ELE, with WorldCover labels."""

    name: ClassVar[str] = "ben-ge"
    FILE_BANDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "sentinel-2": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
        "sentinel-1": ("VV", "VH"),
        "glo-30_dem": ("DEM",),
    }
    CHIP_SIZE: ClassVar[int] = 120
    PIXEL_SIZE_M: ClassVar[float] = 10.0  # BigEarthNet's 20 and 60 m bands upsampled to 10 m
    REFLECTANCE: ClassVar[str | None] = "surface"  # BigEarthNet: Level-2A (sen2cor)
    BACKSCATTER: ClassVar[str | None] = "sigma0"  # BigEarthNet-S1: SNAP's calibration to sigma0, in dB
    LABELS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {
        "tile_class": ("class", WORLDCOVER_CLASSES),
        "landcover": ("mask", WORLDCOVER_CLASSES),
        "multilabel": ("multilabel", WORLDCOVER_CLASSES),
    }

    def __init__(self, root: str | Path, multilabel_threshold: float = 0.3) -> None:
        self.root = Path(root)
        self.multilabel_threshold = multilabel_threshold
        index_csv = self._one_csv("*_esaworldcover.csv", "the WorldCover patch index")
        meta_csv = self._one_csv("*_meta.csv", "the meta data (patch_id -> patch_id_s1)")
        self.patches = [row["patch_id"] for row in _rows(index_csv, {"patch_id"})]
        s1_of = {row["patch_id"]: row["patch_id_s1"] for row in _rows(meta_csv, {"patch_id", "patch_id_s1"})}
        if missing := [p for p in self.patches if p not in s1_of]:
            raise DatasetLayoutError(f"{meta_csv}: no patch_id_s1 for {len(missing)} of the {len(self.patches)} "
                                     f"patches of {index_csv}, e.g. {missing[0]}")
        self.s1_of = s1_of
        self.files = {
            "sentinel-2": self._index("sentinel-2", "*_all_bands.npy", "_all_bands.npy"),
            "sentinel-1": self._index("sentinel-1", "*_all_bands.npy", "_all_bands.npy"),
            "glo-30_dem": self._index("glo-30_dem", "*_dem.tif", "_dem.tif"),
            "esaworldcover": self._index("esaworldcover", "*_esaworldcover.tif", "_esaworldcover.tif"),
        }
        for kind, key_of in (("sentinel-2", None), ("sentinel-1", s1_of), ("glo-30_dem", None), ("esaworldcover", None)):
            keys = [key_of[p] if key_of else p for p in self.patches]
            if absent := [k for k in keys if k not in self.files[kind]]:
                raise DatasetLayoutError(
                    f"{self.root / kind}: {len(absent)} of the {len(keys)} patches listed in {index_csv.name} have no file "
                    f"there (e.g. {absent[0]}); found {len(self.files[kind])} files"
                )

    def _one_csv(self, pattern: str, what: str) -> Path:
        found = sorted(self.root.glob(pattern)) if self.root.is_dir() else []
        if len(found) != 1:
            raise DatasetLayoutError(
                f"{what}: expected one file matching {pattern!r} in {self.root} (e.g. ben-ge-8k{pattern[1:]}), "
                f"found {len(found)}{': ' + ', '.join(p.name for p in found) if found else ''}"
            )
        return found[0]

    def _index(self, folder: str, pattern: str, suffix: str) -> dict[str, Path]:
        files = list_files(self.root / folder, pattern, f"ben-ge {folder}")
        return {p.name[: -len(suffix)]: p for p in files}

    def __len__(self) -> int:
        return len(self.patches)

    def _array(self, kind: str, key: str) -> np.ndarray:
        path = self.files[kind][key]
        data = np.load(path)
        bands = len(self.FILE_BANDS[kind])
        if data.ndim != 3 or data.shape[0] != bands:
            raise DatasetLayoutError(f"{path}: expected an array of shape ({bands}, H, W), found {data.shape}")
        return data.astype(np.float32)

    def __getitem__(self, index: int) -> Sample:
        patch = self.patches[index]
        s2 = to_physical(self._array("sentinel-2", patch), self.CANONICAL["sentinel-2"])
        s1 = self._array("sentinel-1", self.s1_of[patch])  # already dB
        dem = read_raster(self.files["glo-30_dem"][patch], count=1)  # metres
        codes = read_raster(self.files["esaworldcover"][patch], count=1)[0]
        values = {**self.named(s2, self.CANONICAL["sentinel-2"]), **self.named(s1, self.CANONICAL["sentinel-1"]),
                  "DEM": dem[0]}
        shapes = {b: v.shape for b, v in values.items()} | {"esaworldcover": codes.shape}
        if len(set(shapes.values())) != 1:
            raise DatasetLayoutError(f"patch {patch}: the modalities differ in size: {shapes}")
        landcover = _CODE_TO_INDEX[np.nan_to_num(codes, nan=0).astype(np.int64).clip(0, 255)]
        labels = self.derive({"landcover": torch.from_numpy(landcover)})
        return Sample(self.group(values, self.modalities()), labels, patch)

    def derive(self, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Majority class and multi-label vector from the (tile's) WorldCover map."""
        landcover = labels["landcover"]
        counts = torch.bincount(landcover[landcover >= 0].flatten(), minlength=len(WORLDCOVER_CLASSES))
        fractions = counts.double() / max(int(counts.sum()), 1)
        return {**labels, "tile_class": counts.argmax(), "multilabel": (fractions > self.multilabel_threshold).float()}


def _rows(path: Path, required: set[str]) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        if not required <= columns:
            raise DatasetLayoutError(f"{path}: expected columns {sorted(required)}, found {sorted(columns)}")
        rows = list(reader)
    if not rows:
        raise DatasetLayoutError(f"{path}: expected one row per patch, found 0 rows")
    return rows

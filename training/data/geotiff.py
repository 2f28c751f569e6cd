"""GeoTIFF I/O for training data: synthetic scenes written as GeoTIFFs, and a reader for folders of chips.

Bands are identified by name, never by position: a writer sets every band description to its
canonical name, and the reader resolves descriptions (or band tags, or names the caller gives)
through the band vocabulary. Stored values follow the band table, ``physical = stored * scale +
offset``, so Sentinel-2 is stored as reflectance x 10000 like L2A products.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch

from mapex_serve.atomic import atomic_path
from mapex_serve.bands import BANDS, MODALITIES, modalities_covered, resolve_bands, resolve_modality
from mapex_serve.errors import MapexError
from mapex_serve.ground import ground_pixel_size
from mapex_serve.rasters import BandNamesMissingError, band_names, scale_offset
from mapex_serve.scene_reader import Grid
from training.data.synthetic import LANDCOVER_CLASSES, Scene

__all__ = [
    "BandNamesMissingError",
    "ChipFolder",
    "ChipFolderError",
    "LabelsNotFoundError",
    "read_geotiff",
    "write_scene_geotiff",
]



class ChipFolderError(MapexError, ValueError):
    """A chip folder whose labels or chips do not fit what was asked of it."""


class LabelsNotFoundError(MapexError, FileNotFoundError):
    """A chip folder without its labels CSV."""


def write_scene_geotiff(
    scene: Scene,
    path: str | Path,
    bands: Sequence[str],
    *,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500000.0, 5000000.0),
    nodata: float | None = None,
) -> Path:
    """Write ``bands`` of a scene (any accepted names) to ``path``; returns the path.

    S2-only files are uint16 DN (reflectance x 10000); anything with SAR or DEM is float32. The
    file appears complete or not at all: it is written next to ``path`` and renamed into place.
    ``nodata`` is in stored units; stored pixels equal to it read back as NaN.
    """
    names = resolve_bands(bands)
    path = Path(path)
    stored = np.stack([(scene.bands[b] - BANDS[b].offset) / BANDS[b].scale for b in names])
    if all(BANDS[b].sensor == "S2" for b in names):
        stored, dtype = np.clip(np.rint(stored), 0, 65535).astype(np.uint16), "uint16"
    else:
        stored, dtype = stored.astype(np.float32), "float32"
    _, height, width = stored.shape
    block = min(256, -(-max(height, width) // 16) * 16)  # GeoTIFF tiles are multiples of 16
    profile = dict(
        driver="GTiff", width=width, height=height, count=len(names), dtype=dtype, crs=crs, nodata=nodata,
        transform=rasterio.Affine(scene.pixel_size, 0.0, origin[0], 0.0, -scene.pixel_size, origin[1]),
        tiled=True, blockxsize=block, blockysize=block, compress="deflate",
    )
    with atomic_path(path, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(stored)
        for i, b in enumerate(names, start=1):
            dst.set_band_description(i, b)
            dst.set_band_unit(i, BANDS[b].unit)
        dst.scales = tuple(BANDS[b].scale for b in names)
        dst.offsets = tuple(BANDS[b].offset for b in names)
        dst.update_tags(SOURCE="synthetic scene (training.data.synthetic), not real imagery")
    return path


def read_geotiff(path: str | Path, bands: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read every band of a GeoTIFF as canonical name -> (H, W) float32 in physical units.

    Names come from ``bands`` when given (one per band, overriding the file), else from the band
    descriptions or name tags. Values are ``stored * scale + offset`` with the band table's scale
    and offset, unless the file carries its own (GDAL scale/offset metadata); nodata and masked
    pixels are NaN. The profile holds crs, transform, nodata (stored units), width and height.
    """
    with rasterio.open(path) as src:
        try:
            names = band_names(src, bands)
        except BandNamesMissingError as e:
            raise BandNamesMissingError(f"{path}: {e}") from None
        stored = src.read(masked=True).astype(np.float32)
        values: dict[str, np.ndarray] = {}
        for i, b in enumerate(names):
            scale, offset = scale_offset(src, i + 1, b)
            values[b] = (stored[i] * np.float32(scale) + np.float32(offset)).filled(np.nan)
        profile = {"crs": src.crs, "transform": src.transform, "nodata": src.nodata,
                   "width": src.width, "height": src.height}
    return values, profile


class ChipFolder(torch.utils.data.Dataset):
    """A folder of multi-band GeoTIFF chips (bands named) with a CSV of labels, columns ``file,label``.

    A label is a class name from ``classes`` or its integer index. Each item is modality ->
    (C, H, W) float32 in physical units, for the requested modalities or, when none are requested,
    for every modality the chip fully covers, and the label index.
    """

    def __init__(
        self,
        root: str | Path,
        modalities: Sequence[str] | None = None,
        labels: str = "labels.csv",
        classes: Sequence[str] = LANDCOVER_CLASSES,
    ) -> None:
        self.root = Path(root)
        self.modalities = None if modalities is None else tuple(resolve_modality(m) for m in modalities)
        self.classes = tuple(classes)
        csv_path = self.root / labels
        if not csv_path.is_file():
            raise LabelsNotFoundError(
                f"no labels file at {csv_path}; a chip folder needs a CSV with columns 'file,label' "
                f"(file relative to {self.root}, label a class name or index)"
            )
        with csv_path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if not {"file", "label"} <= set(reader.fieldnames or ()):
                raise ChipFolderError(f"{csv_path} has columns {reader.fieldnames}; expected 'file' and 'label'")
            rows = [(row["file"].strip(), self._label_index(row["label"], csv_path)) for row in reader]
        missing = [f for f, _ in rows if not (self.root / f).is_file()]
        if missing:
            raise ChipFolderError(f"{csv_path} lists chips that are not in {self.root}: {missing[:5]}")
        self.items = rows

    def _label_index(self, label: str, csv_path: Path) -> int:
        """Class name (case-insensitive) or integer index -> index into ``classes``."""
        label = label.strip()
        lowered = [c.lower() for c in self.classes]
        if label.lower() in lowered:
            return lowered.index(label.lower())
        if label.lstrip("-").isdigit() and 0 <= int(label) < len(self.classes):
            return int(label)
        raise ChipFolderError(
            f"{csv_path}: unknown label {label!r}; accepted: a class name from {list(self.classes)} "
            f"or an index 0..{len(self.classes) - 1}"
        )

    def __len__(self) -> int:
        return len(self.items)

    def pixel_size_m(self) -> float | None:
        """The first chip's pixel size on the ground (m; the mean of its axes), None without a CRS: a folder of
        chips cut from one kind of product shares it."""
        if not self.items:
            return None
        with rasterio.open(self.root / self.items[0][0]) as ds:
            size = ground_pixel_size(Grid.of(ds))
        return None if size is None else round(math.sqrt(size[0] * size[1]), 3)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], int]:
        file, label = self.items[i]
        bands, _ = read_geotiff(self.root / file)
        wanted = self.modalities or modalities_covered(list(bands))
        if not wanted:
            raise ChipFolderError(
                f"{self.root / file} covers no whole modality: it has bands {list(bands)}; modalities: {dict(MODALITIES)}"
            )
        for m in wanted:
            if not set(MODALITIES[m]) <= set(bands):
                raise ChipFolderError(
                    f"{self.root / file} lacks modality {m}: it has bands {list(bands)}, {m} needs {list(MODALITIES[m])}"
                )
        return {m: torch.from_numpy(np.stack([bands[b] for b in MODALITIES[m]])) for m in wanted}, label

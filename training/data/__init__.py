"""Training data: seeded synthetic scenes (not real imagery), GeoTIFF chips, and loaders of real data sets.

``DATASETS`` maps each real data set's command-line name to its loader (one file each; see
their docstrings for the documented layouts they read).
"""

from training.data.base import DatasetLayoutError, RealDataset, Sample
from training.data.benge import WORLDCOVER_CLASSES, BenGe
from training.data.eurosat import EUROSAT_CLASSES, EuroSAT
from training.data.geotiff import (
    BandNamesMissingError,
    ChipFolder,
    ChipFolderError,
    LabelsNotFoundError,
    read_geotiff,
    write_scene_geotiff,
)
from training.data.hls_burn_scars import HLSBurnScars
from training.data.sen1floods11 import Sen1Floods11
from training.data.synthetic import (
    LANDCOVER_CLASSES,
    S2_BANDS,
    Scene,
    SceneConfig,
    SyntheticBatch,
    generate_batch,
    generate_scene,
    mosaic,
    smooth_field,
)
from training.data.tiles import FittedTiles, TileSet, collate, fit_sample

#: Real data sets by their command-line name (ben-ge-8k is ben-ge's 8,000-patch release, same layout).
DATASETS: dict[str, type[RealDataset]] = {
    "ben-ge": BenGe, "ben-ge-8k": BenGe, "sen1floods11": Sen1Floods11, "hls-burn-scars": HLSBurnScars, "eurosat": EuroSAT,
}


#: What the synthetic scenes are calibrated to: Level-2A surface reflectance, and sigma0 as an IW GRDH product shows it.
_SYNTHETIC = {"REFLECTANCE": "surface", "BACKSCATTER": "sigma0"}


def learned_reflectance(data: str | None) -> str | None:
    """The Sentinel-2 reflectance a model pre-trained on ``data`` (a checkpoint's) learned: the synthetic scenes'
    and a data set's own; a folder of chips says nothing of it."""
    return _learned(data, "REFLECTANCE")


def learned_backscatter(data: str | None) -> str | None:
    """The Sentinel-1 backscatter (sigma0, gamma0) a model pre-trained on ``data`` learned, as
    ``learned_reflectance``."""
    return _learned(data, "BACKSCATTER")


def _learned(data: str | None, what: str) -> str | None:
    if data == "synthetic":
        return _SYNTHETIC[what]
    return getattr(DATASETS[data], what) if data in DATASETS else None


__all__ = [
    "DATASETS",
    "EUROSAT_CLASSES",
    "LANDCOVER_CLASSES",
    "WORLDCOVER_CLASSES",
    "BenGe",
    "DatasetLayoutError",
    "EuroSAT",
    "FittedTiles",
    "HLSBurnScars",
    "RealDataset",
    "Sample",
    "Sen1Floods11",
    "TileSet",
    "collate",
    "fit_sample",
    "S2_BANDS",
    "BandNamesMissingError",
    "ChipFolder",
    "ChipFolderError",
    "LabelsNotFoundError",
    "Scene",
    "SceneConfig",
    "SyntheticBatch",
    "generate_batch",
    "generate_scene",
    "learned_backscatter",
    "learned_reflectance",
    "mosaic",
    "read_geotiff",
    "smooth_field",
    "write_scene_geotiff",
]

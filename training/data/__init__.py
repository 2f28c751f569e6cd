"""Training data: seeded synthetic scenes (not real imagery) and GeoTIFF chips on disk."""

from training.data.geotiff import (
    BandNamesMissingError,
    ChipFolder,
    ChipFolderError,
    LabelsNotFoundError,
    read_geotiff,
    write_scene_geotiff,
)
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

__all__ = [
    "LANDCOVER_CLASSES",
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
    "mosaic",
    "read_geotiff",
    "smooth_field",
    "write_scene_geotiff",
]

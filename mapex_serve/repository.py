"""The model repository: the on-disk contract between the exporter and the service.

    <repo>/<specialist>/<version>/model.onnx
    <repo>/<specialist>/<version>/manifest.json
    <repo>/<specialist>/<version>/engines/<TensorRT engines>

The manifest schema lives here (owned by the service, imported by the exporter). Every artefact
is listed with its sha256, and an entry whose files disagree with its manifest is refused, as
Triton refuses a model whose config and file disagree.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mapex_serve.bands import MODALITIES, resolve_band, resolve_modality
from mapex_serve.errors import MapexError

__all__ = [
    "MANIFEST_NAME",
    "Artefact",
    "BandSpec",
    "EngineEntry",
    "ExpertsKept",
    "Manifest",
    "ManifestError",
    "ParameterCounts",
    "TensorSpec",
    "load_manifest",
    "read_verified",
    "scan_repository",
    "sha256_file",
    "verify_entry",
]

MANIFEST_NAME = "manifest.json"


class ManifestError(MapexError, ValueError):
    """A repository entry whose manifest is missing, invalid, or disagrees with its files."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BandSpec(_Model):
    """One input band: ``physical = stored * scale + offset``; mean/std are the model's normalisation."""

    name: str
    unit: str
    scale: float = 1.0
    offset: float = 0.0
    mean: float
    std: float = Field(gt=0)

    @field_validator("name")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return resolve_band(v)


class TensorSpec(_Model):
    """An engine tensor; -1 marks the dynamic batch axis."""

    name: str
    dtype: Literal["float32", "float16"] = "float32"
    shape: list[int]


class ExpertsKept(_Model):
    """What pruning kept in one MoE block, and the share of the calibration tokens those experts received."""

    block: int
    experts: list[int]
    of: int
    coverage: float = Field(ge=0, le=1)
    #: How the engine computes the block: ``mlp`` (one expert left: a plain feed-forward layer),
    #: ``sparse`` (each token runs only the experts it chose), ``dense`` (every kept expert on
    #: every token, masked by the gates). None: not recorded (entries built before it was).
    form: Literal["mlp", "sparse", "dense"] | None = None


class ParameterCounts(_Model):
    full: int = Field(gt=0)
    pruned: int = Field(gt=0)

    @property
    def ratio(self) -> float:
        return self.pruned / self.full


class Artefact(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class EngineEntry(_Model):
    """A native TensorRT engine built from ``model.onnx`` for one GPU type."""

    path: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    precision: Literal["fp32", "fp16"]
    hardware_compatibility: str = "none"
    min_batch: int
    opt_batch: int
    max_batch: int


class Manifest(_Model):
    """Everything the service needs to route a GeoTIFF to this specialist and feed its engine."""

    schema_version: Literal[1] = 1
    name: str
    version: int = Field(ge=1)
    task: str
    head: Literal["class", "mask"]
    classes: list[str] = Field(min_length=2)
    modalities: list[str] = Field(min_length=1)
    #: Input bands in the order the engine takes them (modality by modality).
    bands: list[BandSpec]
    tile_size: int = Field(gt=0)
    #: The size on the ground of the pixels the model learned from (m): the data set's, times its resizing to the
    #: tile. None: not known (a model pre-trained on synthetic scenes, which have no scale). The service refuses a
    #: scene far from it unless told to resample or not (``mapex_serve.ground``).
    pixel_size_m: float | None = Field(None, gt=0)
    #: The Sentinel-2 reflectance the model learned: ``surface`` (Level-2A, and the synthetic scenes, calibrated to
    #: it) or ``top-of-atmosphere`` (Level-1C: EuroSAT, Sen1Floods11). None: not known, or no optical band. The
    #: service refuses files that say they are the other (``mapex_serve.reflectance``).
    reflectance: Literal["surface", "top-of-atmosphere"] | None = None
    #: The Sentinel-1 backscatter the model learned: ``sigma0`` (Earth Engine's and BigEarthNet's, and the synthetic
    #: scenes') or ``gamma0`` (radiometrically terrain-corrected products). None: not known, or no radar band. The
    #: service refuses files that say they are the other (``mapex_serve.backscatter``).
    backscatter: Literal["sigma0", "gamma0"] | None = None
    #: ``in-graph``: the engine applies mean/std itself; feed it physical values.
    normalisation: Literal["in-graph"] = "in-graph"
    input: TensorSpec
    output: TensorSpec
    experts_kept: list[ExpertsKept]
    parameters: ParameterCounts
    opset: int
    artefacts: dict[str, Artefact]
    engines: list[EngineEntry] = []
    source_checkpoint_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: datetime
    data: str = "synthetic"

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: list[str]) -> list[str]:
        return [resolve_modality(m) for m in v]

    def model_post_init(self, _context: object) -> None:
        expected = [b for m in self.modalities for b in MODALITIES[m]]
        if [b.name for b in self.bands] != expected:
            raise ValueError(f"bands {[b.name for b in self.bands]} do not match modalities {self.modalities}: {expected}")
        if "model.onnx" not in self.artefacts:
            raise ValueError("artefacts must list model.onnx")
        for rel in [*self.artefacts, *(e.path for e in self.engines)]:
            _check_inside(rel)
        if unlisted := [e.path for e in self.engines if e.path not in self.artefacts]:
            raise ValueError(f"engines {unlisted} are not among the hashed artefacts; every file the service loads "
                             f"must be listed with its sha256")

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]


def _check_inside(rel: str) -> None:
    """An artefact path is relative and stays in its entry folder: no absolute paths, no ``..``, no backslashes."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or "\\" in rel or ".." in p.parts or ":" in rel:
        raise ValueError(f"artefact path {rel!r} leaves its entry folder; artefacts are relative paths inside it")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(entry: str | Path) -> Manifest:
    """Parse ``entry/manifest.json``; a missing or invalid file raises ``ManifestError``."""
    path = Path(entry) / MANIFEST_NAME
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as e:
        raise ManifestError(f"{path} is missing") from e
    except (ValidationError, ValueError) as e:
        raise ManifestError(f"{path} is not a valid manifest: {e}") from e


def verify_entry(entry: str | Path) -> Manifest:
    """The entry's manifest, after checking that every artefact exists and matches its sha256."""
    entry = Path(entry)
    manifest = load_manifest(entry)
    for rel, artefact in manifest.artefacts.items():
        path = entry / rel
        if path.is_symlink() or not path.resolve().is_relative_to(entry.resolve()):
            raise ManifestError(f"{entry}: artefact {rel} is a link or leaves the entry folder")
        if not path.is_file():
            raise ManifestError(f"{entry}: artefact {rel} listed in the manifest is missing")
        if (actual := sha256_file(path)) != artefact.sha256:
            raise ManifestError(f"{entry}: {rel} has sha256 {actual}, the manifest says {artefact.sha256}")
    return manifest


def read_verified(entry: str | Path, manifest: Manifest, rel: str) -> bytes:
    """The bytes of artefact ``rel``, read once and checked against the manifest: what is hashed is what is loaded."""
    if rel not in manifest.artefacts:
        raise ManifestError(f"{entry}: {rel} is not among the manifest's hashed artefacts; it is not loaded")
    path = Path(entry) / rel
    if path.is_symlink():
        raise ManifestError(f"{entry}: artefact {rel} is a link; artefacts are plain files in their entry folder")
    data = path.read_bytes()
    if (actual := hashlib.sha256(data).hexdigest()) != manifest.artefacts[rel].sha256:
        raise ManifestError(f"{entry}: {rel} has sha256 {actual}, the manifest says {manifest.artefacts[rel].sha256}")
    return data


def scan_repository(root: str | Path) -> list[Path]:
    """Every ``<specialist>/<version>`` folder holding a manifest, sorted by name then numeric version."""
    root = Path(root)
    entries = [p.parent for p in root.glob(f"*/*/{MANIFEST_NAME}") if p.parent.name.isdigit()]
    return sorted(entries, key=lambda p: (p.parent.name, int(p.name)))

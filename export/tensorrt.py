"""TensorRT engines for a specialist's ``model.onnx``, one per GPU type and TensorRT version.

A serialized TensorRT engine runs only on the GPU type and the exact TensorRT version that built
it (unless it was built hardware-compatible), so engines are built on the serving machine's GPU,
named after what they depend on, listed in the manifest as ``EngineEntry`` records, and picked at
start-up by ``find_engine``; a machine with no matching engine falls back to ``model.onnx``.

Written against the TensorRT 10 Python API (``tensorrt>=10,<11``; 11 removes the FP16 builder
flag). ``tensorrt`` and ``torch`` are imported lazily: this module is imported by code that has
neither (the service, the tests on CPU machines).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, get_args

from mapex_serve.atomic import atomic_path
from mapex_serve.errors import MapexError
from mapex_serve.repository import EngineEntry

__all__ = [
    "EngineBuildError",
    "EngineProfile",
    "GpuInfo",
    "HardwareCompatibility",
    "Precision",
    "TensorRTUnavailable",
    "build_engine",
    "engine_filename",
    "find_engine",
    "tensorrt_version",
]

log = logging.getLogger(__name__)

HardwareCompatibility = Literal["none", "ampere_plus", "same_compute_capability"]
Precision = Literal["fp16", "fp32"]

#: Our names for TensorRT's ``HardwareCompatibilityLevel`` members.
_HC_LEVELS: dict[str, str] = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",  # TensorRT >= 10.9
}
_AMPERE = (8, 0)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CC = re.compile(r"^(\d+)\.(\d+)$")

_INSTALL_HINT = (
    "install it with `pip install .[gpu]` (tensorrt>=10,<11) on a machine with an NVIDIA GPU and driver; "
    "without it the specialist still runs from model.onnx with onnxruntime"
)


class TensorRTUnavailable(MapexError, RuntimeError):
    """TensorRT cannot be imported here, or is a version this builder was not written for."""


class EngineBuildError(MapexError, RuntimeError):
    """TensorRT could not parse the ONNX model or build an engine from it."""


@dataclass(frozen=True)
class EngineProfile:
    """The batch sizes an engine accepts (min..max) and the one TensorRT tunes its kernels for (opt)."""

    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 64

    def __post_init__(self) -> None:
        batches = (self.min_batch, self.opt_batch, self.max_batch)
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in batches) or not (
            1 <= self.min_batch <= self.opt_batch <= self.max_batch
        ):
            raise ValueError(
                f"engine profile batches must be integers with 1 <= min <= opt <= max, "
                f"got min={self.min_batch!r}, opt={self.opt_batch!r}, max={self.max_batch!r}"
            )

    def shapes(self, input_shape: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Full NCHW (min, opt, max) shapes for one input of per-sample shape ``(C, H, W)``."""
        chw = tuple(input_shape)
        if len(chw) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in chw):
            raise ValueError(
                f"input_shape must be three positive integers (channels, height, width), got {input_shape!r}"
            )
        return (self.min_batch, *chw), (self.opt_batch, *chw), (self.max_batch, *chw)


@dataclass(frozen=True)
class GpuInfo:
    """A GPU type as engines depend on it: its name (``"NVIDIA H100 80GB HBM3"``) and compute capability (``"9.0"``)."""

    name: str
    compute_capability: str

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("GPU name must not be empty")
        if not _CC.match(self.compute_capability):
            raise ValueError(f"compute capability must look like '9.0' (major.minor), got {self.compute_capability!r}")

    @property
    def cc(self) -> tuple[int, int]:
        """The compute capability as ``(major, minor)``, for comparisons."""
        return _parse_cc(self.compute_capability)

    @classmethod
    def detect(cls) -> GpuInfo | None:
        """The current CUDA device as torch sees it; None without torch or without a GPU."""
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available():
            return None
        device = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(device)
        return cls(name=torch.cuda.get_device_name(device), compute_capability=f"{major}.{minor}")


def _parse_cc(cc: str) -> tuple[int, int]:
    match = _CC.match(cc)
    if match is None:
        raise ValueError(f"compute capability must look like '9.0' (major.minor), got {cc!r}")
    return int(match.group(1)), int(match.group(2))


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def _import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but its CUDA libraries are not
        raise TensorRTUnavailable(f"TensorRT is not importable here ({e}); {_INSTALL_HINT}") from e
    return tensorrt


def tensorrt_version() -> str | None:
    """``tensorrt.__version__``, or None when TensorRT cannot be imported here."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return str(tensorrt.__version__)


def _safe(part: str, fallback: str) -> str:
    return _UNSAFE.sub("-", part).strip("-.") or fallback


def engine_filename(
    gpu: GpuInfo,
    trt_version: str,
    precision: Precision,
    hardware_compatibility: HardwareCompatibility = "none",
) -> str:
    """The engine's file name, e.g. ``NVIDIA-H100-80GB-HBM3_sm90_trt10.3.0_fp16.engine``.

    Every part is reduced to ``[A-Za-z0-9._-]``. With hardware compatibility on, ``_hc-<level>`` goes
    before the extension: such an engine is not tied to one GPU type (``ampere_plus`` runs on any
    compute capability >= 8.0, ``same_compute_capability`` on any GPU of the build GPU's compute
    capability), and the GPU name in the file only records where it was built.
    """
    _check_choice(precision, get_args(Precision), "precision")
    _check_choice(hardware_compatibility, get_args(HardwareCompatibility), "hardware compatibility")
    major, minor = gpu.cc
    parts = [_safe(gpu.name, "gpu"), f"sm{major}{minor}", f"trt{_safe(trt_version, 'unknown')}", precision]
    if hardware_compatibility != "none":
        parts.append(f"hc-{hardware_compatibility}")
    return "_".join(parts) + ".engine"


def find_engine(
    entries: Sequence[EngineEntry], gpu: GpuInfo, trt_version: str, max_batch: int = 1
) -> EngineEntry | None:
    """The engine that can run on ``gpu`` with TensorRT ``trt_version`` and batches of ``max_batch``, or None.

    An engine's optimisation profile caps its batch: one built for fewer tiles than the service
    sends (``MAPEX_MAX_BATCH``) would fail every full batch, so it is passed over.

    Every engine needs the exact TensorRT version that built it. Preferred, in order: one built on
    this GPU type without hardware compatibility (fastest), one built on this GPU type with it, then a
    hardware-compatible one built elsewhere (``ampere_plus`` here on compute capability >= 8.0,
    ``same_compute_capability`` on the same compute capability). Ties go to the first listed.
    """
    best: tuple[int, EngineEntry] | None = None
    for entry in entries:
        if entry.tensorrt_version != trt_version or entry.max_batch < max_batch:
            continue
        rank = _rank(entry, gpu)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, entry)
    return None if best is None else best[1]


def _rank(entry: EngineEntry, gpu: GpuInfo) -> int | None:
    """0 best; None when the engine cannot run on ``gpu`` (TensorRT version already checked)."""
    same_type = entry.gpu_name == gpu.name and entry.compute_capability == gpu.compute_capability
    if same_type:
        return 0 if entry.hardware_compatibility == "none" else 1
    try:
        built_cc = _parse_cc(entry.compute_capability)
    except ValueError:
        return None
    if entry.hardware_compatibility == "ampere_plus" and gpu.cc >= _AMPERE:
        return 2
    if entry.hardware_compatibility == "same_compute_capability" and gpu.cc == built_cc:
        return 2
    return None


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    """A reader (or a crash) never sees a half-written engine or timing cache."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def build_engine(
    onnx_path: Path,
    engines_dir: Path,
    *,
    input_name: str,
    input_shape: tuple[int, int, int],
    gpu: GpuInfo,
    profile: EngineProfile = EngineProfile(),
    precision: Precision = "fp16",
    hardware_compatibility: HardwareCompatibility = "none",
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
) -> EngineEntry:
    """Build a TensorRT engine from ``onnx_path`` on the current GPU into ``engines_dir``.

    ``gpu`` must describe the GPU this process builds on (``GpuInfo.detect()``); it names the file and
    the manifest entry. FP16 falls back to FP32 with a warning where the GPU has no fast FP16; the
    returned entry records the precision actually used. ``timing_cache`` (one file per GPU type and
    TensorRT version is the useful granularity) is loaded when it exists and saved back after the
    build, so that rebuilds skip kernel timing. Engine and cache are written atomically. The entry's
    path is relative to ``engines_dir.parent`` (the repository entry folder): ``engines/<file>``.
    """
    onnx_path, engines_dir = Path(onnx_path), Path(engines_dir)
    timing_cache = None if timing_cache is None else Path(timing_cache)
    _check_choice(precision, get_args(Precision), "precision")
    _check_choice(hardware_compatibility, get_args(HardwareCompatibility), "hardware compatibility")
    min_shape, opt_shape, max_shape = profile.shapes(input_shape)
    if not workspace_gib > 0:
        raise ValueError(f"workspace_gib must be > 0, got {workspace_gib}")
    if hardware_compatibility == "ampere_plus" and gpu.cc < _AMPERE:
        raise ValueError(
            f"ampere_plus engines can only be built on compute capability >= 8.0; {gpu.name} is {gpu.compute_capability}"
        )
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} does not exist: export the specialist to ONNX first")

    trt = _import_tensorrt()
    version = str(trt.__version__)
    if version.split(".")[0] != "10":
        raise TensorRTUnavailable(f"this builder is written for TensorRT 10, found {version}; {_INSTALL_HINT}")
    detected = GpuInfo.detect()
    if detected is not None and detected != gpu:
        raise ValueError(f"gpu={gpu} but this process builds on {detected}; pass GpuInfo.detect()")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"TensorRT {version} could not parse {onnx_path} ({len(errors)} errors):\n  " + "\n  ".join(errors)
        )
    _check_network_input(network, input_name, input_shape)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    used: Precision = precision
    if precision == "fp16":
        if _has_fast_fp16(builder):
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            warnings.warn(f"{gpu.name} has no fast FP16; building an FP32 engine instead", stacklevel=2)
            used = "fp32"
    if hardware_compatibility != "none":
        level = getattr(trt.HardwareCompatibilityLevel, _HC_LEVELS[hardware_compatibility], None)
        if level is None:
            raise TensorRTUnavailable(
                f"TensorRT {version} has no {hardware_compatibility} hardware compatibility (added in 10.9); {_INSTALL_HINT}"
            )
        config.hardware_compatibility_level = level

    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, min_shape, opt_shape, max_shape)
    if config.add_optimization_profile(opt_profile) < 0:
        raise EngineBuildError(
            f"TensorRT rejected the profile {min_shape} / {opt_shape} / {max_shape} for {input_name!r}"
        )

    if timing_cache is not None:
        _attach_timing_cache(config, timing_cache)

    log.info("building a %s TensorRT %s engine for %s from %s", used, version, gpu.name, onnx_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT {version} failed to build an engine from {onnx_path}; its log (stderr) says why"
        )

    engines_dir.mkdir(parents=True, exist_ok=True)
    filename = engine_filename(gpu, version, used, hardware_compatibility)
    _write_atomic(engines_dir / filename, memoryview(serialized))
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(timing_cache, memoryview(config.get_timing_cache().serialize()))

    return EngineEntry(
        path=f"{engines_dir.name}/{filename}",
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        tensorrt_version=version,
        precision=used,
        hardware_compatibility=hardware_compatibility,
        min_batch=profile.min_batch,
        opt_batch=profile.opt_batch,
        max_batch=profile.max_batch,
    )


def _check_network_input(network: Any, input_name: str, input_shape: tuple[int, int, int]) -> None:
    """The parsed network must have ``input_name`` shaped ``(batch, *input_shape)``, batch symbolic."""
    inputs = {t.name: tuple(t.shape) for t in (network.get_input(i) for i in range(network.num_inputs))}
    if input_name not in inputs:
        raise ValueError(f"the ONNX model has no input {input_name!r}; its inputs are {sorted(inputs)}")
    actual = inputs[input_name]
    expected = ("batch", *input_shape)
    if len(actual) != 4 or any(a not in (-1, e) for a, e in zip(actual[1:], input_shape, strict=True)):
        raise ValueError(f"ONNX input {input_name!r} has shape {actual}, expected {expected}")
    if actual[0] != -1:
        raise ValueError(
            f"ONNX input {input_name!r} has a fixed batch of {actual[0]}; export with a symbolic batch axis"
        )


def _has_fast_fp16(builder: Any) -> bool:
    # Deprecated in TensorRT 10 (removed in 11) but still the builder's own answer for this GPU.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(builder.platform_has_fast_fp16)


def _attach_timing_cache(config: Any, path: Path) -> None:
    """Load ``path`` into the builder config, or start an empty cache when there is none or it does not fit."""
    blob = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(blob)
    except (RuntimeError, TypeError, ValueError):  # a truncated or foreign file
        cache = None
    if cache is not None and config.set_timing_cache(cache, False):
        if blob:
            log.info("timing cache %s loaded (%d bytes)", path, len(blob))
        return
    warnings.warn(
        f"timing cache {path} does not fit this TensorRT version or GPU; starting a new one (it will be overwritten)",
        stacklevel=3,
    )
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise EngineBuildError("TensorRT refused an empty timing cache")

"""One inference engine per specialist: an ONNX Runtime session, or a native TensorRT engine.

Which backend runs is decided once, by ``choose_backend``: a native TensorRT engine from the
manifest when ``tensorrt`` imports, a GPU is present and an engine was built for this GPU type and
TensorRT version; otherwise ONNX Runtime with the requested execution providers that this build
of onnxruntime offers (TensorRT EP -> CUDA EP -> CPU EP by default).

ONNX Runtime falls back to the CPU quietly when a GPU provider cannot start (a missing CUDA
library, no GPU in the container). The engine therefore logs what was requested, what is
available and what the session actually uses, and warns when they differ.

This module must not import torch (the service runs without it).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from mapex_serve.cores import service_cores
from mapex_serve.engine_cache import record_cache, verify_cache
from mapex_serve.errors import MapexError
from mapex_serve.repository import EngineEntry, Manifest, ManifestError, read_verified
from mapex_serve.settings import DEFAULT_PROVIDERS, Settings

__all__ = [
    "NATIVE_TENSORRT",
    "Backend",
    "Engine",
    "EngineInputError",
    "EngineThreads",
    "NativeTensorRTEngine",
    "choose_backend",
    "detect_gpu",
    "plan_threads",
]

log = logging.getLogger("mapex_serve.engine")

TRT_EP, CUDA_EP, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
#: ``Engine.provider`` when a native TensorRT engine runs (no ONNX Runtime provider involved).
NATIVE_TENSORRT = "TensorRT (native engine)"


class EngineInputError(MapexError, ValueError):
    """A batch whose shape or dtype is not what the specialist's engine takes."""


def detect_gpu() -> Any | None:
    """The first GPU as ``export.tensorrt.GpuInfo`` (via ``nvidia-smi``), or None when there is none.

    The service has no torch, so ``GpuInfo.detect()`` (which asks torch) is not used here.
    """
    from export.tensorrt import GpuInfo  # imports no torch at module level

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        name, cc = (part.strip() for part in out.strip().splitlines()[0].split(","))
        return GpuInfo(name=name, compute_capability=cc)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        log.warning("nvidia-smi is present but did not describe a GPU (%s); assuming none", e)
        return None


@dataclass(frozen=True)
class Backend:
    """What ``choose_backend`` decided: a native TensorRT engine, or ONNX Runtime with these providers."""

    kind: Literal["tensorrt", "onnxruntime"]
    providers: tuple[str, ...] = ()  # ONNX Runtime providers in order (empty for native TensorRT)
    engine: EngineEntry | None = None  # the manifest's engine (native TensorRT only)
    unavailable: tuple[str, ...] = ()  # requested providers this onnxruntime build does not offer
    reason: str = ""

    def describe(self) -> str:
        if self.kind == "tensorrt" and self.engine is not None:
            return f"native TensorRT engine {self.engine.path} ({self.reason})"
        return f"onnxruntime with {list(self.providers)} ({self.reason})"


def choose_backend(
    manifest: Manifest,
    gpu: Any | None,
    trt_version: str | None,
    available_providers: Sequence[str],
    requested: Sequence[str] = DEFAULT_PROVIDERS,
    max_batch: int = 1,
) -> Backend:
    """Pick the backend for ``manifest`` on this machine; pure, so that it is testable without a GPU.

    ``gpu`` is an ``export.tensorrt.GpuInfo`` (or None), ``trt_version`` the importable TensorRT's
    version (or None), ``available_providers`` what ``ort.get_available_providers()`` says and
    ``requested`` the settings' providers in order of preference and ``max_batch`` the largest batch
    the service sends. A native engine is used only when TensorRT is among the requested providers
    (leaving it out of the settings opts out of it) and its profile takes ``max_batch``.
    """
    from export.tensorrt import find_engine

    requested = list(requested)
    unavailable = tuple(p for p in requested if p not in available_providers)
    if TRT_EP in requested and gpu is not None and trt_version is not None and manifest.engines:
        engine = find_engine(manifest.engines, gpu, trt_version, max_batch)
        if engine is not None:
            return Backend("tensorrt", engine=engine, unavailable=unavailable,
                           reason=f"built for {gpu.name} with TensorRT {trt_version}")
    providers = tuple(p for p in requested if p in available_providers)
    if not providers:
        return Backend("onnxruntime", (CPU_EP,), unavailable=unavailable,
                       reason=f"none of the requested {requested} is available; falling back to {CPU_EP}")
    why = "the first requested provider that onnxruntime offers"
    if manifest.engines and TRT_EP in requested:
        why += "; no native engine matches " + (
            "(tensorrt not importable)" if trt_version is None else "(no GPU)" if gpu is None
            else f"{gpu.name} / TensorRT {trt_version} / batches of {max_batch}")
    return Backend("onnxruntime", providers, unavailable=unavailable, reason=why)


@dataclass(frozen=True)
class EngineThreads:
    """How an engine takes the cores: ``runners`` batches at once, each on ``intra_op`` ONNX Runtime threads."""

    runners: int
    intra_op: int | None  # None: onnxruntime's default


def plan_threads(runners: int | None, intra_op: int | None, on_cpu: bool, cores: int) -> EngineThreads:
    """Fill in what the settings leave unset (None).

    On the CPU the runs share ``cores``: runners x threads = cores, one thread a run by default,
    because one ONNX Runtime run of a small specialist keeps only 1.5 of 2 cores busy and two
    single-threaded runs at once did 1.6-2.1x the tiles a second (docs/performance.md). On a GPU the
    host's cores only feed the device: one runner unless asked.
    """
    if not on_cpu:
        return EngineThreads(runners or 1, intra_op)
    if runners is None:
        runners = max(cores // (intra_op or 1), 1)
    return EngineThreads(runners, intra_op or max(cores // runners, 1))


def _provider_options(provider: str, manifest: Manifest, settings: Settings) -> dict[str, Any]:
    if provider == TRT_EP:
        # Keyed by the model's hash too: ORT's own cache key does not cover the weights, so a rebuilt
        # entry with the same name and version would otherwise load a stale engine.
        digest = manifest.artefacts["model.onnx"].sha256[:16]
        cache = settings.engine_cache_dir / manifest.name / str(manifest.version) / digest
        cache.mkdir(parents=True, exist_ok=True)
        chw = "x".join(str(d) for d in manifest.input.shape[1:])
        name = manifest.input.name
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": True,
            # One profile for every batch size the batcher sends, or the EP rebuilds per new shape.
            "trt_profile_min_shapes": f"{name}:1x{chw}",
            "trt_profile_opt_shapes": f"{name}:{settings.max_batch}x{chw}",
            "trt_profile_max_shapes": f"{name}:{settings.max_batch}x{chw}",
        }
    return {}


@dataclass
class _Checked:
    """Manifest tensor specs resolved once."""

    input_name: str
    output_name: str
    sample_shape: tuple[int, ...]
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))


class Engine:
    """The engine of one repository entry: ``run`` takes ``(N, C, T, T)`` physical values, returns probabilities."""

    provider: str  # what actually runs: an onnxruntime provider name, or NATIVE_TENSORRT

    def __init__(
        self,
        entry: Path,
        manifest: Manifest,
        settings: Settings,
        *,
        gpu: Any | None = None,
        trt_version: str | None = None,
        detect: bool = True,
    ) -> None:
        """``gpu`` / ``trt_version`` are detected when ``detect`` (the default); pass them to override."""
        self.entry, self.manifest, self.settings = Path(entry), manifest, settings
        self.name = f"{manifest.name} v{manifest.version}"
        self._spec = _Checked(manifest.input.name, manifest.output.name, tuple(manifest.input.shape[1:]),
                              np.dtype(manifest.input.dtype))
        available = list(ort.get_available_providers())
        if detect and trt_version is None:
            from export.tensorrt import tensorrt_version

            trt_version = tensorrt_version()
        if detect and gpu is None and trt_version is not None and manifest.engines:
            gpu = detect_gpu()  # only needed, and only asked, when a native engine could run
        self.backend = choose_backend(manifest, gpu, trt_version, available, settings.providers, settings.max_batch)
        self._native: NativeTensorRTEngine | None = None
        self._session: ort.InferenceSession | None = None
        self._cache: Path | None = None  # the TensorRT EP's engine cache folder, when that provider is in use

        if self.backend.kind == "tensorrt" and self.backend.engine is not None:
            try:
                plan = read_verified(self.entry, manifest, self.backend.engine.path)
                self._native = NativeTensorRTEngine(plan, manifest)
                self.provider = NATIVE_TENSORRT
            except Exception as e:  # any failure here means: use onnxruntime instead
                log.warning("%s: native TensorRT engine %s failed to load (%s); using onnxruntime",
                            self.name, self.backend.engine.path, e)
                self.backend = choose_backend(manifest, None, None, available, settings.providers, settings.max_batch)
        on_cpu = self._native is None and self.backend.providers[0] == CPU_EP
        self.threads = plan_threads(settings.engine_runners, settings.intra_op_threads, on_cpu, service_cores())
        if self._native is None:
            self._session = self._open_session(self.backend.providers)
            self.provider = self._session.get_providers()[0]
            if self.provider == CPU_EP and not on_cpu:  # a GPU provider did not start: the CPU's plan and session
                self.threads = plan_threads(settings.engine_runners, settings.intra_op_threads, True, service_cores())
                self._session = self._open_session((CPU_EP,))
            self._check_session()
        self._report(available)

    def _open_session(self, providers: Sequence[str]) -> ort.InferenceSession:
        options = ort.SessionOptions()
        if self.threads.intra_op is not None:
            options.intra_op_num_threads = self.threads.intra_op
        # ONNX Runtime's pool threads busy-wait for the next run by default. In the service they share
        # the cores with the event loop, which then waits for CPU: measured on 2 cores, spinning
        # doubled the server's CPU per single-tile request and cost a fifth of its throughput.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chain = [(p, _provider_options(p, self.manifest, self.settings)) for p in providers]
        self._cache = next((Path(o["trt_engine_cache_path"]) for _, o in chain if "trt_engine_cache_path" in o), None)
        if self._cache is not None:
            verify_cache(self._cache)  # TensorRT loads only engines this service wrote and indexed
        model = read_verified(self.entry, self.manifest, "model.onnx")  # the bytes hashed are the bytes loaded
        return ort.InferenceSession(model, options, providers=chain)

    def _check_session(self) -> None:
        """Refuse a model.onnx whose tensors disagree with its manifest (Triton does the same)."""
        assert self._session is not None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        spec = self._spec
        if [i.name for i in inputs] != [spec.input_name] or spec.output_name not in [o.name for o in outputs]:
            raise ManifestError(
                f"{self.entry}: model.onnx has inputs {[i.name for i in inputs]} and outputs "
                f"{[o.name for o in outputs]}; the manifest says input {spec.input_name!r}, output {spec.output_name!r}"
            )
        shape = list(inputs[0].shape)
        if len(shape) != len(self.manifest.input.shape) or any(
            isinstance(a, int) and a != e for a, e in zip(shape[1:], spec.sample_shape, strict=True)
        ):
            raise ManifestError(f"{self.entry}: model.onnx input shape {shape} disagrees with the manifest's "
                                f"{self.manifest.input.shape}")

    def _report(self, available: Sequence[str]) -> None:
        requested = list(self.settings.providers)
        log.info("%s: providers requested %s, available %s; in use: %s (%s); %d runner(s) x %s thread(s)",
                 self.name, requested, list(available), self.provider, self.backend.describe(),
                 self.threads.runners, self.threads.intra_op or "onnxruntime's default")
        if self.backend.unavailable and set(self.backend.unavailable) - {CPU_EP}:
            log.warning("%s: %s requested but not offered by this onnxruntime build (GPU providers come with "
                        "onnxruntime-gpu: pip install '.[gpu]'); running on %s. Set MAPEX_PROVIDERS=cpu to "
                        "silence this on CPU machines", self.name, ", ".join(self.backend.unavailable), self.provider)
        preferred = self.backend.providers[0] if self.backend.providers else None
        if self._native is None and preferred is not None and self.provider != preferred:
            log.warning("%s: %s was requested and is available but the session runs on %s: it failed to start "
                        "(see onnxruntime's log above: missing CUDA/TensorRT libraries or no GPU visible?)",
                        self.name, preferred, self.provider)

    def _validate(self, batch: np.ndarray) -> None:
        spec = self._spec
        expected = f"(N, {', '.join(map(str, spec.sample_shape))}) {spec.dtype}"
        if not isinstance(batch, np.ndarray):
            raise EngineInputError(f"{self.name} takes a numpy array shaped {expected}, got {type(batch).__name__}")
        if batch.ndim != 1 + len(spec.sample_shape) or tuple(batch.shape[1:]) != spec.sample_shape or batch.shape[0] < 1:
            raise EngineInputError(f"{self.name} takes a batch shaped {expected} "
                                   f"(bands {self.manifest.band_names}), got {tuple(batch.shape)}")
        if batch.dtype != spec.dtype:
            raise EngineInputError(f"{self.name} takes {spec.dtype} physical values, got {batch.dtype}")

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of tiles in physical units, in the manifest's band order.

        The caller batches; a batch larger than ``settings.max_batch`` is still run, in chunks, so that
        it never exceeds the TensorRT optimisation profile. Thread-safe.
        """
        self._validate(batch)
        return self._run_valid(batch)

    def _run_valid(self, batch: np.ndarray) -> np.ndarray:
        """``run`` on a batch already validated."""
        step = self.settings.max_batch
        if batch.shape[0] > step:
            return np.concatenate([self._run_valid(batch[i:i + step]) for i in range(0, batch.shape[0], step)])
        batch = np.ascontiguousarray(batch)
        if self._native is not None:
            return self._native.run(batch)
        assert self._session is not None
        return self._session.run([self._spec.output_name], {self._spec.input_name: batch})[0]

    def run_into(self, batch: np.ndarray, out: np.ndarray) -> None:
        """``run``, its probabilities written into ``out`` (N, *outputs) (a request's shared memory). Thread-safe.

        On a GPU provider ONNX Runtime binds ``out`` as the run's output (``_run_bound``): the outputs
        come from the device straight there instead of into a host buffer of the batch's size made
        each batch (15 MB for 32 tiles of 128 px and 7 classes) and copied (unverified: no GPU here).
        On the CPU, ``run`` and a copy: ONNX Runtime's arena hands out the output buffer at no cost,
        and binding took 4-9% more CPU on a one-tile batch (0.89 vs 0.85 ms) and saved nothing on 32.
        """
        self._validate(batch)
        expected = (batch.shape[0], *self.manifest.output.shape[1:])
        if tuple(out.shape) != expected:
            raise EngineInputError(f"{self.name}: outputs of a batch of {batch.shape[0]} are {expected}, "
                                   f"not {tuple(out.shape)}")
        bindable = out.dtype == np.dtype(self.manifest.output.dtype) and out.flags.c_contiguous and out.flags.writeable
        if self.provider in (CPU_EP, NATIVE_TENSORRT) or batch.shape[0] > self.settings.max_batch or not bindable:
            out[...] = self._run_valid(batch)
        else:
            self._run_bound(np.ascontiguousarray(batch), out)

    def _run_bound(self, batch: np.ndarray, out: np.ndarray) -> None:
        """One ONNX Runtime run whose output is ``out`` (``IOBinding``): a C-ordered array of the output's dtype."""
        assert self._session is not None
        binding = self._session.io_binding()
        binding.bind_cpu_input(self._spec.input_name, batch)
        binding.bind_output(self._spec.output_name, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        self._session.run_with_iobinding(binding)

    def warm_up(self) -> float:
        """Run one full batch of band-mean tiles (TensorRT builds or loads its engine here); returns seconds."""
        means = np.array([b.mean for b in self.manifest.bands], dtype=self._spec.dtype)
        batch = np.broadcast_to(means[None, :, None, None], (self.settings.max_batch, *self._spec.sample_shape))
        start = time.perf_counter()
        out = self.run(np.ascontiguousarray(batch))
        seconds = time.perf_counter() - start
        expected = [self.settings.max_batch, *self.manifest.output.shape[1:]]
        if list(out.shape) != expected or not np.isfinite(out).all():
            raise ManifestError(f"{self.entry}: warm-up output is {out.shape} (finite: {bool(np.isfinite(out).all())}), "
                                f"the manifest promises {expected}")
        log.info("%s: warmed up on %s in %.3f s", self.name, self.provider, seconds)
        if self._cache is not None:
            record_cache(self._cache)  # the engines TensorRT built or loaded for this model, with their hashes
        return seconds

    def __repr__(self) -> str:
        return f"Engine({self.name!r}, provider={self.provider!r})"


class NativeTensorRTEngine:
    """A serialized TensorRT 10 engine from the manifest, run with the TensorRT runtime API.

    UNVERIFIED: no machine here has TensorRT. Device buffers come from onnxruntime-gpu's
    ``OrtValue`` (the ``gpu`` extra ships it), so no extra CUDA binding is needed. The engine runs on
    CUDA's legacy default stream, so the device-to-host copy after it waits for it.
    """

    def __init__(self, plan: bytes, manifest: Manifest) -> None:
        import tensorrt as trt

        if CUDA_EP not in ort.get_available_providers():
            raise RuntimeError("native TensorRT needs onnxruntime-gpu for its device buffers")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the engine of {manifest.name} v{manifest.version} "
                               f"(built for another GPU or TensorRT version?)")
        self._context = self._engine.create_execution_context()
        self._input, self._output = manifest.input.name, manifest.output.name
        self._out_shape = tuple(manifest.output.shape[1:])
        self._lock = threading.Lock()  # one execution context: one batch at a time

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            x = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
            y = ort.OrtValue.ortvalue_from_shape_and_type((batch.shape[0], *self._out_shape), np.float32, "cuda", 0)
            if not self._context.set_input_shape(self._input, tuple(batch.shape)):
                raise EngineInputError(f"batch shape {batch.shape} is outside the engine's optimisation profile")
            self._context.set_tensor_address(self._input, x.data_ptr())
            self._context.set_tensor_address(self._output, y.data_ptr())
            if not self._context.execute_async_v3(0):
                raise RuntimeError("TensorRT execution failed; its log (stderr) says why")
            return y.numpy()

"""The TensorRT path: naming, engine choice and argument checks run everywhere; the build needs TensorRT and a GPU."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.tensorrt import (
    EngineProfile,
    GpuInfo,
    TensorRTUnavailable,
    _write_atomic,
    build_engine,
    engine_filename,
    find_engine,
    tensorrt_version,
)
from mapex_serve.errors import MapexError
from mapex_serve.repository import EngineEntry

ROOT = Path(__file__).resolve().parents[2]
H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
A100 = GpuInfo("NVIDIA A100-SXM4-40GB", "8.0")
RTX4090 = GpuInfo("NVIDIA GeForce RTX 4090", "8.9")
T4 = GpuInfo("Tesla T4", "7.5")
INPUT_SHAPE = (2, 32, 32)


def _entry(gpu: GpuInfo, trt: str = "10.3.0", hc: str = "none", precision: str = "fp16") -> EngineEntry:
    return EngineEntry(
        path=f"engines/{engine_filename(gpu, trt, precision, hc)}",
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        tensorrt_version=trt,
        precision=precision,
        hardware_compatibility=hc,
        min_batch=1,
        opt_batch=16,
        max_batch=64,
    )


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    """A seeded 2-layer conv net on a (batch, 2, 32, 32) input named x, batch axis symbolic."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((3, 4, 1, 1)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Conv", ["r", "w2", "b2"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        initializer=[w1, b1, w2, b2],
    )
    # IR 8 / opset 17: old enough for every TensorRT 10 ONNX parser.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "entry" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, path)
    return path


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail, where it happens to be installed."""
    if importlib.util.find_spec("tensorrt") is not None:
        monkeypatch.setitem(sys.modules, "tensorrt", None)


# --- EngineProfile ---------------------------------------------------------------------------


def test_profile_shapes_are_full_nchw():
    assert EngineProfile().shapes(INPUT_SHAPE) == ((1, 2, 32, 32), (16, 2, 32, 32), (64, 2, 32, 32))
    assert EngineProfile(2, 2, 8).shapes(INPUT_SHAPE) == ((2, 2, 32, 32), (2, 2, 32, 32), (8, 2, 32, 32))


@pytest.mark.parametrize("batches", [(0, 1, 1), (2, 1, 4), (1, 8, 4), (1, 1.5, 4), (True, 1, 1), (-1, 16, 64)])
def test_profile_refuses_batches_out_of_order(batches):
    with pytest.raises(ValueError, match=r"1 <= min <= opt <= max"):
        EngineProfile(*batches)


@pytest.mark.parametrize("shape", [(2, 32), (2, 32, 32, 1), (0, 32, 32), (2, 32.0, 32)])
def test_profile_refuses_a_bad_input_shape(shape):
    with pytest.raises(ValueError, match=r"three positive integers"):
        EngineProfile().shapes(shape)


# --- GpuInfo ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cc", ["9", "sm90", "9.0.1", ""])
def test_gpu_refuses_a_malformed_compute_capability(cc):
    with pytest.raises(ValueError, match=r"major\.minor"):
        GpuInfo("NVIDIA H100 80GB HBM3", cc)


def test_detect_returns_none_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert GpuInfo.detect() is None


def test_detect_returns_none_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert GpuInfo.detect() is None


def test_importing_the_module_imports_neither_torch_nor_tensorrt():
    code = "import sys, export.tensorrt; print(sorted({'torch', 'tensorrt'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- engine_filename -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "trt", "precision", "hc", "expected"),
    [
        (H100, "10.3.0", "fp16", "none", "NVIDIA-H100-80GB-HBM3_sm90_trt10.3.0_fp16.engine"),
        (A100, "10.3.0", "fp32", "none", "NVIDIA-A100-SXM4-40GB_sm80_trt10.3.0_fp32.engine"),
        (RTX4090, "10.3.0", "fp16", "ampere_plus", "NVIDIA-GeForce-RTX-4090_sm89_trt10.3.0_fp16_hc-ampere_plus.engine"),
        (
            GpuInfo("Tesla T4 / PCIe (rev a1)", "7.5"),
            "10.9.0.34",
            "fp16",
            "same_compute_capability",
            "Tesla-T4-PCIe-rev-a1_sm75_trt10.9.0.34_fp16_hc-same_compute_capability.engine",
        ),
        (
            GpuInfo("NVIDIA B200 (SXM)/HGX", "10.0"),
            "10.8.0+cuda12",
            "fp32",
            "none",
            "NVIDIA-B200-SXM-HGX_sm100_trt10.8.0-cuda12_fp32.engine",
        ),
        (GpuInfo("../../etc", "8.6"), "10.3.0", "fp16", "none", "etc_sm86_trt10.3.0_fp16.engine"),
    ],
)
def test_engine_filename(gpu, trt, precision, hc, expected):
    name = engine_filename(gpu, trt, precision, hc)
    assert name == expected
    assert Path(name).name == name


def test_engine_filename_defaults_to_no_hardware_compatibility():
    assert engine_filename(H100, "10.3.0", "fp16") == engine_filename(H100, "10.3.0", "fp16", "none")


@pytest.mark.parametrize(("precision", "hc"), [("int8", "none"), ("fp16", "ampere")])
def test_engine_filename_refuses_unknown_choices(precision, hc):
    with pytest.raises(ValueError, match="expected one of"):
        engine_filename(H100, "10.3.0", precision, hc)


# --- find_engine -----------------------------------------------------------------------------


def test_find_engine_prefers_the_exact_match_over_a_hardware_compatible_one():
    portable, exact = _entry(A100, hc="ampere_plus"), _entry(H100)
    assert find_engine([portable, exact], H100, "10.3.0") is exact
    assert find_engine([exact, portable], H100, "10.3.0") is exact


def test_find_engine_prefers_a_plain_engine_over_a_portable_one_built_on_the_same_gpu():
    portable, plain = _entry(H100, hc="ampere_plus"), _entry(H100, precision="fp32")
    assert find_engine([portable, plain], H100, "10.3.0") is plain


def test_find_engine_refuses_another_tensorrt_version():
    entries = [_entry(H100, trt="10.2.0"), _entry(A100, trt="10.2.0", hc="ampere_plus")]
    assert find_engine(entries, H100, "10.3.0") is None
    assert find_engine(entries, H100, "10.2.0") is entries[0]


def test_find_engine_refuses_an_engine_whose_profile_is_smaller_than_the_batches_sent():
    engine = _entry(H100)  # max_batch 64
    assert find_engine([engine], H100, "10.3.0", max_batch=64) is engine
    assert find_engine([engine], H100, "10.3.0", max_batch=65) is None


def test_find_engine_refuses_another_gpu():
    assert find_engine([_entry(A100), _entry(RTX4090)], H100, "10.3.0") is None
    # same name, another compute capability (e.g. a mislabelled entry) is not a match either
    assert find_engine([_entry(GpuInfo(H100.name, "8.0"))], H100, "10.3.0") is None
    assert find_engine([], H100, "10.3.0") is None


@pytest.mark.parametrize(
    ("gpu", "accepted"),
    [
        (A100, True),
        (RTX4090, True),
        (H100, True),
        (GpuInfo("NVIDIA B200", "10.0"), True),
        (T4, False),
        (GpuInfo("Tesla V100", "7.0"), False),
    ],
)
def test_find_engine_accepts_ampere_plus_only_from_compute_capability_8(gpu, accepted):
    portable = _entry(A100, hc="ampere_plus")
    assert (find_engine([portable], gpu, "10.3.0") is portable) is accepted


def test_find_engine_accepts_same_compute_capability_only_on_that_capability():
    built_on = GpuInfo("NVIDIA A10", "8.6")
    portable = _entry(built_on, hc="same_compute_capability")
    assert find_engine([portable], GpuInfo("NVIDIA RTX A6000", "8.6"), "10.3.0") is portable
    assert find_engine([portable], RTX4090, "10.3.0") is None


# --- build_engine without TensorRT -----------------------------------------------------------


def test_tensorrt_version_is_none_without_tensorrt(no_tensorrt):
    assert tensorrt_version() is None


def test_build_engine_without_tensorrt_says_what_to_install(no_tensorrt, tiny_onnx):
    engines = tiny_onnx.parent / "engines"
    with pytest.raises(TensorRTUnavailable, match=r"pip install \.\[gpu\]") as info:
        build_engine(tiny_onnx, engines, input_name="x", input_shape=INPUT_SHAPE, gpu=H100)
    assert "NVIDIA GPU and driver" in str(info.value)
    assert isinstance(info.value, MapexError) and isinstance(info.value, RuntimeError)
    assert not engines.exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"precision": "int8"}, ValueError, "unknown precision"),
        ({"hardware_compatibility": "hopper"}, ValueError, "unknown hardware compatibility"),
        ({"hardware_compatibility": "ampere_plus", "gpu": T4}, ValueError, r"compute capability >= 8\.0"),
        ({"input_shape": (2, 32)}, ValueError, "three positive integers"),
        ({"workspace_gib": 0}, ValueError, "workspace_gib"),
    ],
)
def test_build_engine_checks_its_arguments_before_needing_tensorrt(tiny_onnx, kwargs, error, match):
    args = {"input_name": "x", "input_shape": INPUT_SHAPE, "gpu": H100} | kwargs
    with pytest.raises(error, match=match):
        build_engine(tiny_onnx, tiny_onnx.parent / "engines", **args)


def test_build_engine_refuses_a_missing_onnx_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="export the specialist"):
        build_engine(tmp_path / "model.onnx", tmp_path / "engines", input_name="x", input_shape=INPUT_SHAPE, gpu=H100)


def test_tiny_model_runs_in_onnxruntime_at_two_batch_sizes(tiny_onnx):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        (y,) = session.run(None, {"x": np.zeros((batch, *INPUT_SHAPE), np.float32)})
        assert y.shape == (batch, 3, 32, 32)


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.engine"
    _write_atomic(target, b"old")
    _write_atomic(target, memoryview(b"new"))
    assert target.read_bytes() == b"new"
    with pytest.raises(TypeError):
        _write_atomic(target, "not bytes")  # fails half-way: the old file stays, the temporary goes
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.engine"]


# --- build_engine with TensorRT (a GPU machine) ----------------------------------------------


def test_build_engine_on_this_gpu(tiny_onnx):
    trt = pytest.importorskip(
        "tensorrt",
        reason="TensorRT is not installed on this machine (no wheel can reach its libraries here); the engine build is unverified",
    )
    gpu = GpuInfo.detect()
    if gpu is None:
        pytest.skip("TensorRT is importable but torch sees no CUDA GPU; the engine build is unverified")
    engines = tiny_onnx.parent / "engines"
    cache = tiny_onnx.parent.parent / "caches" / "timing.cache"
    profile = EngineProfile(1, 4, 8)
    common = {
        "input_name": "x",
        "input_shape": INPUT_SHAPE,
        "gpu": gpu,
        "profile": profile,
        "timing_cache": cache,
        "workspace_gib": 1.0,
    }

    entry = build_engine(tiny_onnx, engines, **common)
    assert entry.precision == ("fp16" if gpu.cc >= (7, 0) else "fp32")
    filename = engine_filename(gpu, trt.__version__, entry.precision)
    assert entry.path == f"engines/{filename}"
    assert (tiny_onnx.parent / entry.path).stat().st_size > 0
    assert (entry.gpu_name, entry.compute_capability) == (gpu.name, gpu.compute_capability)
    assert entry.tensorrt_version == trt.__version__ == tensorrt_version()
    assert entry.hardware_compatibility == "none"
    assert (entry.min_batch, entry.opt_batch, entry.max_batch) == (1, 4, 8)
    assert cache.stat().st_size > 0
    assert sorted(p.name for p in engines.iterdir()) == [filename]

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        (tiny_onnx.parent / entry.path).read_bytes()
    )
    assert engine is not None
    assert [tuple(s) for s in engine.get_tensor_profile_shape("x", 0)] == [
        (1, 2, 32, 32),
        (4, 2, 32, 32),
        (8, 2, 32, 32),
    ]
    assert find_engine([entry], gpu, trt.__version__) == entry

    # A second build reads the timing cache back and writes a second engine beside the first.
    fp32 = build_engine(tiny_onnx, engines, **(common | {"precision": "fp32"}))
    assert fp32.precision == "fp32" and fp32.path != entry.path
    assert (tiny_onnx.parent / fp32.path).is_file() and cache.stat().st_size > 0

    with pytest.raises(ValueError, match=r"no input 'image'.*\['x'\]"):
        build_engine(tiny_onnx, engines, **(common | {"input_name": "image"}))
    with pytest.raises(ValueError, match=r"expected \('batch', 3, 32, 32\)"):
        build_engine(tiny_onnx, engines, **(common | {"input_shape": (3, 32, 32)}))

"""Settings, engines and the registry on a real repository built by ``python -m export.build`` (no mocks)."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from export.tensorrt import GpuInfo
from mapex_serve.cores import service_cores, usable_cores
from mapex_serve.engine import (
    CPU_EP,
    CUDA_EP,
    TRT_EP,
    Engine,
    EngineInputError,
    EngineThreads,
    choose_backend,
    plan_threads,
)
from mapex_serve.registry import Registry
from mapex_serve.repository import EngineEntry, verify_entry
from mapex_serve.settings import DEFAULT_PROVIDERS, PROVIDER_ALIASES, Settings

H100 = GpuInfo(name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
L4 = GpuInfo(name="NVIDIA L4", compute_capability="8.9")


@pytest.fixture(scope="module")
def repo(built_repo, tmp_path_factory) -> Path:
    """landcover-rgb v1 + v2, flood-sar, wildfire-swir and wildfire-rgb+swir, copied from the suite's built repository.

    Version 2 is version 1's artefacts under a manifest that says version 2 (their sha256 still hold).
    """
    models = tmp_path_factory.mktemp("engine-registry") / "models"
    for name in ("landcover-rgb", "flood-sar", "wildfire-swir", "wildfire-rgb+swir"):
        shutil.copytree(built_repo / name / "1", models / name / "1")
    v2 = models / "landcover-rgb" / "2"
    shutil.copytree(models / "landcover-rgb" / "1", v2)
    manifest = json.loads((v2 / "manifest.json").read_text())
    manifest["version"] = 2
    (v2 / "manifest.json").write_text(json.dumps(manifest))
    return models


@pytest.fixture
def repo_copy(repo, tmp_path) -> Path:
    """A private copy to tamper with."""
    return Path(shutil.copytree(repo, tmp_path / "models"))


def cpu_settings(repo: Path, **kw) -> Settings:
    return Settings(model_repo=repo, **kw)


def physical_batch(manifest, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = np.array([b.mean for b in manifest.bands], dtype=np.float32)[None, :, None, None]
    std = np.array([b.std for b in manifest.bands], dtype=np.float32)[None, :, None, None]
    size = manifest.tile_size
    return (mean + std * rng.standard_normal((n, len(manifest.bands), size, size))).astype(np.float32)


# --- settings -----------------------------------------------------------------------------------


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MAPEX_MODEL_REPO", str(tmp_path))
    monkeypatch.setenv("MAPEX_PROVIDERS", " cuda, CPUExecutionProvider ,")
    monkeypatch.setenv("MAPEX_API_KEY", "s3cret-key-value")
    monkeypatch.setenv("MAPEX_MAX_BATCH", "8")
    monkeypatch.setenv("MAPEX_INTRA_OP_THREADS", "1")
    s = Settings()
    assert s.providers == [CUDA_EP, CPU_EP]
    assert s.max_batch == 8 and s.intra_op_threads == 1
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret-key-value"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s) and "s3cret" not in s.model_dump_json()
    assert s.engine_cache == tmp_path / ".engine-cache"

    monkeypatch.setenv("MAPEX_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MAPEX_PROVIDERS", '["tensorrt", "cpu"]')
    s = Settings()
    assert s.engine_cache == tmp_path / "cache" and s.providers == [TRT_EP, CPU_EP]


def test_settings_defaults_and_errors(monkeypatch):
    for var in ("MAPEX_PROVIDERS", "MAPEX_API_KEY", "MAPEX_MODEL_REPO", "MAPEX_ENGINE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.providers == [TRT_EP, CUDA_EP, CPU_EP] and s.api_key is None
    assert s.model_repo == Path("models") and s.engine_cache == Path("models/.engine-cache")
    assert (s.max_batch, s.max_delay_ms, s.max_queue, s.max_upload_mb, s.max_pixels, s.request_timeout_s) == (
        32, 5.0, 4096, 200, 64_000_000, 60)
    with pytest.raises(ValidationError, match="unknown execution provider 'gpu'.*accepted: cpu, cuda, tensorrt"):
        Settings(providers="gpu,cpu")
    with pytest.raises(ValidationError, match="at least one execution provider"):
        Settings(providers="")
    with pytest.raises(ValidationError, match="max_queue .8. must hold at least one batch .max_batch 32"):
        Settings(max_queue=8)
    with pytest.raises(ValidationError, match="max_batch"):
        Settings(max_batch=0)
    assert all(f.description for f in Settings.model_fields.values())


# --- engine -------------------------------------------------------------------------------------


def test_the_readme_documents_every_setting_with_its_default():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2].strip(" `") for line in readme.splitlines()
            if line.startswith("| `MAPEX_")}
    assert set(rows) == {f"MAPEX_{name.upper()}" for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        if isinstance(field.default, int | float) and not isinstance(field.default, bool):
            assert float(rows[f"MAPEX_{name.upper()}"]) == field.default, name
    assert rows["MAPEX_MODEL_REPO"] == str(Settings.model_fields["model_repo"].default)
    assert [PROVIDER_ALIASES[p] for p in rows["MAPEX_PROVIDERS"].split(",")] == DEFAULT_PROVIDERS


def test_engine_matches_onnx_runtime_for_batches_of_1_and_5(repo):
    entry = repo / "flood-sar" / "1"
    manifest = verify_entry(entry)
    engine = Engine(entry, manifest, cpu_settings(repo, providers="cpu"))
    direct = ort.InferenceSession(str(entry / "model.onnx"), providers=[CPU_EP])
    for n in (1, 5):
        x = physical_batch(manifest, n, seed=n)
        out = engine.run(x)
        assert out.shape == (n, 2, manifest.tile_size, manifest.tile_size)
        np.testing.assert_allclose(out, direct.run(["probabilities"], {"input": x})[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_run_into_writes_what_run_returns_into_the_array_given(repo, tmp_path):
    """Into a C-ordered float32 view of a shared-memory file (as a request's slab is), a strided view, the outputs
    of a batch above max_batch; and bound as ONNX Runtime's output, as a GPU engine runs it; a wrong shape is
    refused."""
    import mmap

    entry = repo / "flood-sar" / "1"
    manifest = verify_entry(entry)
    engine = Engine(entry, manifest, cpu_settings(repo, providers="cpu", max_batch=4))
    x = physical_batch(manifest, 3, seed=7)
    expected = engine.run(x)
    shape = expected.shape
    with open(tmp_path / "slab", "w+b") as f:
        f.truncate(4 * expected.size + 64)
        mapped = mmap.mmap(f.fileno(), 0)
    out = np.ndarray(shape, np.float32, buffer=mapped, offset=64)
    engine.run_into(x, out)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    out[...] = -1
    engine._run_bound(x, out)  # what run_into does on a GPU provider: the binding itself runs on the CPU too
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    strided = np.full((3, shape[1], 2 * shape[2], shape[3]), -1, np.float32)[:, :, ::2]
    engine.run_into(x, strided)
    np.testing.assert_allclose(strided, expected, rtol=0, atol=1e-6)
    big = physical_batch(manifest, 6, seed=8)
    whole = np.empty((6, *shape[1:]), np.float32)
    engine.run_into(big, whole)
    np.testing.assert_allclose(whole, engine.run(big), rtol=0, atol=1e-6)
    with pytest.raises(EngineInputError, match=r"outputs of a batch of 3 are \(3, 2, 32, 32\), not \(2, 2, 32, 32\)"):
        engine.run_into(x, out[:2])
    del out
    mapped.close()


def test_engine_splits_batches_larger_than_max_batch(repo):
    entry = repo / "landcover-rgb" / "1"
    manifest = verify_entry(entry)
    small = Engine(entry, manifest, cpu_settings(repo, providers="cpu", max_batch=2))
    whole = Engine(entry, manifest, cpu_settings(repo, providers="cpu"))
    x = physical_batch(manifest, 5)
    np.testing.assert_allclose(small.run(x), whole.run(x), atol=1e-6)


def test_engine_reports_the_provider_in_use_and_unavailable_gpu_providers(repo, caplog):
    entry = repo / "landcover-rgb" / "1"
    caplog.set_level(logging.INFO, logger="mapex_serve.engine")
    engine = Engine(entry, verify_entry(entry), cpu_settings(repo))  # default: TensorRT, CUDA, CPU
    assert engine.provider == CPU_EP
    in_use = [r.getMessage() for r in caplog.records if "in use" in r.getMessage()]
    assert len(in_use) == 1 and "in use: CPUExecutionProvider" in in_use[0]
    assert "landcover-rgb v1" in in_use[0] and TRT_EP in in_use[0]  # what was requested is logged
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(TRT_EP in w and CUDA_EP in w and "not offered" in w for w in warnings), warnings
    assert not (repo / ".engine-cache").exists()  # no TensorRT EP session, no cache folder


def test_engine_refuses_wrong_shapes_and_dtypes_with_clear_errors(repo):
    entry = repo / "landcover-rgb" / "1"
    manifest = verify_entry(entry)
    engine = Engine(entry, manifest, cpu_settings(repo, providers="cpu"))
    good = physical_batch(manifest, 2)
    with pytest.raises(ValueError, match=r"shaped \(N, 3, 32, 32\) float32.*got \(2, 4, 32, 32\)"):
        engine.run(np.zeros((2, 4, 32, 32), np.float32))
    with pytest.raises(EngineInputError, match=r"got \(3, 32, 32\)"):
        engine.run(good[0])
    with pytest.raises(EngineInputError, match=r"got \(0, 3, 32, 32\)"):
        engine.run(good[:0])
    with pytest.raises(EngineInputError, match="float32 physical values, got float64"):
        engine.run(good.astype(np.float64))
    with pytest.raises(EngineInputError, match="numpy array"):
        engine.run(good.tolist())


def test_plan_threads_shares_the_cores_on_a_cpu_and_keeps_one_runner_on_a_gpu():
    assert plan_threads(None, None, True, 16) == EngineThreads(16, 1)  # every core, one thread a run
    assert plan_threads(None, 4, True, 16) == EngineThreads(4, 4)
    assert plan_threads(2, None, True, 16) == EngineThreads(2, 8)
    assert plan_threads(3, 3, True, 16) == EngineThreads(3, 3)  # both set: as set, even past the cores
    assert plan_threads(None, 32, True, 16) == EngineThreads(1, 32)
    assert plan_threads(None, None, True, 1) == EngineThreads(1, 1)
    assert plan_threads(None, None, False, 16) == EngineThreads(1, None)  # GPU: onnxruntime's own threads
    assert plan_threads(2, 4, False, 16) == EngineThreads(2, 4)


def test_service_cores_are_split_among_uvicorn_workers(monkeypatch):
    monkeypatch.delenv("UVICORN_WORKERS", raising=False)
    assert service_cores() == usable_cores()
    monkeypatch.setenv("UVICORN_WORKERS", "2")
    assert service_cores() == max(usable_cores() // 2, 1)
    monkeypatch.setenv("UVICORN_WORKERS", str(4 * usable_cores()))
    assert service_cores() == 1


def test_a_cpu_engine_runs_a_thread_a_run_on_every_core_unless_told(repo):
    entry = repo / "landcover-rgb" / "1"
    manifest = verify_entry(entry)
    auto = Engine(entry, manifest, cpu_settings(repo, providers="cpu"))
    assert auto.threads == EngineThreads(service_cores(), 1)
    assert auto._session.get_session_options().intra_op_num_threads == 1  # what the session was opened with
    told = Engine(entry, manifest, cpu_settings(repo, providers="cpu", engine_runners=1))
    assert told.threads == EngineThreads(1, service_cores())
    assert told._session.get_session_options().intra_op_num_threads == service_cores()
    x = physical_batch(manifest, 8)
    np.testing.assert_allclose(auto.run(x), told.run(x), atol=1e-6)


def test_an_engine_whose_gpu_provider_did_not_start_is_planned_for_the_cpu(repo, monkeypatch):
    """onnxruntime-gpu on a machine without a usable GPU offers CUDA but the session runs on the CPU: the
    engine then takes the CPU's runners and threads, not a GPU's one runner on onnxruntime's default threads.
    (This onnxruntime has no CUDA provider: offering it makes ONNX Runtime fall back exactly so.)"""
    entry = repo / "landcover-rgb" / "1"
    offered = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_EP, *offered])
    engine = Engine(entry, verify_entry(entry), cpu_settings(repo, providers="cuda,cpu"))
    assert engine.backend.providers[0] == CUDA_EP and engine.provider == CPU_EP
    assert engine.threads == EngineThreads(service_cores(), 1)
    assert engine._session.get_session_options().intra_op_num_threads == 1


def test_warm_up_runs_a_full_batch(repo):
    entry = repo / "landcover-rgb" / "1"
    engine = Engine(entry, verify_entry(entry), cpu_settings(repo, providers="cpu", max_batch=4))
    assert 0 < engine.warm_up() < 30


def test_choose_backend(repo):
    manifest = verify_entry(repo / "landcover-rgb" / "1")
    engine = EngineEntry(path="engines/h100.engine", gpu_name=H100.name, compute_capability="9.0",
                         tensorrt_version="10.3.0", precision="fp16", min_batch=1, opt_batch=16, max_batch=64)
    with_engine = manifest.model_copy(update={"engines": [engine]})
    gpu_ort = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    native = choose_backend(with_engine, H100, "10.3.0", gpu_ort)
    assert native.kind == "tensorrt" and native.engine == engine and native.providers == ()

    # An engine for another GPU, or another TensorRT version, or no TensorRT: the ORT TensorRT EP.
    for gpu, trt in ((L4, "10.3.0"), (H100, "10.4.0"), (H100, None), (None, "10.3.0")):
        b = choose_backend(with_engine, gpu, trt, gpu_ort)
        assert b.kind == "onnxruntime" and b.providers == (TRT_EP, CUDA_EP, CPU_EP), (gpu, trt)
    assert choose_backend(manifest, H100, "10.3.0", gpu_ort).providers[0] == TRT_EP  # no engines listed

    # Batches larger than the engine's profile (max 64): ONNX Runtime's TensorRT EP instead.
    assert choose_backend(with_engine, H100, "10.3.0", gpu_ort, max_batch=128).kind == "onnxruntime"

    # TensorRT left out of the settings: no native engine either.
    b = choose_backend(with_engine, H100, "10.3.0", gpu_ort, requested=[CUDA_EP, CPU_EP])
    assert b.kind == "onnxruntime" and b.providers == (CUDA_EP, CPU_EP)

    # A CPU-only onnxruntime: CPU, with the missing providers reported.
    cpu = choose_backend(with_engine, None, None, ["AzureExecutionProvider", CPU_EP])
    assert cpu.providers == (CPU_EP,) and cpu.unavailable == (TRT_EP, CUDA_EP)
    assert choose_backend(manifest, None, None, [CPU_EP], requested=[CUDA_EP]).providers == (CPU_EP,)


# --- registry -----------------------------------------------------------------------------------


def test_registry_serves_the_newest_version_of_each_specialist(repo, caplog):
    caplog.set_level(logging.INFO)
    registry = Registry.load(cpu_settings(repo, providers="cpu", max_batch=4))
    assert registry.ready and not registry.refused
    assert sorted(registry.specialists) == ["flood-sar", "landcover-rgb", "wildfire-rgb+swir", "wildfire-swir"]
    rgb = registry.specialists["landcover-rgb"]
    assert rgb.version == 2 and rgb.entry == repo / "landcover-rgb" / "2" and rgb.manifest.version == 2
    assert registry.versions["landcover-rgb"] == [1, 2]
    assert all(s.engine.provider == CPU_EP for s in registry.specialists.values())
    assert set(registry.warm_up_s) == set(registry.specialists)
    assert registry.tasks() == ["flood", "landcover", "wildfire"]
    assert [s.name for s in registry.for_task("wildfire")] == ["wildfire-rgb+swir", "wildfire-swir"]
    assert registry.for_task("landcover-seg") == []
    assert any("registry ready: 4 specialists" in r.getMessage() for r in caplog.records)


def test_a_tampered_entry_is_refused_and_the_others_serve(repo_copy, caplog):
    with open(repo_copy / "flood-sar" / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")
    registry = Registry.load(cpu_settings(repo_copy, providers="cpu", max_batch=4))
    assert registry.ready
    assert "flood-sar" not in registry.specialists
    assert sorted(registry.specialists) == ["landcover-rgb", "wildfire-rgb+swir", "wildfire-swir"]
    [refused] = registry.refused
    assert refused.entry == repo_copy / "flood-sar" / "1"
    assert "model.onnx" in refused.reason and "sha256" in refused.reason
    assert any(r.levelno == logging.WARNING and "refusing" in r.getMessage() for r in caplog.records)


def test_a_refused_newest_version_falls_back_to_the_previous_one(repo_copy):
    path = repo_copy / "landcover-rgb" / "2" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["unexpected"] = 1  # the schema forbids unknown fields
    path.write_text(json.dumps(manifest))
    registry = Registry.load(cpu_settings(repo_copy, providers="cpu", max_batch=4))
    assert registry.specialists["landcover-rgb"].version == 1
    assert [r.entry.name for r in registry.refused] == ["2"] and "not a valid manifest" in registry.refused[0].reason


def test_an_entry_whose_manifest_names_another_version_is_refused(repo_copy):
    shutil.copytree(repo_copy / "landcover-rgb" / "2", repo_copy / "landcover-rgb" / "3")
    registry = Registry.load(cpu_settings(repo_copy, providers="cpu", max_batch=4))
    assert registry.specialists["landcover-rgb"].version == 2
    assert "version 2" in registry.refused[0].reason and "landcover-rgb/3" in registry.refused[0].reason


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_an_empty_or_missing_repository_loads_with_a_hint(tmp_path, caplog, kind):
    root = tmp_path / "models"
    if kind == "empty":
        root.mkdir()
    registry = Registry.load(cpu_settings(root, providers="cpu"))
    assert registry.specialists == {} and registry.refused == [] and registry.tasks() == []
    assert registry.ready
    hints = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"python -m export.build --all --repo {root}" in h for h in hints), hints


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "engines\\..\\x", "C:evil", ""])
def test_artefact_paths_that_leave_their_entry_are_refused(repo_copy, bad):
    """A manifest names the files the service opens: none may lie outside its entry folder."""
    entry = repo_copy / "flood-sar" / "1"
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["artefacts"][bad] = {"sha256": "0" * 64, "bytes": 1}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="leaves its entry folder"):
        verify_entry(entry)
    registry = Registry.load(cpu_settings(repo_copy))
    assert "flood-sar" not in registry.specialists and any("leaves its entry folder" in r.reason for r in registry.refused)


def test_a_native_engine_not_listed_among_the_hashed_artefacts_is_refused(repo_copy):
    entry = repo_copy / "flood-sar" / "1"
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["engines"] = [{"path": "engines/h100.engine", "gpu_name": H100.name, "compute_capability": "9.0",
                            "tensorrt_version": "10.9.0", "precision": "fp16", "min_batch": 1, "opt_batch": 8,
                            "max_batch": 64}]
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="not among the hashed artefacts"):
        verify_entry(entry)


def test_an_artefact_that_is_a_link_out_of_its_entry_is_refused(repo_copy, tmp_path):
    entry = repo_copy / "flood-sar" / "1"
    outside = tmp_path / "model.onnx"
    shutil.move(entry / "model.onnx", outside)
    (entry / "model.onnx").symlink_to(outside)  # same bytes, same sha256: only the place is wrong
    with pytest.raises(Exception, match="link"):
        verify_entry(entry)


def test_the_engine_loads_exactly_the_bytes_it_verified(repo_copy):
    """Swapping model.onnx after the registry's check (a time-of-check/time-of-use race) is caught at load."""
    from mapex_serve.repository import ManifestError, load_manifest

    entry = repo_copy / "flood-sar" / "1"
    manifest = verify_entry(entry)
    other = repo_copy / "landcover-rgb" / "1" / "model.onnx"
    shutil.copy(other, entry / "model.onnx")
    with pytest.raises(ManifestError, match="sha256"):
        Engine(entry, manifest, cpu_settings(repo_copy))
    assert load_manifest(entry) == manifest


def test_each_specialist_gets_its_own_engine_thread(repo):
    """One shared single-thread executor let a slow specialist hold up every other; the lifespan now gives each its own."""
    import asyncio

    from mapex_serve.app import create_app

    app = create_app(cpu_settings(repo))

    async def executors() -> list:
        async with app.router.lifespan_context(app):
            return [b._executor for b in app.state.mapex.batchers.values()]

    found = asyncio.run(executors())
    assert len(found) == 4 and len({id(e) for e in found}) == 4

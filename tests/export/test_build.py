"""`python -m export.build` end to end on a real checkpoint: repository entries, parity, failures."""

import copy
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.build import (
    TRANSLATIONS,
    BuildOptions,
    ParityError,
    block_forms,
    build_specialist,
    check_parity,
    export_onnx,
    main,
)
from export.prune import prune
from mapex_serve.bands import MODALITY_NAMES
from mapex_serve.repository import ManifestError, scan_repository, sha256_file, verify_entry
from training.checkpoint import load_model
from training.finetune import finetune, make_head
from training.moe import MoE
from training.specialist import Specialist
from training.tasks import get_task


def build(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "export.build", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def repo(built_repo) -> Path:
    return built_repo


def test_all_builds_every_default_specialist_with_a_verified_manifest(repo, tiny_run):
    entries = scan_repository(repo)
    names = sorted(e.parent.name for e in entries)
    expected = [f"landcover-{m.lower()}" for m in MODALITY_NAMES] + ["flood-sar", "wildfire-swir", "wildfire-rgb+swir", "landcover-seg-rgb"]
    assert names == sorted(expected)
    source = sha256_file(tiny_run / "checkpoint.pt")
    for entry in entries:
        manifest = verify_entry(entry)
        assert entry.name == "1" and manifest.version == 1
        assert manifest.source_checkpoint_sha256 == source
        assert manifest.parameters.ratio <= 0.5, (manifest.name, manifest.parameters)
        assert manifest.input.shape[0] == -1 and manifest.output.shape[0] == -1
        assert [k.block for k in manifest.experts_kept] == [0, 1, 2, 3]
        assert all(b.std > 0 for b in manifest.bands)
        # Synthetic scenes, calibrated to Level-2A and IW GRDH sigma0, have no scale: optical specialists learned
        # surface reflectance, radar ones sigma0.
        optical = any(m not in ("SAR", "ELE") for m in manifest.modalities)
        assert manifest.reflectance == ("surface" if optical else None) and manifest.pixel_size_m is None
        assert manifest.backscatter == ("sigma0" if "SAR" in manifest.modalities else None)
        assert not list(entry.parent.glob(".staging-*"))


def test_manifest_describes_task_head_and_bands(repo):
    flood = verify_entry(repo / "flood-sar" / "1")
    assert flood.head == "mask" and flood.classes == ["dry", "flooded"]
    assert flood.band_names == ["VV", "VH"] and flood.bands[0].unit == "dB"
    assert flood.output.shape == [-1, 2, 32, 32]
    wildfire = verify_entry(repo / "wildfire-swir" / "1")
    assert wildfire.head == "class" and wildfire.output.shape == [-1, 2]
    assert wildfire.band_names == ["B11", "B12"] and wildfire.bands[0].scale == pytest.approx(1e-4)
    seg = verify_entry(repo / "landcover-seg-rgb" / "1")
    assert seg.band_names == ["B04", "B03", "B02"] and len(seg.classes) == 7


def test_onnx_model_runs_any_batch_size_and_outputs_probabilities(repo):
    entry = repo / "flood-sar" / "1"
    manifest = verify_entry(entry)
    session = ort.InferenceSession(str(entry / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [manifest.input.name]
    for n in (1, 7, 32):
        x = np.random.default_rng(n).normal(-12, 5, (n, 2, 32, 32)).astype(np.float32)
        out = session.run(None, {manifest.input.name: x})[0]
        assert out.shape == (n, 2, 32, 32)
        assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_tampered_model_no_longer_matches_its_manifest(repo, tmp_path):
    entry = tmp_path / "wildfire-swir" / "1"
    shutil.copytree(repo / "wildfire-swir" / "1", entry)
    verify_entry(entry)
    with open(entry / "model.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match="model.onnx has sha256"):
        verify_entry(entry)
    (entry / "model.onnx").unlink()
    with pytest.raises(ManifestError, match="missing"):
        verify_entry(entry)


@pytest.fixture(scope="module")
def wildfire_specialist(tiny_run):
    model, _ = load_model(tiny_run / "checkpoint.pt")
    spec, _ = finetune(prune(model, ["SWIR"]).model, get_task("wildfire"), ["SWIR"],
                       steps=5, batch_size=8, lr=1e-3, seed=0, full=False)
    return model, spec.eval()


def test_entries_record_each_blocks_engine_form_and_ship_the_sparse_graph(repo):
    for entry in scan_repository(repo):
        manifest = verify_entry(entry)
        assert [k.form for k in manifest.experts_kept] == ["mlp" if len(k.experts) == 1 else "sparse"
                                                           for k in manifest.experts_kept], manifest.name
        ops = {n.op_type for n in onnx.load(entry / "model.onnx").graph.node}
        if any(k.form == "sparse" for k in manifest.experts_kept):
            assert {"NonZero", "ScatterND"} <= ops, manifest.name


@pytest.fixture(scope="module")
def wildfire_onnx(wildfire_specialist, tmp_path_factory) -> Path:
    """The specialist exported as it ships (sparse), once for the tests that read the graph (6 s an export)."""
    path = tmp_path_factory.mktemp("wildfire-onnx") / "model.onnx"
    export_onnx(wildfire_specialist[1], path, opset=18)
    return path


@pytest.mark.parametrize("form", ["sparse", "dense"])
def test_onnx_runtime_matches_pytorch_on_batches_of_1_7_and_32(wildfire_specialist, wildfire_onnx, tmp_path, form):
    _, spec = wildfire_specialist
    path = wildfire_onnx if form == "sparse" else tmp_path / "model.onnx"
    if form != "sparse":
        export_onnx(spec, path, opset=18, form=form)
    worst = check_parity(spec, path, tolerance=1e-4)
    print(f"{form}: max |ONNX Runtime - PyTorch| = {worst:.2e}")
    assert worst <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(7, 2, 32, 32) * 0.4
    with torch.no_grad():
        assert np.abs(session.run(None, {"input": x.numpy()})[0] - spec(x).numpy()).max() <= 1e-4


def test_onnx_runtime_fuses_every_gelu_of_the_shipped_graph_into_one_kernel(wildfire_onnx, tmp_path):
    shipped = Counter(n.op_type for n in onnx.load(wildfire_onnx).graph.node)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(wildfire_onnx), options, providers=["CPUExecutionProvider"])
    optimized = Counter(n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node)
    assert shipped["Erf"] > 0 and "Gelu" not in shipped, "plain opset-18 operators ship (TensorRT parses them)"
    assert (optimized["Gelu"], optimized["Erf"]) == (shipped["Erf"], 0)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_the_gelu_translation_computes_what_pytorch_does(approximate, tmp_path):
    x = torch.linspace(-8, 8, 4001).reshape(1, -1)
    module = torch.nn.GELU(approximate=approximate).eval()
    torch.onnx.export(module, (x,), str(tmp_path / "gelu.onnx"), dynamo=True, opset_version=18,
                      custom_translation_table=TRANSLATIONS)
    session = ort.InferenceSession(str(tmp_path / "gelu.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] - module(x).numpy()).max() <= 1e-6


def test_sparse_graph_is_right_when_an_expert_gets_no_token(wildfire_specialist, tmp_path):
    """The graph keeps every kept expert's branch; one that no token chose gathers nothing and adds nothing."""
    _, spec = wildfire_specialist
    spec = copy.deepcopy(spec)
    moe = next(b.ffn for b in spec.backbone.blocks if isinstance(b.ffn, MoE))
    with torch.no_grad():
        moe.router.modality_bias[:, 1:] = -1e4  # every token of this block chooses its first kept expert
    x = torch.rand(5, 2, 32, 32) * 0.4
    with torch.no_grad():
        chosen = spec.backbone.forward_features(spec.split(x)).routing[0].experts
    assert chosen.unique().tolist() == [0]
    export_onnx(spec, tmp_path / "model.onnx", opset=18)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        with torch.no_grad():
            assert np.abs(session.run(None, {"input": x[:n].numpy()})[0] - spec(x[:n]).numpy()).max() <= 1e-5


def test_blocks_left_with_one_expert_are_plain_mlps_in_every_form(tiny_run):
    model, _ = load_model(tiny_run / "checkpoint.pt")
    task = get_task("landcover")
    one = prune(model, ["RGB"], keep_top=1, scenes=32)
    spec = Specialist(one.model, make_head(task, one.model), task.name, ["RGB"], kept=one.kept, source_config=model.cfg)
    assert block_forms(spec) == dict.fromkeys(model.cfg.moe_blocks, "mlp")
    assert block_forms(spec, "dense") == dict.fromkeys(model.cfg.moe_blocks, "mlp")
    with pytest.raises(ValueError, match="unknown export form"):
        export_onnx(spec, Path("unused.onnx"), opset=18, form="fold")


def test_a_build_that_fails_parity_leaves_no_entry(wildfire_specialist, tmp_path):
    model, _ = wildfire_specialist
    options = BuildOptions(repo=tmp_path, finetune_steps=2, tolerance=0.0, trt=False)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        build_specialist(model, "0" * 64, get_task("wildfire"), ["SWIR"], options)
    assert list((tmp_path / "wildfire-swir").iterdir()) == []


def test_versions_count_up_and_record_the_pixel_size_given(wildfire_specialist, repo, tmp_path):
    """A build next to version 1 (the suite's built entry, copied) writes version 2; the demo model, pre-trained on
    synthetic scenes, records no pixel size, a build told one records it."""
    model, _ = wildfire_specialist
    shutil.copytree(repo / "flood-sar" / "1", tmp_path / "flood-sar" / "1")
    second = build_specialist(model, "0" * 64, get_task("flood"), ["SAR"],
                              BuildOptions(repo=tmp_path, finetune_steps=2, trt=False, pixel_size_m=37.5))
    assert second == tmp_path / "flood-sar" / "2"
    assert json.loads((second / "manifest.json").read_text())["version"] == 2
    assert verify_entry(second).pixel_size_m == 37.5 and verify_entry(repo / "flood-sar" / "1").pixel_size_m is None
    assert sorted(scan_repository(tmp_path)) == [tmp_path / "flood-sar" / "1", second]


def test_a_failed_build_among_parallel_ones_stops_the_queue_and_leaves_no_staging(tmp_path, tiny_run):
    (tmp_path / "landcover-rgb" / "1").mkdir(parents=True)  # the first specialist's version is taken
    result = build("--all", "--jobs", "2", "--version", "1", "--finetune-steps", "1", "--no-trt",
                   "--repo", str(tmp_path), "--checkpoint", str(tiny_run / "checkpoint.pt"))
    assert result.returncode != 0
    assert f"{tmp_path / 'landcover-rgb' / '1'} already exists" in result.stderr
    built = list(tmp_path.glob("*/1/manifest.json"))
    # The build running in the other process finishes its entry; the rest never start.
    assert len(built) <= 1, built
    assert not list(tmp_path.glob("*/.staging-*"))
    for entry in built:
        verify_entry(entry.parent)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --modality"),
        (["--all", "--jobs", "0"], "--jobs must be at least 1"),
        (["--modality", "SWIR", "--task", "cloud"], "cloud"),
        (["--modality", "thermal"], "unknown modality"),
        (["--modality", "RGB", "--modality", "SAR"], "takes at most 1 modality per specialist"),
        (["--modality", "RGB", "--full-finetune", "flood,clouds-rgb"], "clouds-rgb is neither a task nor a specialist"),
        (["--modality", "RGB", "--pixel-size", "0"], "--pixel-size must be a positive number of metres"),
    ],
)
def test_bad_requests_are_refused_before_any_work(args, message, tmp_path, capsys):
    # The CLI's own entry point in this process: a subprocess would spend 3-4 s importing torch for each case.
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--repo", str(tmp_path), "--checkpoint", str(tmp_path / "none.pt")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

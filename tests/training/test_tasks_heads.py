"""Tasks, heads and the Specialist wrapper: labels, shapes, the stacked-band path, files, ONNX."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mapex_serve.bands import MODALITIES, MODALITY_NAMES, bands_of
from training.config import preset
from training.data.synthetic import LANDCOVER_CLASSES, SceneConfig, generate_batch
from training.heads import ClassHead, SegHead
from training.model import Encoded, Mapex
from training.specialist import Specialist
from training.tasks import TASKS, get_task


@pytest.fixture(scope="module")
def batch():
    return generate_batch(11, 6, SceneConfig(size=32, flood_prob=1.0, burn_prob=0.5))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Mapex(preset("tiny")).eval()
    with torch.no_grad():  # pretend statistics, so that normalisation is not the identity
        m.band_mean.uniform_(-1, 1)
        m.band_std.uniform_(0.5, 2)
    return m


def _tiles(modalities, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, len(MODALITIES[m]), 32, 32, generator=g) for m in modalities}


def test_task_table_and_labels(batch):
    assert set(TASKS) == {"landcover", "flood", "wildfire", "landcover-seg"}
    assert get_task("landcover").default_modalities == tuple((m,) for m in MODALITY_NAMES)
    assert get_task("flood").default_modalities == (("SAR",),)
    assert get_task("wildfire").default_modalities == (("SWIR",), ("RGB", "SWIR"))
    assert get_task("landcover-seg").default_modalities == (("RGB",),)
    expected = {"landcover": (6,), "wildfire": (6,), "flood": (6, 32, 32), "landcover-seg": (6, 32, 32)}
    for name, task in TASKS.items():
        y = task.labels(batch)
        assert y.dtype == torch.int64 and tuple(y.shape) == expected[name], name
        assert 0 <= int(y.min()) and int(y.max()) < len(task.classes), name
        assert task.head == ("class" if len(expected[name]) == 1 else "mask")
    assert get_task("landcover").classes == get_task("landcover-seg").classes == LANDCOVER_CLASSES
    assert get_task("flood").classes == ("dry", "flooded") and get_task("wildfire").classes == ("unburned", "burned")
    assert torch.equal(get_task("wildfire").labels(batch), batch.has_burn.long())
    assert torch.equal(get_task("flood").labels(batch), batch.flood.long())
    assert torch.equal(get_task("landcover").labels(batch), batch.tile_class)
    assert get_task("flood").labels(batch).sum() > 0, "flood_prob=1 scenes should hold flooded pixels"


def test_event_tasks_draw_event_rich_scenes():
    assert get_task("flood").scene_config(32) == SceneConfig(size=32, flood_prob=0.6)
    assert get_task("wildfire").scene_config(64).burn_prob == 0.5
    assert get_task("landcover").scene_config(32) == SceneConfig(size=32)


def test_unknown_task_and_modality_checks():
    with pytest.raises(ValueError, match="landcover, flood, wildfire, landcover-seg"):
        get_task("floods")
    flood = get_task("flood")
    assert flood.check_modalities(["s1"]) == ("SAR",)
    assert flood.check_modalities(["ELE", "SAR"]) == ("SAR", "ELE")  # canonical order, DEM as an extra
    with pytest.raises(ValueError, match="at least one of SAR"):
        flood.check_modalities(["ELE"])
    with pytest.raises(ValueError, match="unknown modality 'THERMAL'"):
        flood.check_modalities(["THERMAL"])
    with pytest.raises(ValueError, match="twice"):
        get_task("landcover").check_modalities(["RGB", "rgb"])
    assert get_task("wildfire").check_modalities(["SAR", "RGB"]) == ("RGB", "SAR")
    with pytest.raises(ValueError, match="'landcover' takes at most 1 modality per specialist, got SAR, RGB"):
        get_task("landcover").check_modalities(["SAR", "RGB"])


@pytest.mark.parametrize("modalities", [["SAR"], ["RGB", "NIR", "ELE"]])
def test_head_shapes(model, modalities):
    with torch.no_grad():
        encoded = model.forward_features(_tiles(modalities, n=3))
        assert ClassHead(128, 7)(encoded).shape == (3, 7)
        assert ClassHead(128, 2, hidden=32)(encoded).shape == (3, 2)
        assert SegHead(128, 2, patch_size=8, grid=4)(encoded).shape == (3, 2, 32, 32)


def test_seg_head_averages_each_position_over_modalities():
    torch.manual_seed(0)
    head = SegHead(16, 3, patch_size=4, grid=2).eval()
    a, b = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    enc = lambda t: Encoded(t, None, None, [], None)  # noqa: E731
    with torch.no_grad():
        twice = head(enc(torch.cat([a, a], dim=1)))
        assert torch.allclose(twice, head(enc(a)), atol=1e-6)
        assert torch.allclose(head(enc(torch.cat([a, b], dim=1))), head(enc((a + b) / 2)), atol=1e-6)
        assert not torch.allclose(head(enc(a)), head(enc(b)))
    with pytest.raises(ValueError, match="power-of-two"):
        SegHead(16, 3, patch_size=6, grid=2)


@pytest.mark.parametrize("task", ["landcover", "flood"])
def test_specialist_stacked_bands_equal_the_per_modality_path(model, task):
    torch.manual_seed(1)
    t = get_task(task)
    head = ClassHead(128, len(t.classes)) if t.head == "class" else SegHead(128, len(t.classes), 8, 4)
    spec = Specialist(model, head, task, ["RGB", "SAR"]).eval()
    assert spec.band_names == bands_of(["RGB", "SAR"]) == ("B04", "B03", "B02", "VV", "VH")
    inputs = _tiles(["RGB", "SAR"], n=2)
    x = torch.cat([inputs["RGB"], inputs["SAR"]], dim=1)
    with torch.no_grad():
        probs = spec(x)
        reference = head(model.forward_features(inputs)).softmax(dim=1)
        swapped = spec(torch.cat([inputs["SAR"], inputs["RGB"]], dim=1))
    assert torch.allclose(probs, reference, atol=1e-6)
    assert torch.allclose(probs.sum(dim=1), torch.ones(()), atol=1e-5)
    assert not torch.allclose(probs, swapped, atol=1e-4), "band order must matter"
    assert torch.allclose(spec.embed(x), model.forward_features(inputs).pooled(), atol=1e-6)
    with pytest.raises(ValueError, match="expected \\(B, 5, H, W\\) with bands B04, B03, B02, VV, VH"):
        spec(x[:, :4])


def test_save_and_load_round_trip_gives_identical_outputs(model, tmp_path):
    torch.manual_seed(2)
    spec = Specialist(model, SegHead(128, 7, 8, 4), "landcover-seg", ["NIR"], info={"finetune": {"steps": 3}}).eval()
    path = spec.save(tmp_path / "spec.pt")
    loaded = Specialist.load(path)
    x = _tiles(["NIR"], n=2)["NIR"]
    with torch.no_grad():
        assert torch.equal(loaded(x), spec(x))
    assert loaded.task == "landcover-seg" and loaded.modalities == ("NIR",) and not loaded.pruned
    assert loaded.info["finetune"] == {"steps": 3}
    assert loaded.parameter_counts.full == loaded.parameter_counts.pruned == model.num_parameters()
    assert not list(tmp_path.glob("*.tmp"))


def test_pruned_specialist_round_trip(model, tmp_path):
    prune = pytest.importorskip("export.prune")
    result = prune.prune(model, ["SWIR"], scenes=32)
    torch.manual_seed(3)
    spec = Specialist(result.model, ClassHead(128, 2), "wildfire", ["SWIR"], kept=result.kept,
                      source_config=model.cfg, parameters=result.parameters).eval()
    loaded = Specialist.load(spec.save(tmp_path / "pruned.pt"))
    assert loaded.pruned and loaded.kept == result.kept and loaded.backbone.cfg.modalities == ("SWIR",)
    assert loaded.parameter_counts.pruned == result.model.num_parameters() < model.num_parameters()
    x = _tiles(["SWIR"], n=4, seed=5)["SWIR"]
    with torch.no_grad():
        assert torch.equal(loaded(x), spec(x))
    # Without the pruning record the file could not be rebuilt: refuse to write it.
    with pytest.raises(ValueError, match="kept= and source_config="):
        Specialist(result.model, ClassHead(128, 2), "wildfire", ["SWIR"]).save(tmp_path / "bad.pt")


def test_load_refuses_a_pretraining_checkpoint(tmp_path, model):
    from training.checkpoint import CheckpointError, save_atomic

    save_atomic({"config": model.cfg.to_dict(), "model": model.state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="not a specialist"):
        Specialist.load(tmp_path / "ckpt.pt")


class _TokensToHead(torch.nn.Module):
    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(Encoded(tokens, None, None, [], None))


@pytest.mark.parametrize("head", [SegHead(128, 2, 8, 4), ClassHead(128, 7)], ids=["mask", "class"])
def test_heads_export_to_onnx_with_a_dynamic_batch(head, tmp_path):
    wrapped = _TokensToHead(head).eval()
    path = tmp_path / "head.onnx"
    torch.onnx.export(wrapped, (torch.randn(2, 32, 128),), str(path), dynamo=True, input_names=["tokens"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):  # two modalities' tokens, batch sizes other than the example's
        tokens = torch.randn(n, 32, 128)
        got = session.run(None, {"tokens": tokens.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, wrapped(tokens).numpy(), atol=1e-4)

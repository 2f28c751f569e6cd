"""Pruning on a real 300-step checkpoint: what is kept, what it costs, how close it stays."""

import numpy as np
import pytest
import torch

from export.prune import apply_pruning, choose_experts, prune
from mapex_serve.bands import MODALITY_NAMES
from training.checkpoint import load_model
from training.config import MapexConfig
from training.evaluate import batches_of, embed, knn_accuracy, landcover_split
from training.model import Mapex
from training.moe import Mlp, MoE
from training.routing import RouteCounts


@pytest.fixture(scope="module")
def full(tiny_run) -> Mapex:
    return load_model(tiny_run / "checkpoint.pt")[0]


def test_choose_experts_keeps_the_fewest_covering_the_share():
    counts = np.zeros((2, 2, 4), dtype=np.int64)
    counts[0, 0] = [60, 30, 6, 4]  # RGB: 60+30 = 90% < 95%, +6 = 96%
    counts[1, 0] = [0, 100, 0, 0]
    counts[:, 1] = [1000, 1000, 1000, 1000]  # another modality, not part of the task
    rc = RouteCounts((0, 1), ("RGB", "SAR"), counts)
    kept = choose_experts(rc, ["RGB"], coverage=0.95)
    assert [k.experts for k in kept] == [[0, 1, 2], [1]]
    assert kept[0].coverage == pytest.approx(0.96) and kept[1].coverage == 1.0 and kept[0].of == 4
    assert [k.experts for k in choose_experts(rc, ["RGB"], coverage=0.9)] == [[0, 1], [1]]
    assert [k.experts for k in choose_experts(rc, ["RGB"], keep_top=1)] == [[0], [1]]
    assert [len(k.experts) for k in choose_experts(rc, ["RGB", "SAR"])] == [4, 4]
    with pytest.raises(ValueError, match="coverage"):
        choose_experts(rc, ["RGB"], coverage=0)


@pytest.mark.parametrize("modality", MODALITY_NAMES)
def test_specialist_is_at_most_half_the_model_and_matches_it_on_its_modality(full, modality):
    result = prune(full, [modality])
    assert result.parameters.full == full.num_parameters()
    assert result.parameters.pruned == result.model.num_parameters()
    assert result.parameters.ratio <= 0.5, result.parameters
    assert list(result.model.patch_embed) == [modality] and result.model.cfg.modalities == (modality,)
    assert all(k.coverage >= 0.95 for k in result.kept)

    split = landcover_split(modality, seed=0)
    full_train, full_test = embed(full, batches_of(split.train)), embed(full, batches_of(split.test))
    spec_train, spec_test = embed(result.model, batches_of(split.train)), embed(result.model, batches_of(split.test))
    cosine = float(np.mean(np.sum(full_test * spec_test, axis=1)
                           / (np.linalg.norm(full_test, axis=1) * np.linalg.norm(spec_test, axis=1))))
    acc_full = knn_accuracy(full_train, split.train_labels, full_test, split.test_labels)
    acc_spec = knn_accuracy(spec_train, split.train_labels, spec_test, split.test_labels)
    print(f"{modality}: params {result.parameters.ratio:.3f}x, cosine {cosine:.4f}, "
          f"k-NN {100 * acc_full:.1f}% full vs {100 * acc_spec:.1f}% pruned")
    assert cosine >= 0.98
    assert abs(acc_full - acc_spec) <= 0.01


def test_a_saved_pruned_backbone_rebuilds_from_config_and_kept_experts(full):
    result = prune(full, ["SAR", "SWIR"])
    fresh = Mapex(MapexConfig.from_dict({**full.cfg.to_dict(), "modalities": ("SAR", "SWIR")}))
    rebuilt = apply_pruning(fresh, ["SAR", "SWIR"], result.kept)
    rebuilt.load_state_dict(result.model.state_dict())
    x = {"SAR": torch.randn(3, 2, 32, 32) * 5 - 12, "SWIR": torch.rand(3, 2, 32, 32) * 0.3}
    with torch.no_grad():
        assert torch.equal(rebuilt(x), result.model(x))


def test_keep_top_one_turns_blocks_into_plain_mlps(full):
    result = prune(full, ["RGB"], keep_top=1)
    assert all(isinstance(b.ffn, Mlp) and not isinstance(b.ffn, MoE) for b in result.model.blocks)
    assert result.parameters.ratio < prune(full, ["RGB"]).parameters.ratio
    test_x = landcover_split("RGB", seed=0).test.inputs["RGB"]
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(full({"RGB": test_x}), result.model({"RGB": test_x})).mean()
    assert cosine > 0.8, "one expert per block should still be a fair approximation"


def test_dense_dispatch_equals_sparse_dispatch(full):
    pruned = prune(full, ["NIR"]).model
    x = {"NIR": torch.rand(4, 2, 32, 32) * 0.5}
    with torch.no_grad():
        sparse = pruned(x)
        for m in pruned.modules():
            if isinstance(m, MoE):
                m.dense = True
        dense = pruned(x)
    assert torch.allclose(sparse, dense, atol=1e-6)


def test_pruning_other_routers(tmp_path):
    for router in ("positional", "deterministic"):
        model = Mapex(MapexConfig(router=router)).eval()
        result = prune(model, ["ELE"], scenes=32)
        x = {"ELE": torch.randn(2, 1, 32, 32) * 100 + 500}
        with torch.no_grad():
            assert result.model(x).shape == (2, 128)
        if router == "deterministic":
            assert [k.experts for k in result.kept] == [[10, 11]] * 4


def test_unknown_modality_is_refused(full):
    pruned = prune(full, ["SAR"]).model
    with pytest.raises(ValueError, match=r"\['RGB'\] are not in this model"):
        apply_pruning(pruned, ["RGB"], [])

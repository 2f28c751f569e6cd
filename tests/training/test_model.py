import pytest
import torch

from mapex_serve.bands import MODALITIES
from training.config import MapexConfig, preset
from training.model import Mapex, sincos_pos_embed_2d
from training.moe import MoE, expert_groups


def _inputs(cfg: MapexConfig, batch: int = 2, modalities=None, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    names = modalities or cfg.modalities
    return {m: torch.randn(batch, len(MODALITIES[m]), cfg.img_size, cfg.img_size, generator=g) for m in names}


@pytest.fixture(scope="module")
def cfg() -> MapexConfig:
    return preset("tiny")


def test_any_subset_of_modalities_is_encoded_as_its_tokens_only(cfg):
    torch.manual_seed(0)
    model = Mapex(cfg).eval()
    grid = cfg.tokens_per_modality
    for subset in (["SAR"], ["RGB", "SWIR"], list(cfg.modalities)):
        out = model.forward_features(_inputs(cfg, 3, subset))
        assert out.tokens.shape == (3, grid * len(subset), cfg.embed_dim)
        assert sorted({cfg.modalities[i] for i in out.modality.unique().tolist()}) == sorted(subset)
        assert len(out.routing) == len(cfg.moe_blocks)
        assert out.routing[0].experts.shape == (3 * grid * len(subset), cfg.top_k)
        assert model(_inputs(cfg, 3, subset)).shape == (3, cfg.embed_dim)


def test_absent_modalities_are_absent_tokens_not_zeros(cfg):
    # Tokens of one modality depend on the others through attention: adding SAR changes RGB's
    # embedding, and dropping it again restores it exactly (absent = no tokens, not zeros).
    torch.manual_seed(0)
    model = Mapex(cfg).eval()
    x = _inputs(cfg, 2, ["RGB", "SAR"])
    alone = model.forward_features({"RGB": x["RGB"]}).tokens
    together = model.forward_features(x).tokens[:, : cfg.tokens_per_modality]
    assert not torch.allclose(alone, together)
    assert torch.equal(alone, model.forward_features({"RGB": x["RGB"]}).tokens)


def test_input_errors_name_what_was_expected(cfg):
    model = Mapex(cfg)
    with pytest.raises(ValueError, match=r"expected \(B, 2, 32, 32\)"):
        model.forward_features({"SAR": torch.zeros(1, 3, 32, 32)})
    with pytest.raises(ValueError, match="no input modality"):
        model.forward_features({})
    pruned = Mapex(preset("tiny", modalities=("SAR",)))
    with pytest.raises(ValueError, match=r"\['RGB'\] are not part of this model"):
        pruned.forward_features(_inputs(cfg, 1, ["RGB"]))


def test_pretrain_loss_backpropagates_to_the_present_modalities_only(cfg):
    torch.manual_seed(0)
    model = Mapex(cfg)
    out = model.forward_pretrain(_inputs(cfg, 4, ["SWIR", "ELE"]), generator=torch.Generator().manual_seed(1))
    assert out.loss.ndim == 0 and out.recon_loss > 0 and out.balance_loss > 0
    out.loss.backward()
    assert model.patch_embed["SWIR"].weight.grad.abs().sum() > 0
    assert model.patch_embed["RGB"].weight.grad is None
    assert model.decoder_pred["ELE"].weight.grad.abs().sum() > 0


def test_masking_keeps_a_quarter_of_tokens_and_is_seeded(cfg):
    torch.manual_seed(0)
    model = Mapex(cfg)
    x = _inputs(cfg, 2)
    a = model.forward_pretrain(x, generator=torch.Generator().manual_seed(3))
    b = model.forward_pretrain(x, generator=torch.Generator().manual_seed(3))
    c = model.forward_pretrain(x, generator=torch.Generator().manual_seed(4))
    visible = 2 * round(cfg.tokens_per_modality * len(cfg.modalities) * 0.25)
    assert a.routing[0].experts.shape[0] == visible
    assert torch.equal(a.recon_loss, b.recon_loss) and not torch.equal(a.recon_loss, c.recon_loss)


def test_normalisation_uses_stored_band_statistics(cfg):
    model = Mapex(cfg)
    mean = {b: 10.0 for b in model.band_names}
    std = {b: 2.0 for b in model.band_names}
    model.set_band_stats(mean, std)
    assert torch.allclose(model.normalise("SAR", torch.full((1, 2, 4, 4), 14.0)), torch.full((1, 2, 4, 4), 2.0))
    assert model.band_stats()["VV"] == (10.0, 2.0)


def test_deterministic_router_is_a_fixed_modality_to_expert_assignment():
    cfg = preset("tiny", router="deterministic")
    model = Mapex(cfg).eval()
    groups = expert_groups(cfg.num_experts, len(cfg.modalities))
    out = model.forward_features(_inputs(cfg, 2))
    for route in out.routing:
        for m, group in enumerate(groups):
            chosen = set(route.experts[route.modality == m].flatten().tolist())
            assert chosen == set(group)
    assert float(out.balance_loss) == 0.0


def test_modality_router_starts_with_a_prior_towards_each_modality_s_own_experts(cfg):
    torch.manual_seed(0)
    model = Mapex(cfg).eval()
    groups = expert_groups(cfg.num_experts, len(cfg.modalities))
    route = model.forward_features(_inputs(cfg, 4)).routing[0]
    own = sum(int(torch.isin(route.experts[route.modality == m], torch.tensor(g)).sum()) for m, g in enumerate(groups))
    assert own / route.experts.numel() > 0.8


def test_positional_router_ignores_modality():
    torch.manual_seed(0)
    model = Mapex(preset("tiny", router="positional")).eval()
    assert not hasattr(model.blocks[0].ffn.router, "modality_bias")
    route = model.forward_features(_inputs(preset("tiny"), 4)).routing[0]
    assert len(route.experts.unique()) > 2


def test_balancing_loss_is_one_when_balanced_and_larger_when_collapsed():
    moe = MoE(8, 16, 4, 2, "modality", 1, 0.0)
    n = 400
    balanced = type("R", (), {"experts": torch.arange(n).remainder(4)[:, None], "probs": torch.full((n, 4), 0.25)})
    collapsed = type("R", (), {"experts": torch.zeros(n, 1, dtype=torch.long),
                               "probs": torch.tensor([[0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3]]).expand(n, -1)})
    assert float(moe.balance_loss(balanced)) == pytest.approx(1.0)
    assert float(moe.balance_loss(collapsed)) == pytest.approx(3.6)


def test_moe_output_is_the_gate_weighted_sum_of_chosen_experts():
    torch.manual_seed(0)
    moe = MoE(8, 16, 4, 2, "modality", 2, 1.0).eval()
    x = torch.randn(10, 8)
    modality = torch.tensor([0, 1] * 5)
    out, route, _ = moe(x, torch.zeros_like(x), modality, torch.arange(10))
    expected = torch.stack([
        sum(route.weights[i, j] * moe.experts[int(route.experts[i, j])](x[i]) for j in range(2)) for i in range(10)
    ])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(route.weights.sum(dim=1), torch.ones(10))


def test_sincos_position_embedding_is_distinct_per_patch():
    pe = sincos_pos_embed_2d(4, 16)
    assert pe.shape == (16, 16)
    assert torch.cdist(pe, pe).add(torch.eye(16)).min() > 0.1


def test_presets_and_config_validation():
    tiny = Mapex(preset("tiny"))
    assert 2e6 < tiny.num_parameters() < 6e6
    # The paper-sized preset: about 130 M parameters in all (the figure docs/model.md records).
    with torch.device("meta"):  # shapes only: counting needs no weights
        paper = Mapex(preset("mapex-130m"))
    assert paper.num_parameters(encoder_only=False) == 134_520_352 and paper.num_parameters() == 131_951_904
    assert abs(paper.num_parameters(encoder_only=False) / 130e6 - 1) < 0.05
    assert paper.cfg.moe_blocks == (5, 7, 9, 11) and paper.cfg.num_experts == 12 and paper.cfg.img_size == 128
    with pytest.raises(ValueError, match="router must be one of"):
        preset("tiny", router="random")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        preset("tiny", img_size=30)
    assert MapexConfig.from_dict(preset("tiny", router="positional").to_dict()) == preset("tiny", router="positional")

"""Modality-aware pruning: keep the experts a task's modalities use, drop everything else.

Route the task modalities' tokens of calibration scenes through the full model, count per MoE
block which experts they reach, keep the smallest set covering ``coverage`` of them (or the
``keep_top`` most used), and build a copy that holds only those experts and only the task
modalities' embeddings and decoder parts. Tokens whose expert was kept are computed exactly as
in the full model: the router still normalises over every expert's logit, it just can no longer
choose a dropped one. A block left with one expert becomes a plain MLP with no router.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mapex_serve.bands import bands_of, resolve_modality
from mapex_serve.repository import ExpertsKept, ParameterCounts
from training.data import SceneConfig, generate_batch
from training.model import Mapex
from training.moe import Mlp, MoE, Router
from training.routing import RouteCounts, count_routes, count_synthetic_routes
from training.seeds import CALIBRATION, derive_seed

__all__ = ["PruneResult", "apply_pruning", "calibrate", "choose_experts", "prune"]


@dataclass
class PruneResult:
    model: Mapex
    kept: list[ExpertsKept]
    parameters: ParameterCounts


def calibrate(model: Mapex, modalities: Sequence[str], scenes: int = 256, seed: int = 0, batch: int = 64) -> RouteCounts:
    """Route the tokens of synthetic calibration scenes given only ``modalities`` (as the specialist will see them)."""
    return count_synthetic_routes(model, CALIBRATION, scenes, seed, batch, modalities)


def choose_experts(
    counts: RouteCounts, modalities: Sequence[str], coverage: float = 0.95, keep_top: int | None = None
) -> list[ExpertsKept]:
    """Per MoE block, the experts to keep: most used first, until ``coverage`` of the tokens (or ``keep_top`` experts)."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    if keep_top is not None and keep_top < 1:
        raise ValueError(f"keep_top must be >= 1, got {keep_top}")
    rows = [counts.modalities.index(m) for m in modalities]
    kept = []
    for i, block in enumerate(counts.layers):
        used = counts.counts[i, rows].sum(axis=0)
        order = np.argsort(-used, kind="stable")
        share = np.cumsum(used[order]) / max(used.sum(), 1)
        n = keep_top if keep_top is not None else int(np.searchsorted(share, coverage - 1e-12) + 1)
        n = max(1, min(n, len(order)))
        experts = sorted(int(e) for e in order[:n])
        kept.append(ExpertsKept(block=block, experts=experts, of=len(used), coverage=float(share[n - 1])))
    return kept


def _prune_router(router: Router, rows: list[int], keep: list[int]) -> None:
    """Keep the experts ``keep`` for dispatch and the modalities ``rows``; dropped logits stay for normalisation."""
    drop = [e for e in range(router.num_experts) if e not in keep]
    if router.kind == "deterministic":
        local = torch.full((router.num_experts,), keep[0], dtype=torch.long)
        local[keep] = torch.arange(len(keep))
        local[drop] = 0  # a dropped fixed assignment falls back to the first kept expert
        router.assignment = local[router.assignment[rows]]
        router.group_size = router.group_size[rows]
    else:
        weight = router.gate.weight.detach()
        router.gate = _linear(weight[keep])
        if drop:
            router.dropped = _linear(weight[drop])
        if router.kind == "modality":
            bias = router.modality_bias.detach()[rows]
            router.modality_bias = nn.Parameter(bias[:, keep].clone())
            if drop:
                router.dropped_bias = nn.Parameter(bias[:, drop].clone())
    router.num_experts, router.top_k = len(keep), min(router.top_k, len(keep))


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight = nn.Parameter(weight.clone())
    return layer


def apply_pruning(
    model: Mapex, modalities: Sequence[str], kept: Sequence[ExpertsKept], gate_scale: dict[int, float] | None = None
) -> Mapex:
    """A pruned copy of ``model``: only ``modalities`` and the ``kept`` experts remain.

    Structural only (no calibration), so it also rebuilds a saved specialist's architecture on a
    fresh ``Mapex`` before its weights are loaded. ``gate_scale`` (block -> mean gate weight) is
    folded into a single remaining expert, which the full model scales by its gate.
    """
    modalities = [resolve_modality(m) for m in modalities]
    if missing := [m for m in modalities if m not in model.cfg.modalities]:
        raise ValueError(f"modalities {missing} are not in this model ({list(model.cfg.modalities)})")
    rows = [model.cfg.modalities.index(m) for m in modalities]
    pruned = copy.deepcopy(model)
    pruned.cfg = model.cfg.__class__(**{**model.cfg.to_dict(), "modalities": tuple(modalities)})
    pruned.patch_embed = nn.ModuleDict({m: pruned.patch_embed[m] for m in modalities})
    pruned.decoder_pred = nn.ModuleDict({m: pruned.decoder_pred[m] for m in modalities})
    pruned.modality_embed = nn.Parameter(model.modality_embed.detach()[rows].clone())
    pruned.decoder_modality_embed = nn.Parameter(model.decoder_modality_embed.detach()[rows].clone())
    band_idx = [model.band_names.index(b) for b in bands_of(modalities)]
    pruned.band_names = bands_of(modalities)
    pruned.band_mean = model.band_mean[band_idx].clone()
    pruned.band_std = model.band_std[band_idx].clone()

    by_block = {k.block: k for k in kept}
    for i, block in enumerate(pruned.blocks):
        if not isinstance(block.ffn, MoE):
            continue
        if i not in by_block:
            raise ValueError(f"no kept experts given for MoE block {i}")
        keep = by_block[i].experts
        if len(keep) == 1:
            mlp: Mlp = block.ffn.experts[keep[0]]
            scale = (gate_scale or {}).get(i, 1.0)
            with torch.no_grad():
                mlp.fc2.weight.mul_(scale)
                mlp.fc2.bias.mul_(scale)
            block.ffn = mlp
            continue
        block.ffn.experts = nn.ModuleList(block.ffn.experts[e] for e in keep)
        _prune_router(block.ffn.router, rows, keep)
    return pruned.eval()


def _mean_gate(model: Mapex, modalities: Sequence[str], kept: Sequence[ExpertsKept], seed: int,
               inputs: Mapping[str, torch.Tensor] | None = None) -> dict[int, float]:
    """Mean gate weight of the single expert left in a block, over calibration tokens routed to it."""
    single = {k.block: k.experts[0] for k in kept if len(k.experts) == 1}
    if not single:
        return {}
    if inputs is None:
        inputs = generate_batch(derive_seed(seed, CALIBRATION, 10_000), 64, SceneConfig(size=model.cfg.img_size),
                                modalities).inputs
    sums = dict.fromkeys(single, 0.0)
    counts = dict.fromkeys(single, 0)
    hooks = []
    for block_idx, expert in single.items():
        def hook(_m: nn.Module, args: tuple, out: object, b: int = block_idx, e: int = expert) -> None:
            chosen = out.experts == e
            sums[b] += float(out.weights[chosen].sum())
            counts[b] += int(chosen.sum())
        hooks.append(model.blocks[block_idx].ffn.router.register_forward_hook(hook))
    with torch.no_grad():
        model.eval().forward_features(inputs)
    for h in hooks:
        h.remove()
    return {b: sums[b] / counts[b] if counts[b] else 1.0 for b in single}


def prune(
    model: Mapex,
    modalities: Sequence[str],
    *,
    coverage: float = 0.95,
    keep_top: int | None = None,
    scenes: int = 256,
    seed: int = 0,
    calibration: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> PruneResult:
    """Calibrate, choose and apply: the specialist backbone for ``modalities``.

    ``calibration`` (batches of modality -> tensor, e.g. a real data set's training tiles)
    replaces the ``scenes`` synthetic calibration scenes.
    """
    modalities = [resolve_modality(m) for m in modalities]
    if calibration is not None:
        batches = [{m: b[m] for m in modalities} for b in calibration]
        if not batches:
            raise ValueError("calibration holds no batches")
        counts = count_routes(model, batches)
    else:
        batches = None
        counts = calibrate(model, modalities, scenes, seed)
    kept = choose_experts(counts, modalities, coverage, keep_top)
    gates = _mean_gate(model, modalities, kept, seed, batches[0] if batches else None)
    pruned = apply_pruning(model, modalities, kept, gates)
    return PruneResult(pruned, kept, ParameterCounts(full=model.num_parameters(), pruned=pruned.num_parameters()))

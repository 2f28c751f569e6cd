"""Counting where tokens go: per MoE layer, modality and expert.

The routing report and the pruner both start from these counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.data import SceneConfig, generate_batch
from training.model import Mapex
from training.seeds import derive_seed

__all__ = ["RouteCounts", "count_routes", "count_synthetic_routes"]


@dataclass
class RouteCounts:
    """Token-to-expert assignments counted over some scenes: ``counts[layer, modality, expert]``."""

    layers: tuple[int, ...]  # block index of each MoE layer
    modalities: tuple[str, ...]
    counts: np.ndarray  # (L, M, E) int64

    def shares(self) -> np.ndarray:
        """Share of each modality's assignments per expert (rows sum to 1 where a modality was seen)."""
        totals = self.counts.sum(axis=2, keepdims=True)
        return np.divide(self.counts, totals, out=np.zeros(self.counts.shape), where=totals > 0)

    def specialization(self, top: int = 2) -> dict[int, dict[str, float]]:
        """Per layer and modality: the share of its tokens that go to its ``top`` most used experts."""
        shares = np.sort(self.shares(), axis=2)[:, :, ::-1][:, :, :top].sum(axis=2)
        seen = self.counts.sum(axis=2) > 0
        return {
            layer: {m: float(shares[i, j]) for j, m in enumerate(self.modalities) if seen[i, j]}
            for i, layer in enumerate(self.layers)
        }


@torch.no_grad()
def count_routes(model: Mapex, batches: Iterable[Mapping[str, torch.Tensor]]) -> RouteCounts:
    """Route every token of every batch (no masking) and count assignments per layer, modality, expert."""
    cfg = model.cfg
    layers = tuple(cfg.moe_blocks)
    counts = np.zeros((len(layers), len(cfg.modalities), cfg.num_experts), dtype=np.int64)
    model.eval()
    for inputs in batches:
        for i, route in enumerate(model.forward_features(inputs).routing):
            k = route.experts.shape[1]
            flat = route.modality.repeat_interleave(k) * cfg.num_experts + route.experts.flatten()
            counts[i] += torch.bincount(flat, minlength=counts[i].size).reshape(counts[i].shape).cpu().numpy()
    return RouteCounts(layers, cfg.modalities, counts)


def count_synthetic_routes(
    model: Mapex, purpose: int, scenes: int, seed: int = 0, batch: int = 64, modalities: Sequence[str] | None = None
) -> RouteCounts:
    """``count_routes`` on ``scenes`` synthetic scenes keyed (``seed``, ``purpose``, chunk), drawn ``batch`` at a time.

    ``modalities`` limits the scenes to those modalities (what a specialist will see); default all.
    """
    scene = SceneConfig(size=model.cfg.img_size)
    chunks = (
        generate_batch(derive_seed(seed, purpose, i), min(batch, scenes - i * batch), scene,
                       model.cfg.modalities if modalities is None else modalities).inputs
        for i in range((scenes + batch - 1) // batch)
    )
    return count_routes(model, chunks)

"""Floating-point work of one tile through a specialist: what an engine's tiles/s mean in TFLOP/s."""

from __future__ import annotations

from typing import Any

from training.config import MapexConfig, preset

H200_FP16_TFLOPS = 989.0  # dense FP16/BF16 tensor-core peak of an H200 (SXM), without sparsity


def flops_per_tile(config: MapexConfig, channels: int, kept_experts: int, head_width: int = 32,
                   dense_experts: bool = True) -> float:
    """Multiply-adds x 2 of one tile through a one-modality specialist of ``config`` with a SegHead.

    Per token and block: q, k, v and the output projection (4 d^2), attention scores and mixing
    (2 n d), the MLP (2 d^2 r). In the MoE blocks every kept expert runs on every token with
    ``dense_experts`` (the dense export form), else one (the sparse form the build ships). Patch
    embedding and the head's 3 x 3 convolutions (one per doubling of resolution, ``head_width``
    channels) are added.
    """
    d, r, n = config.embed_dim, config.mlp_ratio, config.tokens_per_modality
    mlp = 2 * d * d * r
    per_token = config.depth * (4 * d * d + 2 * n * d + mlp)
    per_token += len(config.moe_blocks) * mlp * ((kept_experts if dense_experts else 1) - 1)
    per_token += config.patch_size ** 2 * channels * d
    grid, side = config.img_size // config.patch_size, config.img_size // config.patch_size
    head = d * head_width * grid * grid
    while side < config.img_size:
        side *= 2
        head += 9 * head_width * head_width * side * side
    return 2.0 * (per_token * n + head)


def kept_experts(manifest: Any) -> int:
    """The most experts the specialist keeps in one MoE block (2 where its manifest lists none)."""
    return max(len(b.experts) for b in manifest.experts_kept) if manifest.experts_kept else 2


def assumed_engine_tiles_s(manifest: Any, efficiency: float) -> tuple[float, float]:
    """FLOP a tile and tiles/s of ``manifest``'s specialist at the ``mapex-130m`` size on an H200 at ``efficiency``
    of its dense FP16 peak: the cost model's engine until a GPU measures it (``bench.engine_speed``).

    Every kept expert counted (the dense form), the conservative side of the sparse graph the build ships.
    """
    flops = flops_per_tile(preset("mapex-130m"), len(manifest.band_names), kept_experts(manifest))
    return flops, H200_FP16_TFLOPS * 1e12 * efficiency / flops

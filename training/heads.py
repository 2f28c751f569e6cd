"""Task heads on top of the MAPEX encoder: tile classification and per-pixel masks.

Both take the encoder's ``Encoded`` output and return logits. They are built from fixed-shape
tensor operations only (no Python branch on tensor values), so a specialist exports to ONNX with
a dynamic batch axis.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from training.model import Encoded

__all__ = ["ClassHead", "SegHead", "build_head"]


class ClassHead(nn.Module):
    """Mean-pooled tokens -> LayerNorm -> (optional hidden layer + GELU) -> Linear: (B, K) logits."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 0) -> None:
        super().__init__()
        self.args = {"dim": dim, "num_classes": num_classes, "hidden": hidden}
        self.norm = nn.LayerNorm(dim)
        self.hidden = nn.Sequential(nn.Linear(dim, hidden), nn.GELU()) if hidden else nn.Identity()
        self.fc = nn.Linear(hidden or dim, num_classes)

    def forward(self, encoded: Encoded) -> torch.Tensor:
        return self.fc(self.hidden(self.norm(encoded.pooled())))


class SegHead(nn.Module):
    """Tokens averaged over modalities per position -> (B, D, g, g) -> light conv decoder -> (B, K, H, W) logits.

    The encoder orders tokens modality by modality, each modality's ``grid * grid`` tokens in
    position order, so a reshape to (B, M, L, D) and a mean over M gives one feature per patch
    whatever the number of modalities. Each of the log2(patch_size) stages doubles the
    resolution (bilinear) and mixes with a 3x3 convolution, back to input resolution.
    """

    def __init__(self, dim: int, num_classes: int, patch_size: int, grid: int, width: int = 32) -> None:
        super().__init__()
        stages = round(math.log2(patch_size)) if patch_size > 0 else -1
        if stages < 0 or 2**stages != patch_size:
            raise ValueError(f"SegHead needs a power-of-two patch_size to upsample by 2 per stage, got {patch_size}")
        self.args = {"dim": dim, "num_classes": num_classes, "patch_size": patch_size, "grid": grid, "width": width}
        self.grid = grid
        self.proj = nn.Conv2d(dim, width, 1)
        self.up = nn.Sequential(*(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GELU(),
            )
            for _ in range(stages)
        ))
        self.out = nn.Conv2d(width, num_classes, 1)

    def forward(self, encoded: Encoded) -> torch.Tensor:
        tokens = encoded.tokens
        length, dim = self.grid * self.grid, tokens.shape[-1]
        if tokens.shape[1] % length:
            raise ValueError(f"{tokens.shape[1]} tokens are not a whole number of {self.grid} x {self.grid} grids")
        per_position = tokens.reshape(tokens.shape[0], -1, length, dim).mean(dim=1)  # (B, L, D)
        x = per_position.transpose(1, 2).reshape(tokens.shape[0], dim, self.grid, self.grid)
        return self.out(self.up(self.proj(x)))


def build_head(kind: str, args: dict[str, Any]) -> nn.Module:
    """Rebuild a head from its kind (``class`` or ``mask``) and the ``args`` it was made with."""
    if kind == "class":
        return ClassHead(**args)
    if kind == "mask":
        return SegHead(**args)
    raise ValueError(f"unknown head kind {kind!r}; expected 'class' or 'mask'")

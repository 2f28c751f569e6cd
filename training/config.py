"""Model configuration and presets.

Flat, typed fields (timm style); each preset is a dict of overrides passed to one builder, and
the config travels inside every checkpoint so that a checkpoint rebuilds its own model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from mapex_serve.bands import MODALITY_NAMES, resolve_modality

__all__ = ["PRESETS", "MapexConfig", "RouterKind", "preset"]

RouterKind = Literal["modality", "positional", "deterministic"]
ROUTER_KINDS: tuple[RouterKind, ...] = ("modality", "positional", "deterministic")


@dataclass(frozen=True)
class MapexConfig:
    """Everything that shapes a MAPEX model; the defaults are the ``tiny`` preset."""

    img_size: int = 32
    patch_size: int = 8
    modalities: tuple[str, ...] = MODALITY_NAMES
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    #: Indices of the blocks whose feed-forward layer is a mixture of experts.
    moe_blocks: tuple[int, ...] = (0, 1, 2, 3)
    num_experts: int = 12
    top_k: int = 1
    router: RouterKind = "modality"
    #: Initial per-modality bias on the router logits towards the modality's own experts
    #: (``modality`` router only); the design brief found this is what makes experts specialise.
    router_prior: float = 2.0
    balance_weight: float = 0.01
    modality_embed_std: float = 0.02
    decoder_dim: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 4
    mask_ratio: float = 0.75

    def __post_init__(self) -> None:
        if self.router not in ROUTER_KINDS:
            raise ValueError(f"router must be one of {ROUTER_KINDS}, got {self.router!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in 1..num_experts ({self.num_experts}), got {self.top_k}")
        if self.num_experts < len(self.modalities):
            raise ValueError(f"need at least one expert per modality: {self.num_experts} < {len(self.modalities)}")
        if bad := [b for b in self.moe_blocks if not 0 <= b < self.depth]:
            raise ValueError(f"moe_blocks {bad} outside 0..{self.depth - 1}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        object.__setattr__(self, "modalities", tuple(resolve_modality(m) for m in self.modalities))
        object.__setattr__(self, "moe_blocks", tuple(self.moe_blocks))

    @property
    def tokens_per_modality(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MapexConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


PRESETS: dict[str, dict[str, Any]] = {
    # Trains on 2 CPU cores in minutes: 32 px tiles, 16 tokens per modality.
    "tiny": {},
    # The paper's model size (MAPEX, about 130 M parameters): width 512, 12 blocks, the MoE layers
    # (12 experts, top-1) in four of the last eight blocks, a 2-block decoder. 131,951,904
    # encoder and 134,520,352 parameters in all (docs/model.md). Tiles of 128 px, patches of 16.
    "mapex-130m": dict(
        img_size=128,
        patch_size=16,
        embed_dim=512,
        depth=12,
        num_heads=8,
        mlp_ratio=4.0,
        moe_blocks=(5, 7, 9, 11),
        num_experts=12,
        decoder_dim=256,
        decoder_depth=2,
        decoder_heads=8,
    ),
}


def preset(name: str, **overrides: Any) -> MapexConfig:
    """The named preset with ``overrides`` applied (e.g. ``preset("tiny", router="positional")``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return replace(MapexConfig(**PRESETS[name]), **overrides)

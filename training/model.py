"""MAPEX: a vision transformer over several modalities whose feed-forward layers are experts.

Reads top to bottom: embeddings, blocks, the model (``forward_features`` for downstream use,
``forward_pretrain`` for masked multi-modal autoencoding). Inputs are a dict of modality name ->
(B, C, H, W) tensors in physical units (reflectance, dB, metres); any subset of the configured
modalities may be given, and absent modalities are simply absent tokens. The model normalises
each band with statistics stored as buffers, so a checkpoint carries what its inputs must look like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mapex_serve.bands import MODALITIES, bands_of
from training.config import MapexConfig
from training.moe import Mlp, MoE

__all__ = ["Encoded", "Mapex", "PretrainOutput", "Routing", "sincos_pos_embed_2d"]


def sincos_pos_embed_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (grid*grid, dim): half the channels for rows, half for columns.

    Wavelengths run from 2 patches to 4 grids. The usual temperature of 10000 suits long
    sequences; on a 4 x 4 grid it leaves almost every channel constant, so tokens could hardly
    tell where they are, and masked reconstruction stalled at predicting scene averages.
    """
    if dim % 4:
        raise ValueError(f"embedding dim must be a multiple of 4 for a 2-D sin-cos embedding, got {dim}")
    frac = torch.arange(dim // 4, dtype=torch.float64) / max(dim // 4 - 1, 1)
    omega = math.pi / (4.0 * grid) ** frac
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = [f(c.flatten()[:, None] * omega[None]) for c in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).float()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


@dataclass
class Routing:
    """Routing decisions of one MoE layer over the tokens it saw (flattened over the batch)."""

    layer: int
    experts: torch.Tensor  # (N, k) expert indices
    modality: torch.Tensor  # (N,) index into config.modalities


class Block(nn.Module):
    """Pre-norm transformer block; its feed-forward layer is a MoE or a plain MLP."""

    def __init__(self, cfg: MapexConfig, moe: bool) -> None:
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim)
        self.ffn: nn.Module = (
            MoE(cfg.embed_dim, hidden, cfg.num_experts, len(cfg.modalities), cfg.router, cfg.top_k, cfg.router_prior)
            if moe
            else Mlp(cfg.embed_dim, hidden)
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, modality: torch.Tensor, position: torch.Tensor
    ) -> tuple[torch.Tensor, Routing | None, torch.Tensor | None]:
        x = x + self.attn(self.norm1(x))
        h = self.norm2(x)
        if not isinstance(self.ffn, MoE):
            return x + self.ffn(h), None, None
        b, n, d = h.shape
        out, route, balance = self.ffn(
            h.reshape(b * n, d),
            None if context is None else context.reshape(b * n, d),
            modality.reshape(-1),
            position.reshape(-1),
        )
        return x + out.reshape(b, n, d), Routing(-1, route.experts, modality.reshape(-1)), balance


@dataclass
class Encoded:
    """Encoder output: tokens and, per token, its modality and position, plus the routing per MoE layer."""

    tokens: torch.Tensor  # (B, n, D) after the final norm
    modality: torch.Tensor  # (B, n) index into config.modalities
    position: torch.Tensor  # (B, n) patch index within the modality's grid
    routing: list[Routing]
    balance_loss: torch.Tensor

    def pooled(self) -> torch.Tensor:
        """Mean over tokens: the tile embedding used by k-NN and classification heads."""
        return self.tokens.mean(dim=1)


@dataclass
class PretrainOutput:
    loss: torch.Tensor  # reconstruction + balance_weight * balancing
    recon_loss: torch.Tensor
    balance_loss: torch.Tensor
    routing: list[Routing]


class Mapex(nn.Module):
    """The MAPEX encoder with its light masked-autoencoding decoder."""

    def __init__(self, cfg: MapexConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, p, grid = cfg.embed_dim, cfg.patch_size, cfg.img_size // cfg.patch_size
        self.patch_embed = nn.ModuleDict({m: nn.Conv2d(len(MODALITIES[m]), d, p, p) for m in cfg.modalities})
        self.modality_embed = nn.Parameter(torch.randn(len(cfg.modalities), d) * cfg.modality_embed_std)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(grid, d), persistent=False)
        bands = bands_of(cfg.modalities)
        self.band_names = bands
        self.register_buffer("band_mean", torch.zeros(len(bands)))
        self.register_buffer("band_std", torch.ones(len(bands)))
        self.blocks = nn.ModuleList(Block(cfg, i in cfg.moe_blocks) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(d)

        dd = cfg.decoder_dim
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(dd))
        self.decoder_modality_embed = nn.Parameter(torch.randn(len(cfg.modalities), dd) * 0.02)
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(grid, dd), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(MapexConfig(**{**cfg.to_dict(), "embed_dim": dd, "num_heads": cfg.decoder_heads}), moe=False)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.ModuleDict({m: nn.Linear(dd, p * p * len(MODALITIES[m])) for m in cfg.modalities})
        self.apply(_init_weights)

    # -- inputs ------------------------------------------------------------------------------
    def set_band_stats(self, mean: Mapping[str, float], std: Mapping[str, float]) -> None:
        """Store per-band normalisation (physical units); bands the data lacks keep mean 0, std 1."""
        for i, b in enumerate(self.band_names):
            if b in mean:
                self.band_mean[i] = float(mean[b])
                self.band_std[i] = max(float(std[b]), 1e-6)

    def band_stats(self) -> dict[str, tuple[float, float]]:
        return {b: (float(m), float(s)) for b, m, s in zip(self.band_names, self.band_mean, self.band_std, strict=True)}

    def normalise(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        idx = [self.band_names.index(b) for b in MODALITIES[modality]]
        return (x - self.band_mean[idx, None, None]) / self.band_std[idx, None, None]

    def _check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> list[str]:
        present = [m for m in self.cfg.modalities if m in inputs]
        if unknown := sorted(set(inputs) - set(self.cfg.modalities)):
            raise ValueError(f"modalities {unknown} are not part of this model; it takes {list(self.cfg.modalities)}")
        if not present:
            raise ValueError(f"no input modality given; the model takes any of {list(self.cfg.modalities)}")
        size = self.cfg.img_size
        for m in present:
            expected = (len(MODALITIES[m]), size, size)
            if tuple(inputs[m].shape[1:]) != expected:
                raise ValueError(f"{m} input has shape {tuple(inputs[m].shape)}, expected (B, {', '.join(map(str, expected))})")
        return present

    def tokenize(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed the present modalities, modality after modality: tokens (B, N, D), modality (N,), position (N,)."""
        present = self._check_inputs(inputs)
        tokens, modality = [], []
        grid_tokens = self.cfg.tokens_per_modality
        for m in present:
            i = self.cfg.modalities.index(m)
            t = self.patch_embed[m](self.normalise(m, inputs[m])).flatten(2).transpose(1, 2)
            tokens.append(t + self.pos_embed + self.modality_embed[i])
            modality.append(torch.full((grid_tokens,), i, dtype=torch.long))
        device = tokens[0].device
        position = torch.arange(grid_tokens).repeat(len(present)).to(device)
        return torch.cat(tokens, dim=1), torch.cat(modality).to(device), position

    # -- encoder -----------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, modality: torch.Tensor, position: torch.Tensor) -> Encoded:
        """Run the blocks over tokens x (B, n, D) with per-token modality and position (B, n)."""
        context = {"modality": self.modality_embed[modality], "positional": self.pos_embed[position]}.get(self.cfg.router)
        routing: list[Routing] = []
        balance = x.new_zeros(())
        for i, block in enumerate(self.blocks):
            x, route, loss = block(x, context, modality, position)
            if route is not None:
                route.layer = i
                routing.append(route)
                balance = balance + loss
        return Encoded(self.norm(x), modality, position, routing, balance / max(len(routing), 1))

    def forward_features(self, inputs: Mapping[str, torch.Tensor]) -> Encoded:
        """Encode every token of the given modalities (no masking)."""
        x, modality, position = self.tokenize(inputs)
        b = x.shape[0]
        return self._encode(x, modality.expand(b, -1), position.expand(b, -1))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Pooled tile embedding (B, D)."""
        return self.forward_features(inputs).pooled()

    # -- masked multi-modal autoencoding -----------------------------------------------------
    def forward_pretrain(
        self, inputs: Mapping[str, torch.Tensor], mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> PretrainOutput:
        """Mask ``mask_ratio`` of all tokens (across modalities), encode the rest, reconstruct the masked ones.

        The target is each masked patch's normalised pixels; the loss is their mean squared error
        averaged over masked tokens, plus ``balance_weight`` times the balancing loss.
        """
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        x, modality, position = self.tokenize(inputs)
        b, n, d = x.shape
        keep = max(1, int(round(n * (1 - ratio))))
        noise = torch.rand(b, n, generator=generator).to(x.device)
        order = noise.argsort(dim=1)
        visible = order[:, :keep]
        encoded = self._encode(
            x.gather(1, visible[..., None].expand(-1, -1, d)), modality[visible], position[visible]
        )

        y = self.decoder_embed(encoded.tokens)
        full = self.mask_token.to(y.dtype).expand(b, n, -1).clone()  # y is bfloat16 under autocast
        full.scatter_(1, visible[..., None].expand(-1, -1, y.shape[-1]), y)
        masked = torch.ones(b, n, device=x.device)
        masked.scatter_(1, visible, 0.0)
        full = full + masked[..., None] * self._colocated_mean(y, position[visible])[:, position]
        full = full + self.decoder_pos_embed[position] + self.decoder_modality_embed[modality]
        for block in self.decoder_blocks:
            full = block(full, None, modality, position)[0]
        full = self.decoder_norm(full)

        errors, start = [], 0
        for m in self.cfg.modalities:
            if m not in inputs:
                continue
            span = slice(start, start + self.cfg.tokens_per_modality)
            start = span.stop
            target = self.patchify(self.normalise(m, inputs[m]))
            errors.append(((self.decoder_pred[m](full[:, span]) - target) ** 2).mean(dim=-1))
        per_token = torch.cat(errors, dim=1)
        recon = (per_token * masked).sum() / masked.sum()
        loss = recon + self.cfg.balance_weight * encoded.balance_loss
        return PretrainOutput(loss, recon, encoded.balance_loss, encoded.routing)

    def _colocated_mean(self, y: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Mean of the visible decoder tokens at each grid position (B, L, dd); zero where none is visible.

        Modalities are co-registered, so what is visible at a place is the best hint for what is
        masked there; handing it to each masked token directly lets the decoder use it from the
        first steps instead of having to learn position-matching attention first.
        """
        b, _, dd = y.shape
        grid = self.cfg.tokens_per_modality
        sums = y.new_zeros(b, grid, dd).scatter_add_(1, position[..., None].expand(-1, -1, dd), y)
        counts = y.new_zeros(b, grid).scatter_add_(1, position, torch.ones_like(position, dtype=y.dtype))
        return sums / counts.clamp(min=1)[..., None]

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), in the same token order as the patch embedding."""
        b, c, h, w = x.shape
        p = self.cfg.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def num_parameters(self, encoder_only: bool = True) -> int:
        """Parameter count; by default without the pre-training decoder (what a specialist keeps)."""
        skip = ("decoder", "mask_token") if encoder_only else ()
        return sum(p.numel() for name, p in self.named_parameters() if not name.startswith(skip))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

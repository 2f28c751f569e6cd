"""A specialist: a MAPEX backbone (full or pruned for its modalities) with a task head.

Its ``forward`` takes what the service feeds an engine: one (B, C, H, W) tensor holding the bands
of ``bands_of(modalities)`` in that order, in physical units (reflectance, dB, metres); the
backbone normalises them itself. It returns class probabilities, (B, K) or (B, K, H, W).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mapex_serve.bands import MODALITIES, bands_of, resolve_modality
from mapex_serve.repository import ExpertsKept, ParameterCounts
from training.checkpoint import CheckpointError, load_payload, save_atomic
from training.config import MapexConfig
from training.heads import build_head
from training.model import Mapex
from training.moe import MoE
from training.tasks import get_task

__all__ = ["KIND", "Specialist"]

#: Marks a specialist file apart from a pre-training checkpoint (both are MAPEX payloads).
KIND = "mapex-specialist"


class Specialist(nn.Module):
    """Backbone + head for one task and a fixed, ordered set of modalities."""

    def __init__(
        self,
        backbone: Mapex,
        head: nn.Module,
        task: str,
        modalities: Sequence[str],
        *,
        kept: Sequence[ExpertsKept] = (),
        source_config: MapexConfig | None = None,
        parameters: ParameterCounts | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """``kept`` and ``source_config`` (the unpruned model's config) are given for a pruned backbone."""
        super().__init__()
        self.backbone, self.head = backbone, head
        self.task = get_task(task).name
        self.modalities = tuple(resolve_modality(m) for m in modalities)
        if missing := [m for m in self.modalities if m not in backbone.cfg.modalities]:
            raise ValueError(f"the backbone has no {missing}; it takes {list(backbone.cfg.modalities)}")
        if kept and source_config is None:
            raise ValueError("a pruned specialist needs the source_config its backbone was pruned from")
        self.band_names = bands_of(self.modalities)
        self._channels = [len(MODALITIES[m]) for m in self.modalities]
        self.kept = list(kept)
        self.source_config = source_config
        n = backbone.num_parameters()
        self.parameter_counts = parameters or ParameterCounts(full=n, pruned=n)
        self.info = dict(info or {})

    @property
    def pruned(self) -> bool:
        return bool(self.kept)

    # -- inference ---------------------------------------------------------------------------
    def split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, H, W) stacked bands -> modality -> (B, C_m, H, W)."""
        if x.dim() != 4 or x.shape[1] != len(self.band_names):
            raise ValueError(
                f"input has shape {tuple(x.shape)}, expected (B, {len(self.band_names)}, H, W) "
                f"with bands {', '.join(self.band_names)}"
            )
        return dict(zip(self.modalities, torch.split(x, self._channels, dim=1), strict=True))

    def logits_from(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Head logits from per-modality inputs (the training path)."""
        return self.head(self.backbone.forward_features(inputs))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.split(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities: (B, K) for a class head, (B, K, H, W) for a mask head."""
        return self.logits(x).softmax(dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, D) of stacked bands."""
        return self.backbone.forward_features(self.split(x)).pooled()

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the specialist atomically: weights plus everything ``load`` needs to rebuild it."""
        if not self.kept and _looks_pruned(self.backbone):
            raise ValueError(
                "this backbone has lost experts to pruning but the specialist does not say which; build it with "
                "kept= and source_config= (export.prune's PruneResult.kept and the unpruned model's cfg)"
            )
        task = get_task(self.task)
        payload = {
            "kind": KIND,
            "config": self.backbone.cfg.to_dict(),
            "source_config": None if self.source_config is None else self.source_config.to_dict(),
            "task": self.task,
            "head": {"kind": task.head, "args": dict(self.head.args)},
            "classes": list(task.classes),
            "modalities": list(self.modalities),
            "bands": list(self.band_names),
            "kept": [k.model_dump() for k in self.kept],
            "parameters": self.parameter_counts.model_dump(),
            "band_stats": self.backbone.band_stats(),
            "info": self.info,
            "model": self.state_dict(),
        }
        return save_atomic(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> Specialist:
        """Rebuild backbone (pruned the same way when it was pruned), head and weights; eval mode."""
        payload = load_payload(path)
        if payload.get("kind") != KIND:
            raise CheckpointError(
                f"{path} is a pre-training checkpoint, not a specialist; make one with `python -m training.finetune`"
            )
        cfg = MapexConfig.from_dict(payload["config"])
        kept = [ExpertsKept(**k) for k in payload["kept"]]
        source = None if payload["source_config"] is None else MapexConfig.from_dict(payload["source_config"])
        if kept:
            from export.prune import apply_pruning  # the exporter owns pruning; only pruned files need it

            if source is None:
                raise CheckpointError(f"{path} lists kept experts but no source_config to prune from")
            backbone = apply_pruning(Mapex(source), payload["modalities"], kept)
            if backbone.cfg != cfg:
                raise CheckpointError(f"{path}: pruning {source} again gives {backbone.cfg}, the file says {cfg}")
        else:
            backbone = Mapex(cfg)
        head = build_head(payload["head"]["kind"], payload["head"]["args"])
        spec = cls(
            backbone,
            head,
            payload["task"],
            payload["modalities"],
            kept=kept,
            source_config=source,
            parameters=ParameterCounts(**payload["parameters"]),
            info=payload.get("info"),
        )
        spec.load_state_dict(payload["model"])
        return spec.eval()


def _looks_pruned(model: Mapex) -> bool:
    """True when some MoE block of the config holds fewer experts than the config says (or none)."""
    for i in model.cfg.moe_blocks:
        ffn = model.blocks[i].ffn
        if not isinstance(ffn, MoE) or len(ffn.experts) != model.cfg.num_experts:
            return True
    return False

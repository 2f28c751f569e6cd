"""Checkpoints: written atomically, and carrying the config that rebuilds their model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mapex_serve.atomic import atomic_path
from training.config import MapexConfig
from training.model import Mapex

__all__ = ["CheckpointError", "load_model", "load_payload", "save_atomic"]

FORMAT = 1


class CheckpointError(ValueError):
    """A file that is not a MAPEX checkpoint, or one this version cannot read."""


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Save to a temporary file beside ``path`` and rename it over: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    return Path(path)


def load_payload(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pre-train one with `python -m training.pretrain --out DIR`")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "config" not in payload:
        raise CheckpointError(f"{path} is not a MAPEX checkpoint of format {FORMAT}")
    return payload


def load_model(path: str | Path) -> tuple[Mapex, dict[str, Any]]:
    """The model of a checkpoint, in eval mode, and the checkpoint's payload."""
    payload = load_payload(path)
    model = Mapex(MapexConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["model"])
    return model.eval(), payload

"""MAPEX model, synthetic data, pre-training and reports (needs the ``train`` extra: torch)."""

from training.config import PRESETS, MapexConfig, preset
from training.model import Mapex

__all__ = ["PRESETS", "Mapex", "MapexConfig", "preset"]

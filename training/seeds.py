"""Seed streams: every random draw in training is a pure function of (seed, purpose, step, rank).

That is what lets a resumed run reproduce an uninterrupted one, and keeps held-out scenes
disjoint from training scenes for any seed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CALIBRATION", "FINETUNE", "HELDOUT", "MASK", "STATS", "TRAIN", "derive_seed"]

# Purposes: one stream each. FINETUNE draws the labelled scenes of fine-tuning: with TRAIN,
# derive_seed(seed, TRAIN, step) would equal pre-training's derive_seed(seed, TRAIN, step, 0)
# (SeedSequence pads short entropy with zeros), so fine-tuning would redraw pre-training's scenes.
TRAIN, MASK, STATS, HELDOUT, CALIBRATION, FINETUNE = 0, 1, 2, 3, 4, 5


def derive_seed(seed: int, purpose: int, *keys: int) -> int:
    """A 63-bit seed for one purpose and key path (e.g. ``derive_seed(seed, TRAIN, step, rank)``)."""
    state = np.random.SeedSequence([seed, purpose, *keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1

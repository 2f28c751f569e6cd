"""Seed streams: every random draw in training is a pure function of (seed, purpose, step, rank).

That is what lets a resumed run reproduce an uninterrupted one, and keeps held-out scenes
disjoint from training scenes for any seed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CALIBRATION", "HELDOUT", "MASK", "STATS", "TRAIN", "derive_seed"]

# Purposes: one stream each.
TRAIN, MASK, STATS, HELDOUT, CALIBRATION = 0, 1, 2, 3, 4


def derive_seed(seed: int, purpose: int, *keys: int) -> int:
    """A 63-bit seed for one purpose and key path (e.g. ``derive_seed(seed, TRAIN, step, rank)``)."""
    state = np.random.SeedSequence([seed, purpose, *keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1

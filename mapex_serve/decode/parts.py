"""One ``/predict`` scene split across decode workers: which rows each part runs, and where their mask meets.

A lone scene on one worker gets that worker's speed, which on a GPU node is a fraction of the
engine's (docs/performance.md, the cost model). Whole-scene jobs split their rows into strips on
disk (``jobs.runner``); a ``/predict`` mask scene splits its rows into parts that each open the
upload from the request's slab, run the tiles their rows need, and write their final rows' labels
and coverage into one shared mask (``MaskSlab``). The first part's worker then encodes the answer
from that mask, with the parts' counts merged (``PartDone``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from mapex_serve.decode.slab import Slab
from mapex_serve.tiling import tile_cells

__all__ = ["MIN_PART_PIXELS", "MaskSlab", "PartDone", "ScenePart", "merge_masked", "scene_parts"]

#: A ``/predict`` scene is split in parts of about this many pixels or more: each part opens the upload again (a
#: millisecond for TIFFs read in place; other uploads are copied out of the slab first, 0.06 s of a worker's
#: CPU for 128 MiB; the unit check's sample only in the first part) and runs the tile row above its first row again,
#: to save its share of the scene's decoding (about 60 ns a pixel with 32 px tiles: 0.06 s a part at this size).
MIN_PART_PIXELS = 2**20


def scene_parts(height: int, width: int, tile: int, overlap: int, count: int) -> list[tuple[int, int]]:
    """The rows ``[r0, r1)`` of up to ``count`` parts of a scene, cut at tile rows into parts of as many tile rows
    each (give or take one), of about ``MIN_PART_PIXELS`` or more; one part (the whole scene) when it is too
    small to split."""
    starts = [lo for lo, _hi in tile_cells(height, tile, overlap)]
    n = max(1, min(count, height * width // MIN_PART_PIXELS, len(starts)))
    bounds = [0, *(starts[i * len(starts) // n] for i in range(1, n)), height]
    return list(itertools.pairwise(bounds))


@dataclass(frozen=True)
class ScenePart:
    """A part of a split scene: its rows ``[r0, r1)``, blended into the shared mask at ``mask`` (a slab's path)."""

    rows: tuple[int, int]
    mask: str


@dataclass(frozen=True)
class PartDone:
    """What a part counted for the answer: tiles run with a valid pixel, its rows' invalid pixels by reason."""

    seen: int
    masked: dict[str, int]


def merge_masked(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The scene's invalid pixels by reason, from those of rows that do not overlap (parts, a job's strips)."""
    total: dict[str, int] = {}
    for masked in counts:
        for why, n in masked.items():
            total[why] = total.get(why, 0) + n
    return total


class MaskSlab:
    """A split scene's labels (uint8) and coverage (bool), H x W each, in a slab every part maps."""

    @staticmethod
    def size(height: int, width: int) -> int:
        return 2 * height * width

    @staticmethod
    def arrays(slab: Slab, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, covered)``: views of the slab, written by the parts, read by the encoding worker."""
        return slab.array(0, (height, width), np.uint8), slab.array(height * width, (height, width), np.bool_)

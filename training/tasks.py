"""The downstream tasks, in one place: what a specialist predicts, from which modalities, on what data.

Fine-tuning, evaluation and ``export.build --all`` all read this table. Every label comes from the
SYNTHETIC scene generator (``training/data/synthetic.py``), not from real imagery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from mapex_serve.bands import MODALITY_NAMES, resolve_modality
from training.data.synthetic import LANDCOVER_CLASSES, SceneConfig, SyntheticBatch

__all__ = ["TASKS", "Task", "get_task"]

HeadKind = Literal["class", "mask"]
#: Label fields of a ``SyntheticBatch`` and of the real data sets' ``TileSet`` (``has_flood`` and
#: ``burn`` exist on real tiles only).
LabelField = Literal["tile_class", "landcover", "flood", "has_burn", "has_flood", "burn"]

_OPTICAL = ("RGB", "RED_EDGE", "NIR", "SWIR")


@dataclass(frozen=True)
class Task:
    """One downstream task: a head kind, its classes, the specialists built for it and its label."""

    name: str
    head: HeadKind
    classes: tuple[str, ...]
    #: The specialists ``export.build --all`` builds for this task, each a tuple of modalities.
    default_modalities: tuple[tuple[str, ...], ...]
    description: str
    #: The ``SyntheticBatch`` field holding the label.
    label: LabelField
    #: Modalities a specialist of this task may take (any non-empty subset of them).
    accepted_modalities: tuple[str, ...] = MODALITY_NAMES
    #: At least one of these must be given: the modalities in which the label can be seen at all
    #: (a DEM shows where water could rise, not whether it did).
    evidence_modalities: tuple[str, ...] = MODALITY_NAMES
    #: The most modalities one specialist of this task takes (None: any number).
    max_modalities: int | None = None
    #: Event probabilities of the synthetic scenes this task trains and is evaluated on.
    flood_prob: float = SceneConfig.flood_prob
    burn_prob: float = SceneConfig.burn_prob

    def labels(self, batch: SyntheticBatch) -> torch.Tensor:
        """Class per tile (N,) or per pixel (N, H, W), int64 indices into ``classes``."""
        return getattr(batch, self.label).long()

    def scene_config(self, size: int) -> SceneConfig:
        """How this task's synthetic training and held-out scenes are drawn (``size`` px tiles)."""
        return SceneConfig(size=size, flood_prob=self.flood_prob, burn_prob=self.burn_prob)

    def check_modalities(self, modalities: Sequence[str]) -> tuple[str, ...]:
        """Canonical modalities in band-table order; ``ValueError`` naming what this task accepts."""
        if isinstance(modalities, str):
            modalities = [modalities]
        resolved = [resolve_modality(m) for m in modalities]
        if not resolved:
            raise ValueError(f"task {self.name!r} needs at least one modality; it accepts {', '.join(self.accepted_modalities)}")
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"modality given twice: {list(modalities)}")
        if self.max_modalities is not None and len(resolved) > self.max_modalities:
            many = "modality" if self.max_modalities == 1 else "modalities"
            raise ValueError(f"task {self.name!r} takes at most {self.max_modalities} {many} per specialist, "
                             f"got {', '.join(resolved)}")
        if bad := [m for m in resolved if m not in self.accepted_modalities]:
            raise ValueError(f"task {self.name!r} does not take {', '.join(bad)}; it accepts {', '.join(self.accepted_modalities)}")
        if not set(resolved) & set(self.evidence_modalities):
            raise ValueError(
                f"task {self.name!r} cannot be seen in {', '.join(resolved)} alone; "
                f"give at least one of {', '.join(self.evidence_modalities)}"
            )
        return tuple(m for m in MODALITY_NAMES if m in resolved)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="landcover",
            head="class",
            classes=LANDCOVER_CLASSES,
            default_modalities=tuple((m,) for m in MODALITY_NAMES),
            description="Tile classification: the majority land-cover class of the tile, from any modality.",
            label="tile_class",
            max_modalities=1,
        ),
        # Floods cover ~5% of the pixels at the generator's default flood_prob of 0.3; at 0.6
        # about twice as many tiles have one, so a few hundred steps see enough flooded pixels
        # for the head not to settle on "all dry". Evaluation uses the same mix, so the
        # reported figures are for event-rich tiles; the all-dry baseline is reported beside them.
        Task(
            name="flood",
            head="mask",
            classes=("dry", "flooded"),
            default_modalities=(("SAR",),),
            description="Per-pixel flood mask: water that rose over land (SAR sees it as dark open water).",
            label="flood",
            evidence_modalities=("SAR", *_OPTICAL),
            flood_prob=0.6,
        ),
        # At burn_prob 0.3 about 28% of tiles are burned; 0.5 balances the two classes, so
        # accuracy is read against a ~50% majority baseline rather than a ~72% one.
        Task(
            name="wildfire",
            head="class",
            classes=("unburned", "burned"),
            # RGB + SWIR: a specialist that needs two files at two resolutions (10 m RGB, 20 m SWIR).
            default_modalities=(("SWIR",), ("RGB", "SWIR")),
            description="Tile classification: does the tile hold a burn scar (>= 1% of its pixels)?",
            label="has_burn",
            evidence_modalities=("SAR", *_OPTICAL),
            burn_prob=0.5,
        ),
        Task(
            name="landcover-seg",
            head="mask",
            classes=LANDCOVER_CLASSES,
            default_modalities=(("RGB",),),
            description="Per-pixel land cover (the map under any flood or burn scar).",
            label="landcover",
        ),
    )
}


def get_task(name: str | Task) -> Task:
    """The task called ``name`` (a ``Task`` is returned as is); ``ValueError`` listing the tasks."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return TASKS[name]

"""Fine-tune a specialist: a MAPEX backbone (full, or pruned for the task's modalities) plus a task head.

    python -m training.finetune --checkpoint runs/modality/checkpoint.pt --task flood --modality SAR \\
        --prune --out runs/specialists/flood-SAR

Trains on freshly drawn SYNTHETIC scenes (a new labelled batch every step), then evaluates on
held-out synthetic tiles, and writes ``OUT/specialist.pt`` (``Specialist.load`` reads it) and
``OUT/finetune.json``. By default the backbone is frozen and only the head trains (a probe of the
pre-trained features); ``--full-finetune`` trains everything.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mapex_serve.repository import ExpertsKept, ParameterCounts, sha256_file
from training.checkpoint import load_model
from training.config import MapexConfig
from training.data.synthetic import SceneConfig, SyntheticBatch, generate_batch
from training.heads import ClassHead, SegHead
from training.model import Mapex
from training.schedule import warmup_cosine
from training.seeds import FINETUNE, HELDOUT, derive_seed
from training.specialist import Specialist
from training.tasks import TASKS, Task, get_task

__all__ = [
    "BatchFn",
    "SharedBatches",
    "default_lr",
    "evaluate_specialist",
    "finetune",
    "main",
    "make_head",
    "synthetic_batches",
    "synthetic_tiles",
    "take",
]

#: ``data(step, batch_size)`` -> a labelled batch; steps count from 1.
BatchFn = Callable[[int, int], SyntheticBatch]

_CHUNK = 64  # scenes per generated chunk of held-out tiles; fixed so that fewer tiles are a prefix of more


def synthetic_tiles(
    seed: int, purpose: int, n: int, scene: SceneConfig, modalities: Sequence[str] | None = None
) -> SyntheticBatch:
    """``n`` seeded synthetic tiles, drawn in fixed chunks keyed (seed, purpose, 0, chunk).

    Key 0 sits where pre-training's step would be, and pre-training counts steps from 1, so
    TRAIN tiles drawn here never repeat pre-training scenes.
    """
    if n < 1:
        raise ValueError(f"need at least one tile, got {n}")
    parts = [
        generate_batch(derive_seed(seed, purpose, 0, c), min(_CHUNK, n - c * _CHUNK), scene, modalities)
        for c in range(math.ceil(n / _CHUNK))
    ]
    return _concat(parts)


def _concat(parts: Sequence[SyntheticBatch]) -> SyntheticBatch:
    if len(parts) == 1:
        return parts[0]
    return SyntheticBatch(
        inputs={m: torch.cat([p.inputs[m] for p in parts]) for m in parts[0].inputs},
        **{f: torch.cat([getattr(p, f) for p in parts]) for f in ("landcover", "tile_class", "flood", "burn", "has_burn")},
    )


def take(batch: SyntheticBatch, index: torch.Tensor | np.ndarray | slice) -> SyntheticBatch:
    """The tiles ``index`` of a batch (every input and label)."""
    if isinstance(index, np.ndarray):
        index = torch.from_numpy(index)
    return SyntheticBatch(
        inputs={m: x[index] for m, x in batch.inputs.items()},
        **{f: getattr(batch, f)[index] for f in ("landcover", "tile_class", "flood", "burn", "has_burn")},
    )


def make_head(task: Task, backbone: Mapex) -> nn.Module:
    """The task's head sized for the backbone."""
    cfg = backbone.cfg
    if task.head == "class":
        return ClassHead(cfg.embed_dim, len(task.classes))
    return SegHead(cfg.embed_dim, len(task.classes), cfg.patch_size, cfg.img_size // cfg.patch_size)


def default_lr(full: bool) -> float:
    """Peak learning rate: a head alone takes a larger step than the whole network."""
    return 1e-3 if full else 3e-3


def _lr(step: int, steps: int, peak: float) -> float:
    """Warm-up over the first tenth (at most 20 steps), then cosine decay to a tenth of the peak."""
    return warmup_cosine(step, steps, min(20, max(1, steps // 10)), peak)


def synthetic_batches(task: Task, img_size: int, seed: int, modalities: Sequence[str] | None = None) -> BatchFn:
    """Fine-tuning's default data: fresh synthetic scenes of ``task`` drawn with ``derive_seed(seed, FINETUNE, step)``,
    holding ``modalities`` (None: every one). A scene is the same whatever modalities are asked of it."""
    scene = task.scene_config(img_size)

    def data(step: int, n: int) -> SyntheticBatch:
        return generate_batch(derive_seed(seed, FINETUNE, step), n, scene, modalities)

    return data


class SharedBatches:
    """Fine-tuning batches of every modality, kept for the next specialist of the same task: a build fine-tunes a
    task's specialists (six for land cover) on the same scenes, and drawing them is about two thirds of a head's
    training on 2 cores. At most ``max_bytes`` are kept, the oldest dropped first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.kept_bytes = max_bytes, 0
        self._kept: OrderedDict[tuple, SyntheticBatch] = OrderedDict()

    def of(self, task: Task, img_size: int, seed: int) -> BatchFn:
        """``synthetic_batches(task, img_size, seed)``, each drawn once while kept."""
        draw = synthetic_batches(task, img_size, seed)

        def data(step: int, n: int) -> SyntheticBatch:
            key = (task.name, img_size, seed, step, n)
            if (batch := self._kept.get(key)) is None:
                batch = self._kept[key] = draw(step, n)
                self.kept_bytes += batch.nbytes
                while self.kept_bytes > self.max_bytes:
                    self.kept_bytes -= self._kept.popitem(last=False)[1].nbytes
            return batch

        return data


def finetune(
    backbone: Mapex,
    task: Task | str,
    modalities: Sequence[str],
    *,
    steps: int = 200,
    batch_size: int = 32,
    lr: float | None = None,
    seed: int = 0,
    full: bool = False,
    data: BatchFn | None = None,
    progress: bool = True,
    kept: Sequence[ExpertsKept] = (),
    source_config: MapexConfig | None = None,
    parameters: ParameterCounts | None = None,
    info: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Specialist, dict[str, Any]]:
    """Attach the task's head to a copy of ``backbone`` and train it; returns the specialist and a summary.

    ``full=False`` freezes the backbone (features under ``no_grad``, only the head learns);
    ``full=True`` trains every weight and adds the router balancing loss. ``lr`` defaults to
    3e-3 for a head alone and 1e-3 for everything (the pre-training peak). Batches come from
    ``data`` or, by default, fresh synthetic scenes drawn with ``derive_seed(seed, FINETUNE, step)``.
    ``kept``/``source_config``/``parameters`` describe a pruned backbone (see ``export.prune``).
    Label -1 (no data in a real mask) is ignored by the loss. Training runs on ``device``; the
    specialist is returned there.
    """
    task = get_task(task)
    modalities = task.check_modalities(modalities)
    lr = default_lr(full) if lr is None else lr
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    backbone = copy.deepcopy(backbone)
    cfg = backbone.cfg
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, FINETUNE))
        head = make_head(task, backbone)
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "full_finetune": full}
    spec = Specialist(backbone, head, task.name, modalities, kept=kept, source_config=source_config,
                      parameters=parameters, info={**(info or {}), "finetune": settings})
    if data is None:
        data = synthetic_batches(task, cfg.img_size, seed, modalities)

    device = torch.device(device)
    spec.to(device)
    backbone.requires_grad_(full)
    params = [p for p in spec.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    losses: list[float] = []
    spec.train()
    if not full:
        backbone.eval()
    began = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc=f"finetune {task.name} {'+'.join(modalities)}", disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr)
        batch = data(step, batch_size)
        inputs = {m: batch.inputs[m].to(device, non_blocking=True) for m in modalities}
        with torch.set_grad_enabled(full):
            encoded = backbone.forward_features(inputs)
        loss = F.cross_entropy(head(encoded), task.labels(batch).to(device), ignore_index=-1)
        total = loss + cfg.balance_weight * encoded.balance_loss if full else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    spec.eval()
    seconds = time.perf_counter() - began
    summary = {
        "task": task.name,
        "modalities": list(modalities),
        **settings,
        "train_loss_first10": float(np.mean(losses[:10])),
        "train_loss_last10": float(np.mean(losses[-10:])),
        "seconds": round(seconds, 2),
        "trainable_parameters": sum(p.numel() for p in params),
    }
    return spec, summary


@torch.no_grad()
def evaluate_specialist(
    spec: Specialist,
    task: Task | str,
    modalities: Sequence[str] | None = None,
    *,
    tiles: int = 256,
    seed: int = 0,
    data: SyntheticBatch | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Scores on held-out synthetic tiles (HELDOUT seeds), through the stacked-band ``forward``.

    Class tasks: accuracy and the majority-class baseline. Mask tasks: pixel accuracy, IoU per
    class and their mean over the classes present in the labels or the predictions, and the
    pixel accuracy of always predicting the most common class. ``data`` replaces the drawn tiles
    (a ``SyntheticBatch`` or a real ``TileSet``); label -1 (no data) is left out of every score.
    """
    task = get_task(task)
    modalities = spec.modalities if modalities is None else task.check_modalities(modalities)
    if tuple(modalities) != spec.modalities:
        raise ValueError(f"the specialist takes {list(spec.modalities)}, not {list(modalities)}")
    described = "given tiles"
    if data is None:
        data = synthetic_tiles(seed, HELDOUT, tiles, task.scene_config(spec.backbone.cfg.img_size), modalities)
        described = "synthetic held-out tiles (not real imagery)"
    x = torch.cat([data.inputs[m] for m in modalities], dim=1)
    spec.eval()
    device = next(spec.parameters()).device
    pred = torch.cat([spec(x[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)])
    truth = task.labels(data)
    k = len(task.classes)
    valid = truth.flatten() >= 0
    confusion = torch.bincount(truth.flatten()[valid] * k + pred.flatten()[valid], minlength=k * k).reshape(k, k)
    correct = float(confusion.diag().sum() / confusion.sum())
    majority = float(confusion.sum(dim=1).max() / confusion.sum())
    result: dict[str, Any] = {"task": task.name, "modalities": list(modalities), "tiles": len(x), "seed": seed,
                              "data": described}
    if task.head == "class":
        return result | {"accuracy": correct, "majority_baseline": majority, "confusion": confusion.tolist()}
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - confusion.diag()
    iou = [float(confusion[c, c] / union[c]) if union[c] else None for c in range(k)]
    present = [v for v in iou if v is not None]
    return result | {
        "pixel_accuracy": correct,
        "mean_iou": float(np.mean(present)),
        "iou": dict(zip(task.classes, iou, strict=True)),
        "majority_pixel_accuracy": majority,
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="pre-training checkpoint (training.pretrain)")
    p.add_argument("--task", required=True, choices=list(TASKS), help="; ".join(f"{t.name}: {t.description}" for t in TASKS.values()))
    p.add_argument("--modality", action="append", required=True, help="input modality; repeat for several")
    p.add_argument("--prune", action="store_true", help="prune the backbone to the experts the modalities use")
    p.add_argument("--coverage", type=float, default=0.95, help="with --prune: share of routed tokens the kept experts cover")
    p.add_argument("--keep-top", type=int, default=None, help="with --prune: keep this many experts per block instead")
    p.add_argument("--full-finetune", action="store_true", help="train the backbone too (default: head only)")
    p.add_argument("--out", type=Path, required=True, help="folder for specialist.pt and finetune.json")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3 head only, 1e-3 with --full-finetune)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-tiles", type=int, default=256, help="held-out synthetic tiles to score")
    a = p.parse_args(argv)
    task = TASKS[a.task]
    try:
        a.modality = task.check_modalities(a.modality)
    except ValueError as e:  # unknown modality names included
        p.error(f"--modality: {e}")
    if a.steps < 1 or a.batch_size < 1 or (a.lr is not None and a.lr <= 0) or a.eval_tiles < 1:
        p.error("--steps, --batch-size, --lr and --eval-tiles must be positive")
    if not 0 < a.coverage <= 1:
        p.error(f"--coverage must be in (0, 1], got {a.coverage}")
    if not a.checkpoint.is_file():
        p.error(f"--checkpoint {a.checkpoint} does not exist; pre-train one with `python -m training.pretrain --out DIR`")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = _parse(argv)
    task = TASKS[a.task]
    model, payload = load_model(a.checkpoint)
    source = {"path": str(a.checkpoint), "sha256": sha256_file(a.checkpoint), "step": payload.get("step"),
              "router": model.cfg.router}
    extra: dict[str, Any] = {}
    if a.prune:
        from export.prune import prune  # the exporter owns pruning

        result = prune(model, a.modality, coverage=a.coverage, keep_top=a.keep_top, seed=a.seed)
        extra = {"kept": result.kept, "source_config": model.cfg, "parameters": result.parameters}
        backbone = result.model
    else:
        backbone = model
    spec, summary = finetune(backbone, task, a.modality, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                             seed=a.seed, full=a.full_finetune, info={"source_checkpoint": source}, **extra)
    heldout = evaluate_specialist(spec, task, a.modality, tiles=a.eval_tiles, seed=a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    spec.save(a.out / "specialist.pt")
    record = {
        **summary,
        "pruned": spec.pruned,
        "data": "synthetic (not real imagery)",
        "source_checkpoint": source,
        "kept": [k.model_dump() for k in spec.kept],
        "parameters": spec.parameter_counts.model_dump() | {"ratio": round(spec.parameter_counts.ratio, 4)},
        "heldout": heldout,
    }
    (a.out / "finetune.json").write_text(json.dumps(record, indent=2))
    score = (f"accuracy {heldout['accuracy']:.3f} (majority {heldout['majority_baseline']:.3f})" if task.head == "class"
             else f"pixel accuracy {heldout['pixel_accuracy']:.3f}, mean IoU {heldout['mean_iou']:.3f}")
    print(f"{task.name} {'+'.join(a.modality)}: held-out {score} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The shape of the paper's tables, measured on SYNTHETIC scenes (not real imagery).

    python -m training.evaluate --runs runs --out docs/evaluation

(1) Land-cover tile classification per modality, by k-NN on frozen pooled features and by
fine-tuning, for a same-architecture model from scratch, the full pre-trained model and the
pruned specialist. (2) The router ablation: k-NN accuracy per modality for the three routers.
Reads ``RUNS/<router>/checkpoint.pt`` and pre-trains (tiny preset) any that is missing, so the
whole table comes from one command. Writes ``evaluation.md`` and ``evaluation.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mapex_serve.bands import MODALITY_NAMES, resolve_modality
from training.checkpoint import load_model
from training.data.synthetic import SceneConfig, SyntheticBatch
from training.finetune import evaluate_specialist, finetune, synthetic_tiles, take
from training.model import Mapex
from training.pretrain import PretrainArgs, train
from training.seeds import FINETUNE, HELDOUT, TRAIN, derive_seed
from training.specialist import Specialist
from training.tasks import get_task

__all__ = ["ROUTERS", "LandcoverSplit", "embed", "ensure_checkpoint", "evaluate", "knn_accuracy", "landcover_split", "main"]

ROUTERS: tuple[str, ...] = ("deterministic", "positional", "modality")
SYNTHETIC_NOTE = (
    "All figures are measured on SYNTHETIC scenes from training/data/synthetic.py, not on real imagery: "
    "they show that the pieces work and how they compare, not how well MAPEX does on Earth."
)


# -- data --------------------------------------------------------------------------------------
@dataclass
class LandcoverSplit:
    """Labelled synthetic tiles of one modality: a train set (TRAIN seeds) and a test set (HELDOUT seeds)."""

    modality: str
    train: SyntheticBatch
    test: SyntheticBatch

    @property
    def train_labels(self) -> np.ndarray:
        return self.train.tile_class.numpy()

    @property
    def test_labels(self) -> np.ndarray:
        return self.test.tile_class.numpy()


@functools.lru_cache(maxsize=4)
def _tiles(seed: int, purpose: int, n: int, size: int) -> SyntheticBatch:
    """Every modality of ``n`` tiles, cached: the six modalities of a table are views of the same scenes."""
    return synthetic_tiles(seed, purpose, n, SceneConfig(size=size))


def _only(batch: SyntheticBatch, modality: str) -> SyntheticBatch:
    return SyntheticBatch({modality: batch.inputs[modality]}, batch.landcover, batch.tile_class, batch.flood,
                          batch.burn, batch.has_burn)


def landcover_split(modality: str, seed: int, train: int = 512, test: int = 256, size: int = 32) -> LandcoverSplit:
    """Deterministic train/test tiles for land-cover classification; the same scenes for every modality.

    The test tiles are exactly those ``evaluate_specialist(..., tiles=test, seed=seed)`` scores.
    """
    modality = resolve_modality(modality)
    return LandcoverSplit(modality, _only(_tiles(seed, TRAIN, train, size), modality),
                          _only(_tiles(seed, HELDOUT, test, size), modality))


def batches_of(batch: SyntheticBatch, size: int = 128) -> Iterator[dict[str, torch.Tensor]]:
    """The batch's inputs in slices of ``size`` tiles."""
    n = len(batch.tile_class)
    for i in range(0, n, size):
        yield {m: x[i : i + size] for m, x in batch.inputs.items()}


# -- k-NN ----------------------------------------------------------------------------------------
@torch.no_grad()
def embed(
    model: Mapex | Specialist | Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
    batches: Iterable[Mapping[str, torch.Tensor]],
) -> np.ndarray:
    """Pooled features (N, D) of the batches: a Mapex or a specialist's backbone, or any callable on inputs."""
    fn = model.backbone if isinstance(model, Specialist) else model
    if isinstance(fn, Mapex):
        fn.eval()
        net = fn

        def fn(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return net.forward_features(inputs).pooled()

    return np.concatenate([fn(b).float().cpu().numpy() for b in batches])


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour vote by cosine similarity; ties go to the class nearer in total."""
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError("features and labels differ in length")
    k = min(k, len(train_x))
    a = train_x / np.maximum(np.linalg.norm(train_x, axis=1, keepdims=True), 1e-12)
    b = test_x / np.maximum(np.linalg.norm(test_x, axis=1, keepdims=True), 1e-12)
    sims = b @ a.T
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    classes, labels = np.unique(train_y, return_inverse=True)
    votes = np.zeros((len(test_x), len(classes)))
    rows = np.repeat(np.arange(len(test_x)), k)
    np.add.at(votes, (rows, labels[nearest].ravel()), 1.0)
    tiebreak = np.zeros_like(votes)
    np.add.at(tiebreak, (rows, labels[nearest].ravel()), np.take_along_axis(sims, nearest, axis=1).ravel())
    predicted = classes[np.argmax(votes + 1e-3 * (tiebreak + k) / (2 * k + 1), axis=1)]
    return float((predicted == test_y).mean())


def _knn(model: Mapex | Specialist, split: LandcoverSplit) -> float:
    return knn_accuracy(embed(model, batches_of(split.train)), split.train_labels,
                        embed(model, batches_of(split.test)), split.test_labels)


# -- models --------------------------------------------------------------------------------------
def ensure_checkpoint(runs: Path, router: str, steps: int, seed: int) -> Path:
    """``RUNS/<router>/checkpoint.pt``, pre-training it (tiny preset) first if it is missing."""
    path = Path(runs) / router / "checkpoint.pt"
    if not path.is_file():
        print(f"no {path}: pre-training the {router} router for {steps} steps", file=sys.stderr)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            train(PretrainArgs(out=path.parent, preset="tiny", steps=steps, router=router, seed=seed))
        finally:  # pre-training turns Ctrl-C into "checkpoint and stop"; give it back
            for s, h in handlers.items():
                signal.signal(s, h)
    return path


def scratch_like(model: Mapex, seed: int) -> Mapex:
    """A randomly initialised model of the same architecture, normalising inputs as ``model`` does."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        scratch = Mapex(model.cfg)
    scratch.band_mean.copy_(model.band_mean)
    scratch.band_std.copy_(model.band_std)
    return scratch.eval()


def _sampler(split: LandcoverSplit, seed: int) -> Callable[[int, int], SyntheticBatch]:
    """Fine-tuning batches drawn from the split's train tiles, seeded by step."""
    n = len(split.train_labels)

    def data(step: int, size: int) -> SyntheticBatch:
        rng = np.random.default_rng(derive_seed(seed, FINETUNE, step))
        return take(split.train, rng.choice(n, size=min(size, n), replace=False))

    return data


# -- the tables ----------------------------------------------------------------------------------
def evaluate(
    runs: Path,
    *,
    pretrain_steps: int = 300,
    seed: int = 0,
    train_tiles: int = 512,
    test_tiles: int = 256,
    finetune_steps: int = 200,
    batch_size: int = 32,
    prune_scenes: int = 256,
    modalities: Sequence[str] = MODALITY_NAMES,
) -> dict[str, Any]:
    """Both tables as a JSON-ready dict (accuracies in %)."""
    began = time.perf_counter()
    task = get_task("landcover")
    checkpoints = {r: ensure_checkpoint(runs, r, pretrain_steps, seed) for r in ROUTERS}
    loaded = {r: load_model(checkpoints[r]) for r in ROUTERS}
    models = {r: m for r, (m, _) in loaded.items()}
    for r, m in models.items():
        if m.cfg.router != r:
            raise ValueError(f"{checkpoints[r]} was trained with the {m.cfg.router} router, expected {r}")
    pretrained = models["modality"]
    scratch = scratch_like(pretrained, seed)
    size = pretrained.cfg.img_size
    timings = {"pretrain_and_load": time.perf_counter() - began}

    from export.prune import prune  # the exporter owns pruning

    table1: dict[str, Any] = {}
    table2: dict[str, Any] = {}
    t_knn = t_ft = 0.0
    bar = tqdm(modalities, desc="evaluate", dynamic_ncols=True)
    for m in bar:
        split = landcover_split(m, seed, train_tiles, test_tiles, size)
        pruned = prune(pretrained, [m], scenes=prune_scenes, seed=seed)
        t0 = time.perf_counter()
        knn = {"scratch": _knn(scratch, split), "pretrained": _knn(pretrained, split), "pruned": _knn(pruned.model, split)}
        table2[m] = {r: (knn["pretrained"] if r == "modality" else _knn(models[r], split)) for r in ROUTERS}
        t1 = time.perf_counter()
        data = _sampler(split, seed)
        common = dict(steps=finetune_steps, batch_size=batch_size, seed=seed, data=data, progress=False)
        runs_ft = {
            "scratch": finetune(scratch, task, [m], full=True, **common)[0],
            "pretrained": finetune(pretrained, task, [m], full=False, **common)[0],
            "pruned": finetune(pruned.model, task, [m], full=False, kept=pruned.kept, source_config=pretrained.cfg,
                               parameters=pruned.parameters, **common)[0],
        }
        ft = {name: evaluate_specialist(spec, task, [m], seed=seed, data=split.test)["accuracy"]
              for name, spec in runs_ft.items()}
        t2 = time.perf_counter()
        t_knn, t_ft = t_knn + t1 - t0, t_ft + t2 - t1
        counts = np.bincount(split.test_labels, minlength=len(task.classes))
        table1[m] = {
            "knn": {k: round(100 * v, 1) for k, v in knn.items()},
            "finetune": {k: round(100 * v, 1) for k, v in ft.items()},
            "majority_baseline": round(100 * counts.max() / counts.sum(), 1),
            "parameters": {"full": pruned.parameters.full, "pruned": pruned.parameters.pruned,
                           "reduction": round(100 * (1 - pruned.parameters.ratio), 1)},
            "kept": [k.model_dump() for k in pruned.kept],
        }
        table2[m] = {r: round(100 * v, 1) for r, v in table2[m].items()}
        bar.set_postfix(knn=f"{table1[m]['knn']['pretrained']:.0f}%", ft=f"{table1[m]['finetune']['pretrained']:.0f}%")
    bar.close()
    timings |= {"knn": t_knn, "finetune": t_ft, "total": time.perf_counter() - began}
    test_counts = np.bincount(landcover_split(modalities[0], seed, train_tiles, test_tiles, size).test_labels,
                              minlength=len(task.classes))
    return {
        "data": "synthetic",
        "note": SYNTHETIC_NOTE,
        "settings": {
            "seed": seed, "train_tiles": train_tiles, "test_tiles": test_tiles, "tile_size": size, "knn_k": 5,
            "finetune_steps": finetune_steps, "batch_size": batch_size, "prune_scenes": prune_scenes,
            "prune_coverage": 0.95, "pretrain_steps_if_missing": pretrain_steps,
            "checkpoints": {r: str(p) for r, p in checkpoints.items()},
            "pretrained_steps": {r: payload.get("step") for r, (_, payload) in loaded.items()},
            "test_class_counts": dict(zip(task.classes, test_counts.tolist(), strict=True)),
        },
        "landcover_classification": table1,
        "router_ablation_knn": table2,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }


def to_markdown(result: dict[str, Any]) -> str:
    s, t1, t2 = result["settings"], result["landcover_classification"], result["router_ablation_knn"]
    lines = [
        "# MAPEX evaluation on SYNTHETIC data",
        "",
        f"> **{result['note']}**",
        "",
        "Written by `python -m training.evaluate`; the numbers are in `evaluation.json` beside this file.",
        f"Tiny preset, {s['tile_size']} px tiles, seed {s['seed']}; pre-training steps per router: "
        + ", ".join(f"{r} {n}" for r, n in s["pretrained_steps"].items()) + ".",
        f"Land-cover tile classification (7 classes; the majority class of each synthetic tile) on "
        f"{s['train_tiles']} train and {s['test_tiles']} held-out tiles: the same scenes for every modality. "
        f"Test classes: " + ", ".join(f"{c} {n}" for c, n in s["test_class_counts"].items() if n) + ".",
        "",
        "## (1) Land-cover classification per modality (accuracy, %)",
        "",
        f"k-NN: k = {s['knn_k']}, cosine similarity on mean-pooled frozen features. Fine-tuning: "
        f"{s['finetune_steps']} steps of batch {s['batch_size']} from the train tiles; the pre-trained and "
        "pruned backbones stay frozen (head only), the scratch model trains end to end from random "
        "initialisation (with the pre-trained model's band statistics). Pruned: `export.prune.prune(model, [M])`, "
        f"experts covering {s['prune_coverage']:.0%} of {s['prune_scenes']} calibration scenes' tokens.",
        "",
        "| modality | majority class | k-NN scratch | k-NN pre-trained | k-NN pruned | fine-tune scratch "
        "| fine-tune pre-trained | fine-tune pruned | encoder parameters full / pruned |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, r in t1.items():
        k, f, p = r["knn"], r["finetune"], r["parameters"]
        lines.append(
            f"| {m} | {r['majority_baseline']:.1f} | {k['scratch']:.1f} | {k['pretrained']:.1f} | {k['pruned']:.1f} "
            f"| {f['scratch']:.1f} | {f['pretrained']:.1f} | {f['pruned']:.1f} "
            f"| {p['full']:,} / {p['pruned']:,} (-{p['reduction']:.0f}%) |"
        )
    lines += [
        "",
        "## (2) Router ablation (k-NN accuracy, %)",
        "",
        "Same protocol as the k-NN columns above, one pre-trained checkpoint per router.",
        "",
        "| modality | " + " | ".join(ROUTERS) + " |",
        "| --- | " + " | ".join("---" for _ in ROUTERS) + " |",
    ]
    for m, r in t2.items():
        lines.append(f"| {m} | " + " | ".join(f"{r[x]:.1f}" for x in ROUTERS) + " |")
    sec = result["seconds"]
    se = 100 * (0.75 * 0.25 / s["test_tiles"]) ** 0.5
    lines += [
        "",
        f"One seed and {s['test_tiles']} test tiles: an accuracy near 75% has a standard error of about "
        f"{se:.1f} points, so differences of a few points between columns are within noise.",
        "",
        f"Run time: {sec['total']:.0f} s in all ({sec['pretrain_and_load']:.0f} s pre-training/loading, "
        f"{sec['knn']:.0f} s k-NN, {sec['finetune']:.0f} s fine-tuning).",
        "",
        f"*{SYNTHETIC_NOTE}*",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="folder with <router>/checkpoint.pt (missing ones are pre-trained)")
    p.add_argument("--out", type=Path, required=True, help="folder for evaluation.md and evaluation.json")
    p.add_argument("--steps", type=int, default=300, help="pre-training steps for a missing checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetune-steps", type=int, default=None, help="default 200 (10 with --quick)")
    p.add_argument("--quick", action="store_true", help="small sizes, for tests: 64 train / 32 test tiles, 10 steps")
    a = p.parse_args(argv)
    if a.steps < 1 or (a.finetune_steps is not None and a.finetune_steps < 1):
        p.error("--steps and --finetune-steps must be positive")
    sizes = dict(train_tiles=64, test_tiles=32, finetune_steps=10, batch_size=16, prune_scenes=32) if a.quick else {}
    if a.finetune_steps is not None:
        sizes["finetune_steps"] = a.finetune_steps
    result = evaluate(a.runs, pretrain_steps=a.steps, seed=a.seed, **sizes)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "evaluation.json").write_text(json.dumps(result, indent=2))
    markdown = to_markdown(result)
    (a.out / "evaluation.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

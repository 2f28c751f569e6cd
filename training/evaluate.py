"""The paper's tables, one command per data set: pre-train (or load), prune, fine-tune, score.

    python -m training.evaluate --dataset synthetic --runs runs --out docs/evaluation
    python -m training.evaluate --dataset ben-ge-8k --root DIR --preset mapex-130m --device cuda

For every row of the data set (task x modality, ``training.benchmarks``) and every seed: k-NN on
frozen pooled features of a same-architecture model from scratch, of the full pre-trained model
and of the pruned specialist; a linear probe (the specialist's backbone frozen, its head trained);
end-to-end fine-tuning of the pruned specialist with its head (the paper's FT column) and, as a
baseline, of the scratch model. Then the router ablation (k-NN per router) and, on synthetic data,
the ``router_prior`` ablation. Checkpoints are read from ``RUNS/<router>/checkpoint.pt`` (and
``RUNS/prior-<p>/``) and pre-trained on the data set's training split when missing. Writes
``OUT/<name>.md`` and ``OUT/<name>.json`` (``evaluation.*`` for synthetic data), headed by the
data set, preset, seeds, step counts and the commit it ran on; figures are mean and standard
deviation over the seeds.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mapex_serve.bands import resolve_modality
from training.benchmarks import BENCHMARKS, Benchmark, Row, benchmark
from training.checkpoint import load_model
from training.config import PRESETS, preset
from training.data import DatasetLayoutError, TileSet
from training.data.synthetic import SceneConfig, SyntheticBatch
from training.finetune import evaluate_specialist, finetune, synthetic_tiles
from training.model import Mapex
from training.moe import expert_groups
from training.pretrain import PretrainArgs, train
from training.routing import count_synthetic_routes
from training.seeds import FINETUNE, HELDOUT, TRAIN, derive_seed
from training.specialist import Specialist

__all__ = [
    "PRIORS", "ROUTERS", "LandcoverSplit", "Settings", "batches_of", "embed", "ensure_checkpoint", "evaluate",
    "knn_accuracy", "landcover_split", "main", "to_markdown",
]

ROUTERS: tuple[str, ...] = ("deterministic", "positional", "modality")
PRIORS: tuple[float, ...] = (0.0, 1.0, 2.0)
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
def ensure_checkpoint(runs: Path, name: str, args: PretrainArgs) -> Path:
    """``RUNS/<name>/checkpoint.pt``, pre-training it with ``args`` (out set here) first if it is missing."""
    path = Path(runs) / name / "checkpoint.pt"
    if not path.is_file():
        print(f"no {path}: pre-training {name} for {args.steps} steps", file=sys.stderr)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            train(replace(args, out=path.parent))
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


def _sampler(train: TileSet, seed: int) -> Callable[[int, int], TileSet]:
    """Fine-tuning batches drawn from the train tiles, seeded by step."""
    n = len(train)

    def data(step: int, size: int) -> TileSet:
        rng = np.random.default_rng(derive_seed(seed, FINETUNE, step))
        return train.take(rng.choice(n, size=min(size, n), replace=False))

    return data


def _tile_batches(tiles: TileSet, modality: str, device: torch.device, size: int = 128) -> Iterator[dict[str, torch.Tensor]]:
    x = tiles.inputs[modality]
    for i in range(0, len(x), size):
        yield {modality: x[i : i + size].to(device)}


def _knn_score(model: Mapex, train: TileSet, test: TileSet, row: Row, device: torch.device) -> float:
    return knn_accuracy(embed(model, _tile_batches(train, row.modality, device)), getattr(train, row.knn_label).numpy(),
                        embed(model, _tile_batches(test, row.modality, device)), getattr(test, row.knn_label).numpy())


def _score(spec: Specialist, row: Row, test: TileSet) -> float:
    result = evaluate_specialist(spec, row.task, [row.modality], data=test.only([row.modality]))
    return 100 * (result["accuracy"] if row.task.head == "class" else result["mean_iou"])


def _own_group_share(model: Mapex, seed: int, scenes: int = 128) -> tuple[float, float, float]:
    """Routing on held-out synthetic scenes: top-2 specialisation mean and min, and the share on the prior's own experts."""
    counts = count_synthetic_routes(model, HELDOUT, scenes, seed)
    spec = [v for layer in counts.specialization().values() for v in layer.values()]
    groups = expert_groups(model.cfg.num_experts, len(model.cfg.modalities))
    shares = counts.shares()
    own = [float(shares[i, m, groups[m]].sum()) for i in range(len(counts.layers)) for m in range(len(groups))]
    return float(np.mean(spec)), float(np.min(spec)), float(np.mean(own))


# -- the tables ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """How one table is measured: what the header of the table records."""

    preset: str = "tiny"
    seeds: tuple[int, ...] = (0, 1, 2)
    pretrain_steps: int = 300
    finetune_steps: int = 100
    batch_size: int = 32
    knn_k: int = 5
    coverage: float = 0.95
    calibration_tiles: int = 256
    priors: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    workers: int = 0
    pretrain_batch: int = 16
    #: Tiles for the band statistics of a checkpoint pre-trained here, and held-out scenes for routing shares.
    stats_samples: int = 256
    routing_scenes: int = 128


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": round(float(np.mean(values)), 2), "std": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 2),
            "runs": [round(float(v), 2) for v in values]}


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def evaluate(bench: Benchmark, runs: Path, settings: Settings = Settings()) -> dict[str, Any]:
    """Every table of ``bench`` as a JSON-ready dict (accuracy and mIoU in %)."""
    began, commit = time.perf_counter(), _commit()
    device = torch.device(settings.device)
    base_args = PretrainArgs(out=Path(runs), preset=settings.preset, steps=settings.pretrain_steps, seed=0,
                             batch_size=settings.pretrain_batch, precision=settings.precision, workers=settings.workers,
                             stats_samples=settings.stats_samples,
                             dataset=None if bench.synthetic else bench.name,
                             root=None if bench.root is None else str(bench.root))
    names = {r: r for r in ROUTERS}
    if settings.priors:
        names |= {f"prior-{p:g}": f"prior-{p:g}" for p in PRIORS if p != preset(settings.preset).router_prior}
    checkpoints = {}
    for name in names:
        router = name if name in ROUTERS else "modality"
        prior = None if name in ROUTERS else float(name.removeprefix("prior-"))
        checkpoints[name] = ensure_checkpoint(runs, name, replace(base_args, router=router, router_prior=prior))
    loaded = {n: load_model(p) for n, p in checkpoints.items()}
    expected = preset(settings.preset).to_dict()
    for n, (m, _) in loaded.items():
        got = {k: v for k, v in m.cfg.to_dict().items() if k not in ("router", "router_prior")}
        if got != {k: v for k, v in expected.items() if k not in ("router", "router_prior")}:
            raise ValueError(f"{checkpoints[n]} is not a {settings.preset} model; move it away or pass its --preset")
    models = {n: m.to(device) for n, (m, _) in loaded.items()}
    pretrained = models["modality"]
    size = pretrained.cfg.img_size
    t_pretrain = time.perf_counter() - began

    from export.prune import prune  # the exporter owns pruning

    cells: dict[str, dict[str, list[float]]] = {}
    ablation: dict[str, dict[str, list[float]]] = {}
    info: dict[str, Any] = {}
    # The ablations are per modality on land cover, as in the paper (every row where a data set has no land cover).
    ablated = [r for r in bench.rows if r.task.name == "landcover"] or list(bench.rows)
    bar = tqdm(total=len(settings.seeds) * len(bench.rows), desc=f"evaluate {bench.name}", dynamic_ncols=True)
    for seed in settings.seeds:
        scratch = scratch_like(pretrained, seed).to(device)
        for row in bench.rows:
            train_tiles, test_tiles, how = bench.tiles(seed, size, row.task)
            labels = getattr(test_tiles, row.task.label)
            counts = np.bincount(labels[labels >= 0].flatten().numpy(), minlength=len(row.task.classes))
            calib = list(_tile_batches(train_tiles.take(slice(0, settings.calibration_tiles)), row.modality, device, 64))
            pruned = prune(pretrained, [row.modality], coverage=settings.coverage, seed=seed, calibration=calib)
            c = cells.setdefault(row.key, {})
            knn = {"knn_scratch": _knn_score(scratch, train_tiles, test_tiles, row, device),
                   "knn_full": _knn_score(pretrained, train_tiles, test_tiles, row, device),
                   "knn_specialist": _knn_score(pruned.model, train_tiles, test_tiles, row, device)}
            if row in ablated:
                a = ablation.setdefault(row.key, {})
                for name, model in models.items():
                    v = knn["knn_full"] if name == "modality" else _knn_score(model, train_tiles, test_tiles, row, device)
                    a.setdefault(name, []).append(100 * v)
            common = dict(steps=settings.finetune_steps, batch_size=settings.batch_size, seed=seed,
                          data=_sampler(train_tiles.only([row.modality]), seed), progress=False, device=device)
            prune_info = dict(kept=pruned.kept, source_config=pretrained.cfg, parameters=pruned.parameters)
            probe = finetune(pruned.model, row.task, [row.modality], full=False, **prune_info, **common)[0]
            tuned = finetune(pruned.model, row.task, [row.modality], full=True, **prune_info, **common)[0]
            from_scratch = finetune(scratch, row.task, [row.modality], full=True, **common)[0]
            scores = {k: 100 * v for k, v in knn.items()} | {
                "linear_probe": _score(probe, row, test_tiles), "ft_specialist": _score(tuned, row, test_tiles),
                "ft_scratch": _score(from_scratch, row, test_tiles)}
            for k, v in scores.items():
                c.setdefault(k, []).append(v)
            c.setdefault("majority", []).append(100 * counts.max() / max(counts.sum(), 1))
            info[row.key] = {"task": row.task.name, "modality": row.modality, "head": row.task.head,
                             "metric": "accuracy" if row.task.head == "class" else "mIoU", "knn_label": row.knn_label,
                             "classes": list(row.task.classes), "tiles": how,
                             "parameters": {"full": pruned.parameters.full, "specialist": pruned.parameters.pruned,
                                            "reduction": round(100 * (1 - pruned.parameters.ratio), 1)},
                             "kept": [k.model_dump() for k in pruned.kept]}
            bar.update(1)
    bar.close()
    t_eval = time.perf_counter() - began - t_pretrain
    rows = {key: {**info[key], **{k: _mean_std(v) for k, v in c.items()}} for key, c in cells.items()}
    routers = {key: {n: _mean_std(v) for n, v in a.items() if n in ROUTERS} for key, a in ablation.items()}
    result: dict[str, Any] = {
        "data": bench.name,
        "note": SYNTHETIC_NOTE if bench.synthetic else f"Real data: {bench.name} read from {bench.root}.",
        "settings": {**settings.__dict__, "seeds": list(settings.seeds), "commit": commit, "tile_size": size,
                     "checkpoints": {n: str(p) for n, p in checkpoints.items()},
                     "pretrained_steps": {n: payload.get("step") for n, (_, payload) in loaded.items()},
                     "pretrained_on": {n: payload.get("data") for n, (_, payload) in loaded.items()}},
        "rows": rows,
        "router_ablation_knn": routers,
        "seconds": {"pretrain_and_load": round(t_pretrain, 1), "evaluate": round(t_eval, 1),
                    "total": round(time.perf_counter() - began, 1)},
    }
    if settings.priors:
        prior_models = {p: models["modality" if p == pretrained.cfg.router_prior else f"prior-{p:g}"] for p in PRIORS}
        result["router_prior_ablation"] = {
            f"{p:g}": {"knn_landcover": {key: _mean_std(ablation[key]["modality" if p == pretrained.cfg.router_prior
                                                                     else f"prior-{p:g}"])
                                         for key in rows if key.startswith("landcover/")},
                       **dict(zip(("specialisation_mean", "specialisation_min", "own_group_share"),
                                  (round(v, 3) for v in _own_group_share(m.cpu(), 0, settings.routing_scenes)), strict=True)),
                       "loss_ratio": _loss_ratio(checkpoints["modality" if p == pretrained.cfg.router_prior else f"prior-{p:g}"])}
            for p, m in prior_models.items()
        }
    return result


def _loss_ratio(checkpoint: Path) -> float | None:
    run = checkpoint.parent / "run.json"
    return round(json.loads(run.read_text())["loss_ratio"], 3) if run.is_file() else None


# -- writing -------------------------------------------------------------------------------------
COLUMNS = (("majority", "majority"), ("knn_scratch", "k-NN scratch"), ("knn_full", "k-NN full"),
           ("knn_specialist", "k-NN specialist"), ("linear_probe", "linear probe specialist"),
           ("ft_scratch", "FT scratch"), ("ft_specialist", "FT specialist"))


def _cell(v: Mapping[str, Any]) -> str:
    return f"{v['mean']:.1f} ± {v['std']:.1f}" if len(v["runs"]) > 1 else f"{v['mean']:.1f}"


def to_markdown(result: dict[str, Any]) -> str:
    s, rows = result["settings"], result["rows"]
    synthetic = result["data"] == "synthetic"
    title = "MAPEX evaluation on SYNTHETIC data" if synthetic else f"MAPEX evaluation on {result['data']}"
    first = next(iter(rows.values()))
    lines = [
        f"# {title}", "", f"> **{result['note']}**", "",
        "Written by `python -m training.evaluate`; the numbers are in the JSON file beside this one.", "",
        f"- data set: **{result['data']}**; tiles: {first['tiles']}",
        f"- preset: **{s['preset']}** ({s['tile_size']} px tiles), device {s['device']}, precision {s['precision']}",
        f"- seeds: {', '.join(map(str, s['seeds']))} (figures: mean ± standard deviation over the seeds)",
        "- pre-training steps per checkpoint: " + ", ".join(f"{r} {n}" for r, n in s["pretrained_steps"].items())
        + "; pre-trained on: " + ", ".join(sorted({str(v) for v in s["pretrained_on"].values()})),
        f"- fine-tuning: {s['finetune_steps']} steps of batch {s['batch_size']} per run; k-NN k = {s['knn_k']}; "
        f"pruning keeps the experts covering {s['coverage']:.0%} of the tokens of {s['calibration_tiles']} training tiles",
        f"- commit: {s['commit']}", "",
        "## (1) The paper's table: land cover per modality, flood, wildfire, segmentation", "",
        "k-NN: cosine similarity on mean-pooled frozen features (tile labels: the task's, or for a mask task "
        "its summary, e.g. has flood). Linear probe: the pruned specialist's backbone frozen, its head trained. "
        "FT: end-to-end fine-tuning of the pruned specialist with its head (the paper's FT column); FT scratch: "
        "the same architecture trained end to end from random initialisation. Classification rows report "
        "accuracy, mask rows mean IoU (labels of no data left out), all in %. Majority: share of the most common "
        "class in the test labels (for mask rows, of pixels: the pixel accuracy of a constant answer, not an IoU).", "",
        "| task | modality | metric | " + " | ".join(c for _, c in COLUMNS) + " | parameters full / specialist |",
        "| --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |",
    ]
    for r in rows.values():
        p = r["parameters"]
        lines.append(f"| {r['task']} | {r['modality']} | {r['metric']} | "
                     + " | ".join(_cell(r[k]) for k, _ in COLUMNS)
                     + f" | {p['full']:,} / {p['specialist']:,} (-{p['reduction']:.0f}%) |")
    lines += ["", "## (2) Router ablation (k-NN, %)", "",
              "The k-NN column of the full model, one pre-trained checkpoint per router (`modality` is the default); "
              "land-cover rows (every row where the data set has no land cover).", "",
              "| task | modality | " + " | ".join(ROUTERS) + " |", "| --- | --- | " + " | ".join("---" for _ in ROUTERS) + " |"]
    for key, r in result["router_ablation_knn"].items():
        task, m = key.split("/")
        lines.append(f"| {task} | {m} | " + " | ".join(_cell(r[x]) for x in ROUTERS) + " |")
    if "router_prior_ablation" in result:
        prior = result["router_prior_ablation"]
        mods = list(next(iter(prior.values()))["knn_landcover"])
        lines += ["", "## (3) `router_prior` ablation (modality router)", "",
                  "Initial bias of each modality's router logits towards its own expert pair: 0 (none: what the router "
                  "learns by itself), 1, 2 (the default). Specialisation: share of a modality's tokens on its two most "
                  "used experts (mean and minimum over layers and modalities; 2/12 = 0.17 ignores modality); own pair: "
                  "share on the pair the prior points at; loss ratio: reconstruction loss last/first 10 steps; k-NN "
                  "land-cover accuracy (%) per modality.", "",
                  "| router_prior | specialisation mean | min | own pair | loss ratio | "
                  + " | ".join(k.split("/")[1] for k in mods) + " |",
                  "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in mods) + " |"]
        for p, r in prior.items():
            lines.append(f"| {p} | {r['specialisation_mean']:.3f} | {r['specialisation_min']:.3f} | {r['own_group_share']:.3f} "
                         f"| {r['loss_ratio']} | " + " | ".join(_cell(r["knn_landcover"][k]) for k in mods) + " |")
    sec = result["seconds"]
    lines += ["", f"Run time: {sec['total']:.0f} s ({sec['pretrain_and_load']:.0f} s pre-training/loading, "
                  f"{sec['evaluate']:.0f} s k-NN, pruning and fine-tuning).", ""]
    if synthetic:
        lines += [f"*{SYNTHETIC_NOTE}*", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=list(BENCHMARKS), default="synthetic")
    p.add_argument("--root", type=Path, default=None, help="folder holding a real --dataset in its documented layout")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--runs", type=Path, default=None,
                   help="folder with <router>/checkpoint.pt (missing ones are pre-trained); default runs/<dataset>-<preset>")
    p.add_argument("--out", type=Path, default=None, help="folder for the table (.md and .json); default: --runs")
    p.add_argument("--steps", type=int, default=300, help="pre-training steps for a missing checkpoint")
    p.add_argument("--finetune-steps", type=int, default=None, help="per fine-tuning run (default 100, 5 with --quick)")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch")
    p.add_argument("--pretrain-batch", type=int, default=16, help="pre-training batch for a missing checkpoint")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (0 with --quick)")
    p.add_argument("--no-priors", action="store_true", help="skip the router_prior ablation (synthetic data)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="pre-training autocast")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers reading a real data set")
    p.add_argument("--quick", action="store_true", help="small sizes, for tests: 64 train / 32 test synthetic tiles, "
                   "5 fine-tuning steps, one seed")
    a = p.parse_args(argv)
    if a.steps < 1 or (a.finetune_steps is not None and a.finetune_steps < 1) or a.batch_size < 1:
        p.error("--steps, --finetune-steps and --batch-size must be positive")
    if a.dataset != "synthetic" and a.root is None:
        p.error(f"--dataset {a.dataset} needs --root DIR (see docs/evaluation/real-data.md for each layout)")
    runs = a.runs or Path("runs") / f"{a.dataset}-{a.preset}"
    out = a.out or runs
    seeds = tuple(a.seeds or ((0,) if a.quick else (0, 1, 2)))
    settings = Settings(preset=a.preset, seeds=seeds, pretrain_steps=a.steps,
                        finetune_steps=a.finetune_steps or (5 if a.quick else 100), batch_size=a.batch_size,
                        calibration_tiles=16 if a.quick else 256, priors=a.dataset == "synthetic" and not a.no_priors,
                        device=a.device, precision=a.precision, workers=a.workers, pretrain_batch=a.pretrain_batch,
                        stats_samples=32 if a.quick else 256, routing_scenes=32 if a.quick else 128)
    sizes = dict(train_tiles=64, test_tiles=32) if a.quick else {}
    try:
        result = evaluate(benchmark(a.dataset, a.root, a.workers, **sizes), runs, settings)
    except DatasetLayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    stem = "evaluation" if a.dataset == "synthetic" else a.dataset
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    markdown = to_markdown(result)
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

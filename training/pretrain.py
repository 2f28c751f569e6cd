"""Pre-train MAPEX by masked multi-modal autoencoding.

    python -m training.pretrain --preset tiny --data synthetic --steps 300 --out runs/tiny
    python -m training.pretrain --preset mapex-130m --dataset ben-ge-8k --root DIR --precision bf16 --workers 8 ...
    torchrun --nproc_per_node 2 -m training.pretrain ...   # DistributedDataParallel (gloo on CPU, nccl on GPU)

Writes ``OUT/checkpoint.pt`` (atomically) and ``OUT/metrics.jsonl`` (one line per step), and
``OUT/run.json`` at the end. Every random draw is a function of (seed, step, rank), so
``--resume`` continues exactly where the checkpoint stopped. SIGINT/SIGTERM finish the current
step, write a checkpoint and exit, so a pre-empted job loses nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from mapex_serve.bands import MODALITIES
from training.checkpoint import load_payload, save_atomic
from training.config import PRESETS, ROUTER_KINDS, MapexConfig, preset
from training.data import DATASETS, ChipFolder, DatasetLayoutError, FittedTiles, SceneConfig, collate, generate_batch
from training.data.splits import split_dataset
from training.model import Mapex, PretrainOutput
from training.schedule import warmup_cosine
from training.seeds import MASK, STATS, TRAIN, derive_seed

__all__ = ["PretrainArgs", "main", "train"]


@dataclass(frozen=True)
class PretrainArgs:
    out: Path
    preset: str = "tiny"
    data: str = "synthetic"
    steps: int = 300
    router: str = "modality"
    seed: int = 0
    resume: bool = False
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.05
    checkpoint_every: int = 50
    stats_samples: int = 256
    #: A real data set (``training.data.DATASETS``) at ``root``: pre-train on its training split.
    dataset: str | None = None
    root: str | None = None
    #: DataLoader worker processes reading a real data set (0: in the training process).
    workers: int = 0
    #: ``bf16``: the forward pass under bfloat16 autocast (weights and optimiser stay float32).
    precision: Literal["fp32", "bf16"] = "fp32"
    #: Overrides the preset's ``router_prior`` (the ablation over 0, 1, 2); None keeps the preset's.
    router_prior: float | None = None


class BatchSource(Protocol):
    """Where training batches come from: a pure function of (step, rank)."""

    #: The size of the batches' pixels on the ground (m), which the checkpoint records and export puts in the
    #: manifest for the service to check scenes against; None where it is not known (synthetic scenes).
    pixel_size_m: float | None

    def batch(self, step: int, rank: int, size: int) -> dict[str, torch.Tensor]: ...


def step_indices(n: int, seed: int, step: int, rank: int, size: int) -> np.ndarray:
    """The items of one step's batch: seeded by (seed, step, rank), so workers and resumes agree."""
    return np.random.default_rng(derive_seed(seed, TRAIN, step, rank)).integers(n, size=size)


class DatasetSource:
    """Tiles of a real data set's training split, read from disk step by step: the items of step s are
    ``step_indices(n, seed, s, rank, size)``, read here or by the DataLoader workers of ``_batches``."""

    def __init__(self, tiles: FittedTiles, seed: int) -> None:
        self.tiles, self.seed = tiles, seed
        self.pixel_size_m = tiles.pixel_size_m

    def batch(self, step: int, rank: int, size: int) -> dict[str, torch.Tensor]:
        return collate([self.tiles[int(i)] for i in step_indices(len(self.tiles), self.seed, step, rank, size)]).inputs

    def sample(self, seed: int, size: int) -> dict[str, torch.Tensor]:
        """``size`` distinct tiles (at most every tile once) for band statistics: a small set is read once."""
        order = np.random.default_rng(seed).permutation(len(self.tiles))[:size]
        return collate([self.tiles[int(i)] for i in order]).inputs


class _StepBatches(torch.utils.data.Dataset):
    """Steps ``first..last`` of a source as items, for DataLoader workers to draw ahead: a step's batch depends on
    the step alone, so it is the same whichever process draws it."""

    def __init__(self, source: BatchSource, first: int, last: int, rank: int, size: int) -> None:
        self.source, self.first, self.last, self.rank, self.size = source, first, last, rank, size

    def __len__(self) -> int:
        return max(0, self.last - self.first + 1)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.source.batch(self.first + i, self.rank, self.size)


def _batches(source: BatchSource, first: int, last: int, rank: int, size: int, workers: int = 0,
             pin_memory: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Each step's batch in turn; with ``workers``, read or drawn ahead in that many processes (two steps each), so
    that a GPU does not wait on GeoTIFF decoding or on synthetic scenes, which take about three times a tiny
    model's CPU training step to draw (108 ms a step of 32 here). On a CPU machine the workers compete with the
    training's threads (300 tiny steps on 2 cores: 43 s without, 49 s with one, 33 s with one and
    OMP_NUM_THREADS=1)."""
    if workers == 0:
        for step in range(first, last + 1):
            yield source.batch(step, rank, size)
        return
    yield from torch.utils.data.DataLoader(_StepBatches(source, first, last, rank, size), batch_size=None,
                                           num_workers=workers, pin_memory=pin_memory, persistent_workers=False)


def dataset_source(args: PretrainArgs, cfg: MapexConfig) -> DatasetSource:
    """The training split of ``args.dataset`` at ``args.root`` as ``cfg.img_size`` px tiles."""
    split = split_dataset(args.dataset, args.root)
    modalities = [m for m in split.train.modalities() if m in cfg.modalities]
    return DatasetSource(FittedTiles(split.train, cfg.img_size, modalities, split.train_index), args.seed)


def set_deterministic(device: torch.device) -> None:
    """Deterministic kernels; on CUDA some (index_add_ of the MoE dispatch) have none, so warn there instead."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True)


class SyntheticSource:
    """Freshly generated synthetic scenes for every step (an endless, seeded data set)."""

    pixel_size_m = None  # the scenes' shapes have no size on the ground

    def __init__(self, cfg: MapexConfig, seed: int) -> None:
        self.scene = SceneConfig(size=cfg.img_size)
        self.modalities, self.seed = cfg.modalities, seed

    def batch(self, step: int, rank: int, size: int) -> dict[str, torch.Tensor]:
        return generate_batch(derive_seed(self.seed, TRAIN, step, rank), size, self.scene, self.modalities).inputs


class ChipSource:
    """Random draws (with replacement, seeded by step and rank) from a folder of GeoTIFF chips."""

    def __init__(self, root: str, cfg: MapexConfig, seed: int) -> None:
        self.chips = ChipFolder(root)
        if len(self.chips) == 0:
            raise ValueError(f"no chips listed in the labels CSV of {root}")
        self.size, self.seed = cfg.img_size, seed
        self.pixel_size_m = self.chips.pixel_size_m()

    def batch(self, step: int, rank: int, size: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(derive_seed(self.seed, TRAIN, step, rank))
        items = [self.chips[int(i)][0] for i in rng.integers(len(self.chips), size=size)]
        common = set.intersection(*(set(item) for item in items))
        batch = {m: torch.stack([item[m] for item in items]) for m in sorted(common)}
        for m, x in batch.items():
            if x.shape[-2:] != (self.size, self.size):
                raise ValueError(f"chips of {m} are {tuple(x.shape[-2:])} px; this preset takes {self.size} x {self.size}")
        return batch


def band_statistics(source: BatchSource, seed: int, samples: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per-band mean and standard deviation (physical units) over a seeded sample of the data."""
    if isinstance(source, DatasetSource):
        batch = source.sample(derive_seed(seed, STATS), samples)
    else:
        batch = source.batch(derive_seed(seed, STATS), 0, samples)
    mean, std = {}, {}
    for m, x in batch.items():
        for c, b in enumerate(MODALITIES[m]):
            mean[b], std[b] = float(x[:, c].mean()), float(x[:, c].std())
    return mean, std


def lr_at(step: int, args: PretrainArgs) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at ``args.steps``."""
    return warmup_cosine(step, args.steps, args.warmup, args.lr)


class _PretrainStep(nn.Module):
    """Makes ``forward_pretrain`` the module's forward so DistributedDataParallel can hook it."""

    def __init__(self, model: Mapex) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor], generator: torch.Generator) -> PretrainOutput:
        return self.model.forward_pretrain(inputs, generator=generator)


@dataclass(frozen=True)
class _Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls) -> _Dist:
        """Join the process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
            device = torch.device("cuda", local)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
            dist.init_process_group("gloo")
            device = torch.device("cpu")
        return cls(dist.get_rank(), world, device)

    def mean(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def any(self, flag: bool) -> bool:
        return self.mean([float(flag)])[0] > 0


class _StopRequest:
    """Turns SIGINT/SIGTERM into 'checkpoint after this step and exit' until ``restore``.

    ``restore`` puts the previous handlers back, so that a caller that goes on after ``train``
    (``export.build`` pre-training the demo model, then building) can still be interrupted.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _weights_digest(model: nn.Module) -> float:
    return float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters())))


def _read_metrics(path: Path, up_to_step: int) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= up_to_step]


def train(args: PretrainArgs) -> dict[str, object]:
    """Run pre-training; returns the run summary (also written to ``OUT/run.json`` by rank 0)."""
    ddp = _Dist.setup()
    set_deterministic(ddp.device)
    out, ckpt_path = Path(args.out), Path(args.out) / "checkpoint.pt"
    metrics_path = out / "metrics.jsonl"
    payload = load_payload(ckpt_path) if args.resume and ckpt_path.exists() else None
    if args.resume and payload is None and ddp.main:
        print(f"no checkpoint in {out}; starting from scratch", file=sys.stderr)
    if payload is not None:
        cfg = MapexConfig.from_dict(payload["config"])
        if cfg.router != args.router:
            raise ValueError(f"checkpoint was trained with --router {cfg.router}, not {args.router}")
    else:
        overrides = {} if args.router_prior is None else {"router_prior": args.router_prior}
        cfg = preset(args.preset, router=args.router, **overrides)

    torch.manual_seed(args.seed)
    model = Mapex(cfg)
    source: BatchSource
    if args.dataset:
        source = dataset_source(args, cfg)
    elif args.data == "synthetic":
        source = SyntheticSource(cfg, args.seed)
    else:
        source = ChipSource(args.data, cfg, args.seed)
    start = 0
    if payload is not None:
        model.load_state_dict(payload["model"])
        start = int(payload["step"])
    else:
        model.set_band_stats(*band_statistics(source, args.seed, args.stats_samples))
    model.to(ddp.device)
    step_module = _PretrainStep(model)
    wrapped: nn.Module = step_module
    if ddp.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])

    def checkpoint(step: int) -> None:
        if ddp.main:
            save_atomic(
                {"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "step": step, "args": {**asdict(args), "out": str(args.out)}, "world_size": ddp.world,
                 "band_stats": model.band_stats(), "data": args.dataset or args.data,
                 "pixel_size_m": source.pixel_size_m},
                ckpt_path,
            )

    lines = _read_metrics(metrics_path, start) if ddp.main else []
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(f"{line}\n" for line in lines))
    stop = _StopRequest()
    try:
        per_rank = max(1, args.batch_size // ddp.world)
        bar = tqdm(total=args.steps, initial=start, desc=f"pretrain {cfg.router}", disable=not ddp.main, dynamic_ncols=True)
        began, step = time.perf_counter(), start
        model.train()
        autocast = torch.autocast(ddp.device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
        batches = _batches(source, start + 1, args.steps, ddp.rank, per_rank, args.workers,
                           pin_memory=ddp.device.type == "cuda")
        with open(metrics_path, "a") if ddp.main else open(os.devnull, "w") as log:
            for step, batch in zip(range(start + 1, args.steps + 1), batches, strict=False):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, args)
                inputs = {m: x.to(ddp.device, non_blocking=True) for m, x in batch.items()}
                generator = torch.Generator().manual_seed(derive_seed(args.seed, MASK, step, ddp.rank))
                with autocast:
                    result: PretrainOutput = wrapped(inputs, generator)
                optimizer.zero_grad(set_to_none=True)
                result.loss.backward()
                grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), 1.0))
                optimizer.step()
                loss, recon, balance = ddp.mean([float(result.loss), float(result.recon_loss), float(result.balance_loss)])
                log.write(json.dumps({"step": step, "loss": loss, "recon_loss": recon, "balance_loss": balance,
                                      "lr": lr_at(step, args), "grad_norm": grad_norm}) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(recon=f"{recon:.3f}")
                interrupted = ddp.any(stop.signum != 0)
                if step % args.checkpoint_every == 0 or step == args.steps or interrupted:
                    checkpoint(step)
                if interrupted:
                    break
        bar.close()

        digest = _weights_digest(model)
        digests = [digest] * ddp.world
        if ddp.world > 1:
            gathered: list[float] = [0.0] * ddp.world
            dist.all_gather_object(gathered, digest)
            digests = gathered
        summary = _summary(metrics_path, args, cfg, ddp.world, step, time.perf_counter() - began, model.num_parameters(),
                           source.pixel_size_m)
        summary |= {"interrupted": bool(stop.signum), "ranks_identical": len(set(digests)) == 1, "weights_digest": digests}
        if ddp.main:
            (out / "run.json").write_text(json.dumps(summary, indent=2))
        if ddp.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        if stop.signum:
            summary["exit_code"] = 128 + stop.signum
        return summary
    finally:
        stop.restore()


def _summary(metrics_path: Path, args: PretrainArgs, cfg: MapexConfig, world: int, step: int, seconds: float,
             parameters: int, pixel_size_m: float | None) -> dict[str, object]:
    """The figures people quote: loss over the first and last ten steps, and their ratio."""
    recon = [json.loads(line)["recon_loss"] for line in metrics_path.read_text().splitlines() if line] if metrics_path.exists() else []
    first, last = (float(np.mean(recon[:10])), float(np.mean(recon[-10:]))) if recon else (float("nan"), float("nan"))
    return {"preset": args.preset, "router": cfg.router, "data": args.dataset or args.data,
            "pixel_size_m": pixel_size_m, "seed": args.seed,
            "steps": step, "precision": args.precision, "workers": args.workers,
            "world_size": world, "seconds": round(seconds, 2), "recon_loss_first10": first,
            "recon_loss_last10": last, "loss_ratio": last / first if recon else float("nan"),
            "parameters": parameters}


def parse_args(argv: Sequence[str] | None = None) -> PretrainArgs:
    p = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pt, metrics.jsonl, run.json")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a folder of GeoTIFF chips with labels.csv")
    p.add_argument("--steps", type=int, default=300, help="total optimisation steps (also with --resume)")
    p.add_argument("--router", choices=ROUTER_KINDS, default="modality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--batch-size", type=int, default=16, help="global batch, split over torchrun ranks")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--dataset", choices=sorted(DATASETS), default=None,
                   help="a real data set (with --root): pre-train on its training split instead of --data")
    p.add_argument("--root", default=None, help="folder holding --dataset in its documented layout")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes that read --dataset or draw synthetic scenes ahead, for a GPU "
                        "(on a CPU machine they compete with the training's threads)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: bfloat16 autocast (GPU)")
    p.add_argument("--router-prior", type=float, default=None, help="initial bias of the modality router towards "
                   "each modality's own experts (default: the preset's, 2)")
    a = p.parse_args(argv)
    if a.dataset and not a.root:
        p.error("--dataset needs --root, the folder the data set was unpacked into")
    if a.steps < 1 or a.batch_size < 1 or a.checkpoint_every < 1:
        p.error("--steps, --batch-size and --checkpoint-every must be positive")
    if a.workers < 0:
        p.error("--workers must be >= 0")
    if a.data != "synthetic" and not Path(a.data).is_dir():
        p.error(f"--data must be 'synthetic' or an existing folder of GeoTIFF chips, got {a.data!r}")
    return PretrainArgs(out=a.out, preset=a.preset, data=a.data, steps=a.steps, router=a.router, seed=a.seed,
                        resume=a.resume, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup,
                        checkpoint_every=a.checkpoint_every, dataset=a.dataset, root=a.root, workers=a.workers,
                        precision=a.precision, router_prior=a.router_prior)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = train(args)
    except DatasetLayoutError as e:  # a data set laid out otherwise than documented: say so, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return int(summary.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())

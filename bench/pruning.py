"""Pruned specialist against the full model, per modality: parameters, ONNX size, CPU latency, peak memory.

    python -m bench.pruning [--checkpoint runs/modality/checkpoint.pt] [--repeats 30]

Both sides are landcover specialists built here from one checkpoint with the same (untrained)
class head, so only the backbone differs: ``export.prune.prune`` for the specialist, every expert
kept for the full model, both exported by ``export.build.export_onnx`` (MoE blocks in their
dense ONNX form). Latency is ONNX Runtime on the CPU with 2 intra-op threads, the median of
repeated runs after a warm-up, specialist and full model interleaved run by run so that load from
other jobs hits both alike; PyTorch eager is measured the same way for reference. Peak memory is
the rise of VmHWM in a fresh process that opens the model and runs batch 16 (native allocations
included). Goal: specialist latency <= 0.5 x the full model's at batch 16, for every modality.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from bench.harness import RESULTS, Goal, Report, median, peak_rss_bytes, reset_peak_rss, timed
from export.build import INPUT_NAME, demo_checkpoint, export_onnx, random_batch
from export.prune import apply_pruning, prune
from mapex_serve.bands import MODALITY_NAMES, resolve_modality
from mapex_serve.repository import ExpertsKept
from training.checkpoint import load_model
from training.finetune import make_head
from training.model import Mapex
from training.specialist import Specialist
from training.tasks import get_task

TASK = "landcover"
GOAL_RATIO = 0.5


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _peak_worker(kind: str, path: str, batch: int, threads: int) -> int:
    """In a fresh process: bytes VmHWM rises while the model is opened and runs ``batch`` tiles three times."""
    if kind == "onnx":
        session_path = Path(path)
        base = reset_peak_rss()
        session = _session(session_path, threads)
        shape = [batch, *session.get_inputs()[0].shape[1:]]
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        for _ in range(3):
            session.run(None, {INPUT_NAME: x})
    else:
        torch.set_num_threads(threads)
        base = reset_peak_rss()
        spec = Specialist.load(path)
        x = random_batch(spec, batch, seed=0)
        with torch.inference_mode():
            for _ in range(3):
                spec(x)
    return peak_rss_bytes() - base


def _specialists(model: Mapex, modality: str) -> dict[str, Specialist]:
    """The unpruned and the pruned specialist of ``modality``, sharing one head.

    The unpruned one is ``apply_pruning`` keeping every expert: only the other modalities' inputs
    go, which its forward never touches, so it computes what the full model computes.
    """
    task = get_task(TASK)
    torch.manual_seed(0)
    head = make_head(task, model)
    pruned = prune(model, [modality])
    every = [ExpertsKept(block=k.block, experts=list(range(k.of)), of=k.of, coverage=1.0) for k in pruned.kept]
    full = apply_pruning(model, [modality], every)
    return {
        "full": Specialist(full, head, TASK, [modality], kept=every, source_config=model.cfg).eval(),
        "pruned": Specialist(pruned.model, copy.deepcopy(head), TASK, [modality], kept=pruned.kept,
                             source_config=model.cfg, parameters=pruned.parameters).eval(),
    }


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each function, the functions taking turns run by run."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        timed(fn, 0, warmup)
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k] += timed(fn, 1, 0)
    return {k: median(v) for k, v in times.items()}


def measure(model: Mapex, modality: str, args: argparse.Namespace, workdir: Path,
            pool: ProcessPoolExecutor) -> list[dict]:
    """Rows for one modality: the full model, the specialist, and their ratio."""
    specs = _specialists(model, modality)
    paths = {k: workdir / f"{modality.lower()}-{k}.onnx" for k in specs}
    files = {k: workdir / f"{modality.lower()}-{k}.pt" for k in specs}
    for k, spec in specs.items():
        export_onnx(spec, paths[k], args.opset)
        spec.save(files[k])
    sessions = {k: _session(p, args.threads) for k, p in paths.items()}
    torch.set_num_threads(args.threads)
    rows = {k: {"modality": modality, "model": k,
                "parameters": sum(p.numel() for p in spec.parameters()),
                "onnx_mb": paths[k].stat().st_size / 2**20} for k, spec in specs.items()}
    for batch in args.batches:
        x = {k: random_batch(spec, batch, seed=batch) for k, spec in specs.items()}
        onnx = _interleaved({k: (lambda k=k, x=x: sessions[k].run(None, {INPUT_NAME: x[k].numpy()})) for k in specs},
                            args.repeats, args.warmup)
        with torch.inference_mode():
            eager = _interleaved({k: (lambda k=k, x=x: specs[k](x[k])) for k in specs}, args.repeats, args.warmup)
        for k in specs:
            rows[k][f"ort_b{batch}_ms"] = onnx[k] * 1e3
            rows[k][f"torch_b{batch}_ms"] = eager[k] * 1e3
    peak_batch = max(args.batches)
    for k in specs:
        rows[k]["ort_peak_mb"] = pool.submit(_peak_worker, "onnx", str(paths[k]), peak_batch, args.threads).result() / 2**20
        rows[k]["torch_peak_mb"] = pool.submit(_peak_worker, "torch", str(files[k]), peak_batch, args.threads).result() / 2**20
    full, spec = rows["full"], rows["pruned"]
    ratio = {"modality": modality, "model": "pruned / full"}
    ratio.update({c: spec[c] / full[c] for c in full if c not in ("modality", "model")})
    return [full, spec, ratio]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pruning", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="pre-trained checkpoint (default: the cached tiny demo model)")
    p.add_argument("--modality", action="append", help="modality to measure (repeat; default all six)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model and batch (median taken)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for ONNX Runtime and torch")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    modalities = [resolve_modality(m) for m in args.modality] if args.modality else list(MODALITY_NAMES)
    checkpoint = args.checkpoint or demo_checkpoint()
    model, _ = load_model(checkpoint)

    rows = []
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp, \
            ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
        for modality in tqdm(modalities, desc="pruning benchmark", unit="modality", dynamic_ncols=True):
            rows += measure(model, modality, args, Path(tmp), pool)

    big = max(args.batches)
    ratios = {r["modality"]: r[f"ort_b{big}_ms"] for r in rows if r["model"] == "pruned / full"}
    worst = max(ratios, key=ratios.get)
    columns = ["modality", "model", "parameters", "onnx_mb"]
    columns += [f"{b}_b{n}_ms" for b in ("ort", "torch") for n in args.batches] + ["ort_peak_mb", "torch_peak_mb"]
    report = Report(
        "pruning", "Pruned specialist vs full model (landcover head), CPU",
        {"checkpoint": str(checkpoint), "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
         "onnxruntime": ort.__version__, "torch": torch.__version__, "cpus": len(os.sched_getaffinity(0))},
        rows, columns,
        [Goal(f"specialist / full ONNX Runtime CPU latency at batch {big}, worst modality ({worst})",
              ratios[worst], GOAL_RATIO, at_most=True,
              detail="; " + ", ".join(f"{m} {r:.3f}" for m, r in ratios.items()))],
        ["latencies are medians in ms; peak memory is the VmHWM rise of a fresh process at batch "
         f"{big}; the full model's ONNX graph runs every expert densely (its export form), eager PyTorch "
         "dispatches each token to its top-k experts only"],
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pruned specialist against the full model, per modality: parameters, ONNX size, CPU latency, peak memory.

    python -m bench.pruning [--checkpoint runs/modality/checkpoint.pt] [--repeats 30]

Both sides are landcover specialists built here from one checkpoint with the same (untrained)
class head, so only the backbone differs: ``export.prune.prune`` for the specialist, every expert
kept for the full model. Each runs in three forms: ONNX Runtime on the graph the build ships
(``sparse``: each token runs only its chosen expert), ONNX Runtime on the ``dense`` graph (every
kept expert on every token, masked), and eager PyTorch (sparse dispatch). Latency is the median
of repeated runs after a warm-up on the CPU with one intra-op thread, all six model-form pairs
interleaved run by run so that load from other jobs hits them alike; ONNX Runtime sessions are
opened as the service opens them (pool threads do not spin). Peak memory is the rise of VmHWM in
a fresh process that opens the model (the shipped ONNX graph, or the PyTorch file) and runs the
largest batch (native allocations included).

One thread, because these machines are shared: with 2 threads on 2 cores and other jobs running
(load average 5), eager PyTorch's batch-16 medians were 18-736 ms (7 ms on one thread; its
threads wait for each other at every operator, and one of them was often off the CPU) while
ONNX Runtime's were 5-12 ms; a ratio against that says nothing about the engine. Use
``--threads 2`` on a quiet machine.

Goal (issue 12): the specialist's shipped ONNX graph at batch 16 takes at most 0.8x eager
PyTorch's time for the same specialist, for every modality. The pruning win is then stated with
each model in its fastest form, so a win that only comes from the full model's slow dense graph
is not counted: the dense full model runs twelve experts per token, the sparse one runs one.
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
from export.build import INPUT_NAME, Form, demo_checkpoint, export_onnx, random_batch
from export.prune import apply_pruning, prune
from mapex_serve.bands import MODALITY_NAMES, resolve_modality
from mapex_serve.repository import ExpertsKept
from training.checkpoint import load_model
from training.finetune import make_head
from training.model import Mapex
from training.specialist import Specialist
from training.tasks import get_task

TASK = "landcover"
GOAL_ENGINE = 0.8  # specialist ONNX Runtime / eager PyTorch at the largest batch
FORMS: tuple[Form, ...] = ("sparse", "dense")
SHIPPED: Form = "sparse"


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as mapex_serve.engine
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


def _interleaved(fns: dict[tuple[str, str], Callable[[], object]], repeats: int,
                 warmup: int) -> dict[tuple[str, str], float]:
    """Median seconds of each function, the functions taking turns run by run."""
    times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
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
    paths = {(k, f): workdir / f"{modality.lower()}-{k}-{f}.onnx" for k in specs for f in FORMS}
    files = {k: workdir / f"{modality.lower()}-{k}.pt" for k in specs}
    for (k, form), path in paths.items():
        export_onnx(specs[k], path, args.opset, form)
    for k, spec in specs.items():
        spec.save(files[k])
    sessions = {key: _session(p, args.threads) for key, p in paths.items()}
    torch.set_num_threads(args.threads)
    rows = {k: {"modality": modality, "model": k,
                "parameters": sum(p.numel() for p in spec.parameters()),
                "onnx_mb": paths[k, SHIPPED].stat().st_size / 2**20} for k, spec in specs.items()}
    for batch in args.batches:
        x = {k: random_batch(spec, batch, seed=batch) for k, spec in specs.items()}
        feeds = {k: {INPUT_NAME: v.numpy()} for k, v in x.items()}
        fns: dict[tuple[str, str], Callable[[], object]] = {
            (k, f"ort_{form}"): (lambda s=sessions[k, form], feed=feeds[k]: s.run(None, feed))
            for k in specs for form in FORMS
        }
        fns |= {(k, "torch"): (lambda spec=spec, x=x[k]: spec(x)) for k, spec in specs.items()}
        with torch.inference_mode():
            times = _interleaved(fns, args.repeats, args.warmup)
        for (k, form), seconds in times.items():
            rows[k][f"{form}_b{batch}_ms"] = seconds * 1e3
        for k in specs:
            fastest = min((f"ort_{form}" for form in FORMS), key=lambda f, k=k: times[k, f])
            fastest = fastest if times[k, fastest] < times[k, "torch"] else "torch"
            rows[k][f"fastest_b{batch}"] = fastest
            rows[k][f"fastest_b{batch}_ms"] = times[k, fastest] * 1e3
    peak_batch = max(args.batches)
    for k in specs:
        rows[k]["ort_peak_mb"] = pool.submit(_peak_worker, "onnx", str(paths[k, SHIPPED]), peak_batch,
                                             args.threads).result() / 2**20
        rows[k]["torch_peak_mb"] = pool.submit(_peak_worker, "torch", str(files[k]), peak_batch, args.threads).result() / 2**20
    full, spec = rows["full"], rows["pruned"]
    ratio = {"modality": modality, "model": "pruned / full"}
    ratio.update({c: spec[c] / full[c] for c, v in full.items() if isinstance(v, int | float)})
    engine = {"modality": modality, "model": "pruned: ONNX / eager"}
    engine.update({f"ort_{form}_b{n}_ms": spec[f"ort_{form}_b{n}_ms"] / spec[f"torch_b{n}_ms"]
                   for form in FORMS for n in args.batches})
    return [full, spec, ratio, engine]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pruning", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="pre-trained checkpoint (default: the cached tiny demo model)")
    p.add_argument("--modality", action="append", help="modality to measure (repeat; default all six)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model and batch (median taken)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads for ONNX Runtime and torch (default 1: see the module docstring)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    modalities = [resolve_modality(m) for m in args.modality] if args.modality else list(MODALITY_NAMES)
    checkpoint = args.checkpoint or demo_checkpoint()
    model, _ = load_model(checkpoint)

    load_before = os.getloadavg()[0]
    rows = []
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp, \
            ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
        for modality in tqdm(modalities, desc="pruning benchmark", unit="modality", dynamic_ncols=True):
            rows += measure(model, modality, args, Path(tmp), pool)

    big = max(args.batches)
    engine = {r["modality"]: r[f"ort_{SHIPPED}_b{big}_ms"] for r in rows if r["model"] == "pruned: ONNX / eager"}
    latency = {r["modality"]: r[f"fastest_b{big}_ms"] for r in rows if r["model"] == "pruned / full"}
    memory = {r["modality"]: r["ort_peak_mb"] for r in rows if r["model"] == "pruned / full"}
    params = {r["modality"]: r["parameters"] for r in rows if r["model"] == "pruned / full"}
    worst = max(engine, key=engine.get)
    columns = ["modality", "model", "parameters", "onnx_mb"]
    columns += [f"{form}_b{n}_ms" for n in args.batches for form in (*(f"ort_{f}" for f in FORMS), "torch")]
    columns += [f"fastest_b{big}", f"fastest_b{big}_ms", "ort_peak_mb", "torch_peak_mb"]

    def spread(figures: dict[str, float]) -> str:
        return f"{min(figures.values()):.3f}-{max(figures.values()):.3f} (" + ", ".join(
            f"{m} {v:.3f}" for m, v in figures.items()) + ")"

    report = Report(
        "pruning", "Pruned specialist vs full model (landcover head), CPU",
        {"checkpoint": str(checkpoint), "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
         "onnxruntime": ort.__version__, "torch": torch.__version__, "cpus": len(os.sched_getaffinity(0)),
         "load average (1 min) before/after": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}"},
        rows, columns,
        [Goal(f"specialist ONNX Runtime ({SHIPPED} graph, as shipped) / eager PyTorch at batch {big}, "
              f"worst modality ({worst})", engine[worst], GOAL_ENGINE, at_most=True,
              detail="; " + ", ".join(f"{m} {r:.3f}" for m, r in engine.items()))],
        [f"pruning win, specialist / full model each in its fastest form at batch {big}: latency {spread(latency)}",
         f"pruning win, peak memory of the shipped ONNX graph at batch {big}: {spread(memory)}; "
         f"parameters {spread(params)}",
         "latencies are medians in ms; ort_sparse is the graph the build ships, ort_dense the former one (every kept "
         "expert on every token), torch eager PyTorch (sparse dispatch); fastest names the quickest form; "
         f"peak memory is the VmHWM rise of a fresh process at batch {big}; ratio rows divide column by column",
         f"the load average counts this benchmark's own threads (about {args.threads}); above that other jobs shared "
         "the cores, which slows eager PyTorch on several threads most (its OpenMP threads wait for each other at "
         "every operator)"],
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The engine's speed for a paper-sized specialist on each device here: the cost model's engine input.

    python -m bench.engine_speed [--preset mapex-130m] [--modality SAR] [--batch 32 128] [--repeats 20]

docs/performance.md predicts a GPU node's throughput from an engine speed T (tiles/s) that was
assumed, not measured. This measures it. The specialist is the ``mapex-130m`` preset (128 px tiles,
width 512, 12 blocks) pruned to one modality. It keeps two experts in each MoE block, as the demo's
pruning does, and has the flood task's segmentation head. Its weights are random: speed does not
depend on them, except through how the router splits tokens between the two experts.

Each engine runs where it can:
- eager PyTorch, fp32, on the CPU (all usable cores);
- ONNX Runtime on the CPU, on the graph the build ships (``export_onnx``, sparse dispatch), with the same
  threads;
- PyTorch on CUDA, where a GPU is visible: fp32 (TF32 matrix products allowed) and bf16 autocast;
- ONNX Runtime's CUDA execution provider, where ``onnxruntime-gpu`` is installed and sees the GPU.

Each figure is the median of ``--repeats`` timed batches after warm-up, from a batch on the CPU to its
probabilities back there (so a CUDA batch counts its copies and waits for the device). Each row also gives the largest difference of its probabilities from
eager fp32 on the CPU for the same batch, so a fast engine that computes something else shows.
Results: bench/results/engine_speed.{json,md}.

On the GPU machine (its python3 has torch, onnx, onnxruntime and onnxscript, but neither pydantic nor
rasterio), carry their wheels for Python 3.12 (README of the device tool):
pydantic, pydantic-core, annotated-types, typing-inspection, rasterio, affine, cligj, click-plugins.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.flops import H200_FP16_TFLOPS, flops_per_tile
from bench.harness import RESULTS, Report, median, timed
from export.build import INPUT_NAME, export_onnx, random_batch
from export.prune import apply_pruning
from mapex_serve.bands import resolve_modality
from mapex_serve.cores import usable_cores
from mapex_serve.repository import ExpertsKept
from training.config import preset
from training.finetune import make_head
from training.model import Mapex
from training.specialist import Specialist
from training.tasks import get_task

TASK = "flood"
KEPT = 2  # experts a MoE block keeps, as the demo's pruning keeps for each modality


@dataclass(frozen=True)
class Engine:
    """One way of running the specialist: a function of a CPU batch that returns its probabilities on the CPU.

    Returning them on the CPU waits for a GPU to finish, and counts the copies both ways, as the service's
    engine does.
    """

    name: str
    device: str
    run: Callable[[torch.Tensor], np.ndarray]


def specialist(preset_name: str, modality: str, seed: int) -> Specialist:
    """A randomly initialised specialist of ``preset_name`` for ``modality``, two experts kept a block."""
    torch.manual_seed(seed)
    model = Mapex(preset(preset_name))
    kept = [ExpertsKept(block=b, experts=list(range(KEPT)), of=model.cfg.num_experts, coverage=1.0)
            for b in model.cfg.moe_blocks]
    backbone = apply_pruning(model, [modality], kept)
    head = make_head(get_task(TASK), backbone)
    return Specialist(backbone, head, TASK, [modality], kept=kept, source_config=model.cfg).eval()


def _torch_engine(model: Specialist, device: str, dtype: torch.dtype | None) -> Engine:
    """``model`` (already on ``device``: cpu or cuda) in eager PyTorch, under autocast to ``dtype`` if one is given."""

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            out = model(x.to(device))
        return out.float().cpu().numpy()

    name = f"PyTorch eager {'fp32' if dtype is None else str(dtype).removeprefix('torch.')}"
    return Engine(name, device, run)


def _ort_engine(path: Path, provider: str, threads: int) -> Engine | None:
    if provider not in ort.get_available_providers():
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as mapex_serve.engine
    session = ort.InferenceSession(str(path), options, providers=[provider])
    if session.get_providers()[0] != provider:  # fell back to the CPU (no GPU visible)
        return None
    return Engine(f"ONNX Runtime {provider.removesuffix('ExecutionProvider')}",
                  "cpu" if provider.startswith("CPU") else "cuda",
                  lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0])


def engines(spec: Specialist, onnx: Path | None, threads: int) -> list[Engine]:
    """Every engine this machine can run: the CPU ones, then those on the GPU (a copy of the model there)."""
    out = [_torch_engine(spec, "cpu", None)]
    if onnx is not None:
        out += [e for p in ("CPUExecutionProvider", "CUDAExecutionProvider") if (e := _ort_engine(onnx, p, threads))]
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        on_gpu = copy.deepcopy(spec).to("cuda")
        out += [_torch_engine(on_gpu, "cuda", None), _torch_engine(on_gpu, "cuda", torch.bfloat16)]
    return out


def measure(engine: Engine, x: torch.Tensor, reference: np.ndarray, repeats: int, warmup: int,
            flops: float) -> dict[str, object]:
    seconds = median(timed(lambda: engine.run(x), repeats, warmup))
    tiles_s = len(x) / seconds
    return {"engine": engine.name, "device": engine.device, "batch": len(x), "batch_ms": seconds * 1e3,
            "tiles_per_s": tiles_s,
            "tflop_s": tiles_s * flops / 1e12, "max_abs_diff": float(np.abs(engine.run(x) - reference).max())}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engine_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mapex-130m", help="model size (default %(default)s: the paper's)")
    p.add_argument("--modality", default="SAR", help="the specialist's modality (default %(default)s, as flood)")
    p.add_argument("--batch", type=int, nargs="+", default=[32],
                   help="tiles a batch, one or more sizes (default 32, the service's MAPEX_MAX_BATCH)")
    p.add_argument("--repeats", type=int, default=20, help="timed batches an engine (median taken)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX export and ONNX Runtime")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    modality = resolve_modality(args.modality)
    threads = usable_cores()
    torch.set_num_threads(threads)

    spec = specialist(args.preset, modality, args.seed)
    config = spec.backbone.cfg
    flops = flops_per_tile(config, len(spec.backbone.band_names), KEPT, dense_experts=False)
    batches = [random_batch(spec, n, seed=args.seed + 1) for n in args.batch]
    with torch.inference_mode():
        references = [spec(x).numpy() for x in batches]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        onnx = Path(tmp) / "model.onnx" if args.onnx else None
        if onnx is not None:
            print(f"exporting the {args.preset} {modality} specialist to ONNX (a minute or more on a few cores)",
                  file=sys.stderr)
            export_onnx(spec, onnx, args.opset)
        rows = []
        for engine in engines(spec, onnx, threads):
            for x, reference in zip(batches, references, strict=True):
                print(f"timing {engine.name} on {engine.device}, batch {len(x)}", file=sys.stderr)
                rows.append(measure(engine, x, reference, args.repeats, args.warmup, flops))

    notes = [f"{config.img_size} px tiles, {sum(p.numel() for p in spec.parameters()):,} parameters, "
             f"{flops / 1e9:.2f} GFLOP a tile (each token runs one of the {KEPT} kept experts: bench.flops)",
             f"tflop_s is the model's useful work; an H200's dense FP16/BF16 peak is {H200_FP16_TFLOPS:g} TFLOP/s",
             "max_abs_diff: the largest difference of a row's probabilities from eager fp32 on the CPU"]
    if not torch.cuda.is_available():
        notes.append("no CUDA device here: the GPU rows are missing (an H200 node's: bench/results/node-h200/)")
    sizes = ", ".join(map(str, args.batch))
    Report("engine_speed", f"Engine speed, {args.preset} {modality} specialist, batch {sizes}",
           {"cpu cores": threads, "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
            "repeats": args.repeats, "warmup": args.warmup, "load average (1 min)": f"{os.getloadavg()[0]:.1f}"},
           rows, ["engine", "device", "batch", "batch_ms", "tiles_per_s", "tflop_s", "max_abs_diff"], [], notes).write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

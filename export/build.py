"""Build specialists into the model repository: prune -> task head -> ONNX -> (TensorRT) -> entry.

    python -m export.build --modality SWIR --task wildfire --checkpoint runs/tiny/checkpoint.pt --repo models/
    python -m export.build --all --repo models/          # every task's default specialists (demo model if no checkpoint)
    python -m export.build --all --repo models/ --jobs 2 # the same, two specialists at a time

Each entry ``<repo>/<task>-<modalities>/<version>/`` holds ``model.onnx`` (dynamic batch axis,
softmax probabilities out, band normalisation in the graph) and ``manifest.json``. MoE blocks
export in sparse form (each token runs only the experts it chose; see ``export_onnx``), and the
manifest records each block's form. ONNX Runtime must agree with PyTorch to 1e-4 on random and
synthetic batches of 1, 7 and 32 tiles, or the build fails; an entry is written to a hidden
staging folder and renamed into place, so a failed build leaves nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import typing
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxscript import opset18 as op
from tqdm import tqdm

from export.prune import PruneResult, prune
from export.tensorrt import (
    EngineProfile,
    GpuInfo,
    HardwareCompatibility,
    Precision,
    TensorRTUnavailable,
    build_engine,
    tensorrt_version,
)
from mapex_serve.bands import BANDS, bands_of, resolve_modality
from mapex_serve.cores import usable_cores
from mapex_serve.errors import MapexError
from mapex_serve.repository import (
    MANIFEST_NAME,
    Artefact,
    BandSpec,
    EngineEntry,
    Manifest,
    TensorSpec,
    sha256_file,
)
from training.checkpoint import load_model
from training.data import SceneConfig, generate_batch, learned_backscatter, learned_reflectance
from training.finetune import SharedBatches, finetune
from training.model import Mapex
from training.moe import MoE
from training.seeds import HELDOUT, derive_seed
from training.specialist import Specialist
from training.tasks import TASKS, Task, get_task

__all__ = [
    "INPUT_NAME",
    "BuildOptions",
    "Form",
    "ParityError",
    "build_specialist",
    "block_forms",
    "demo_checkpoint",
    "export_onnx",
    "main",
    "random_batch",
    "specialist_name",
]

PARITY_BATCHES = (1, 7, 32)
INPUT_NAME, OUTPUT_NAME = "input", "probabilities"

#: How an exported graph computes a MoE block with several experts (one expert is a plain ``mlp``).
Form = typing.Literal["sparse", "dense"]


class ParityError(MapexError, RuntimeError):
    """ONNX Runtime and PyTorch disagree on the exported specialist."""


@dataclass(frozen=True)
class BuildOptions:
    repo: Path
    coverage: float = 0.95
    keep_top: int | None = None
    finetune_steps: int = 200
    #: Tasks (``flood``) or specialists (``landcover-rgb``) whose pruned backbone trains with the head, not the
    #: head alone. The flood mask head on frozen features (8-pixel patches) drew water edges worse than a VV
    #: threshold (IoU 0.29 vs 0.35 on held-out synthetic tiles); trained through, 0.39. The RGB and red-edge
    #: land-cover heads, head only, lost to the majority class on real BigEarthNet tiles (122 and 127 of 144
    #: right vs 128); trained through, 129-137 and 127-131 over three seeds and 100-400 steps (and 0.60 -> 0.86,
    #: 0.67 -> 0.88 on held-out synthetic tiles); the SWIR wildfire head called 9-10 of 144 unburned real tiles
    #: burned, trained through 3. NIR and SAR land cover did worse on the real tiles trained through (NIR
    #: 124-129 vs 138, SAR 33-37 of 64 vs 47), SWIR no better: head only (figures: tests/training/realdata.py).
    full_finetune: tuple[str, ...] = ("flood", "landcover-rgb", "landcover-red_edge", "wildfire-swir")
    seed: int = 0
    opset: int = 18
    #: Engine form of MoE blocks that kept several experts (``export_onnx``).
    form: Form = "sparse"
    tolerance: float = 1e-4
    trt: bool | None = None  # None: build engines when a GPU and TensorRT are both present
    trt_precision: Precision = "fp16"
    trt_hardware_compatibility: HardwareCompatibility = "none"  # or an engine that also runs on other GPUs
    version: int | None = None
    #: The pixel size on the ground the model learned (m), for the manifest; None: not known.
    pixel_size_m: float | None = None
    #: The Sentinel-2 reflectance it learned (``surface`` or ``top-of-atmosphere``), for optical specialists' manifests.
    reflectance: str | None = None
    #: The Sentinel-1 backscatter it learned (``sigma0`` or ``gamma0``), for radar specialists' manifests.
    backscatter: str | None = None


def specialist_name(task: str, modalities: Sequence[str]) -> str:
    return f"{task}-{'+'.join(m.lower() for m in modalities)}"


def _dense(spec: Specialist, on: bool) -> None:
    for module in spec.modules():
        if isinstance(module, MoE):
            module.dense = on


def block_forms(spec: Specialist, form: Form = "sparse") -> dict[int, str]:
    """Each MoE block's engine form when exported as ``form``: ``mlp`` where pruning left one expert."""
    blocks = spec.backbone.blocks
    return {i: form if isinstance(blocks[i].ffn, MoE) else "mlp" for i in spec.backbone.cfg.moe_blocks}


def _gelu(self, approximate: str = "none"):  # noqa: ANN001, ANN202 - an ONNX Script function, traced by the exporter
    """``aten.gelu`` in the order of operations ONNX Runtime fuses into one Gelu kernel.

    The exporter's own translation computes x * ((erf(x / sqrt 2) + 1) * 0.5), which ONNX Runtime
    1.32 leaves as five elementwise kernels. x * (erf(x / sqrt 2) + 1) * 0.5 is the same number (a
    product by 0.5 is exact), in plain opset-18 operators that TensorRT parses too. It made the tiny
    specialist 24% faster in ONNX Runtime at batch 32 (18.9 -> 14.5 ms on 2 threads).
    """
    if approximate == "tanh":  # as PyTorch computes it: x * 0.5 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))
        cube = op.Mul(op.Mul(op.Mul(self, self), self), 0.044715)
        inner = op.Mul(op.Add(self, cube), math.sqrt(2.0 / math.pi))
        return op.Mul(op.Mul(self, 0.5), op.Add(op.Tanh(inner), 1.0))
    return op.Mul(op.Mul(self, op.Add(op.Erf(op.Div(self, math.sqrt(2.0))), 1.0)), 0.5)


#: Translations that replace the exporter's own for these operators (``torch.onnx.export``'s custom_translation_table).
TRANSLATIONS = {torch.ops.aten.gelu.default: _gelu}


def export_onnx(spec: Specialist, path: Path, opset: int, form: Form = "sparse") -> None:
    """Export with a symbolic batch axis (traced at batch 2: a batch of 1 would be baked in).

    ``sparse`` (the default) exports the dispatch PyTorch runs: per expert, the tokens that chose
    it are gathered (NonZero, Gather), run and scattered back (ScatterND), so each token costs
    one expert. ``dense`` runs every kept expert on every token and masks by the gates: no
    data-dependent shapes, but E times the feed-forward work (ONNX Runtime at batch 16 was no
    faster than eager PyTorch for a 2-expert specialist, and 4.3x slower for the 12-expert model).
    A fold of a block to one plain MLP is left to pruning, which does it where one expert takes
    the calibration tokens: where a block keeps several, its tokens split between them (about
    evenly in the demo model, docs/export.md), so a fold would change outputs; and where routing
    happens to be fixed, the sparse graph still runs one expert per token (plus a gather and a
    scatter).
    """
    if form not in typing.get_args(Form):
        raise ValueError(f"unknown export form {form!r}; expected one of {typing.get_args(Form)}")
    cfg = spec.backbone.cfg
    example = random_batch(spec, 2, seed=0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    _dense(spec, form == "dense")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each pass on stdout
            torch.onnx.export(
                spec.eval(), (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), verbose=False,
                custom_translation_table=TRANSLATIONS,
            )
    finally:
        _dense(spec, False)
    if not path.is_file():
        raise RuntimeError(f"ONNX export of {cfg.modalities} wrote nothing to {path}")


def random_batch(spec: Specialist, n: int, seed: int) -> torch.Tensor:
    """Random tiles in physical units: each band drawn around its training mean and spread."""
    model = spec.backbone
    g = torch.Generator().manual_seed(seed)
    size = model.cfg.img_size
    noise = torch.randn(n, len(model.band_names), size, size, generator=g)
    return model.band_mean[None, :, None, None] + model.band_std[None, :, None, None] * noise


def _synthetic_batch(spec: Specialist, n: int, seed: int) -> torch.Tensor:
    modalities = spec.backbone.cfg.modalities
    inputs = generate_batch(derive_seed(seed, HELDOUT, n), n, SceneConfig(size=spec.backbone.cfg.img_size), modalities).inputs
    return torch.cat([inputs[m] for m in modalities], dim=1)


def check_parity(spec: Specialist, onnx_path: Path, tolerance: float, seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| over random and synthetic batches of 1, 7 and 32 tiles."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in PARITY_BATCHES:
        for kind, x in (("random", random_batch(spec, n, seed + n)), ("synthetic", _synthetic_batch(spec, n, seed))):
            with torch.no_grad():
                expected = spec(x).numpy()
            actual = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            if actual.shape != expected.shape:
                raise ParityError(f"ONNX output shape {actual.shape} != PyTorch {expected.shape} ({kind}, batch {n})")
            diff = float(np.abs(actual - expected).max())
            worst = max(worst, diff)
            if not diff <= tolerance:
                raise ParityError(f"ONNX Runtime differs from PyTorch by {diff:.2e} > {tolerance:.0e} ({kind} batch of {n})")
    return worst


def _band_specs(model: Mapex) -> list[BandSpec]:
    stats = model.band_stats()
    return [
        BandSpec(name=b, unit=BANDS[b].unit, scale=BANDS[b].scale, offset=BANDS[b].offset, mean=stats[b][0], std=stats[b][1])
        for b in model.band_names
    ]


def _next_version(folder: Path) -> int:
    versions = [int(p.name) for p in folder.glob("*") if p.name.isdigit()] if folder.is_dir() else []
    return max(versions, default=0) + 1


class _TensorRTNotice:
    """Says once per run that engines are skipped, then stays quiet.

    A build worker (``--jobs``) only keeps the reason; the parent says it, so a run says it once.
    """

    said = False
    in_worker = False
    why: str | None = None

    @classmethod
    def skip(cls, why: str) -> None:
        cls.why = cls.why or why
        if not cls.said and not cls.in_worker:
            tqdm.write(f"TensorRT engines skipped: {why}", file=sys.stderr)
            cls.said = True


def _engines(onnx_path: Path, staging: Path, spec: Specialist, options: BuildOptions) -> list[EngineEntry]:
    if options.trt is False:
        return []
    gpu, version = GpuInfo.detect(), tensorrt_version()
    if options.trt is None and gpu is None:
        return []
    if gpu is None or version is None:
        _TensorRTNotice.skip("no NVIDIA GPU here" if gpu is None else "tensorrt is not installed (pip install '.[gpu]')")
        return []
    size = spec.backbone.cfg.img_size
    cache = options.repo / ".tensorrt-timing.cache"
    try:
        entry = build_engine(onnx_path, staging / "engines", input_name=INPUT_NAME,
                             input_shape=(len(spec.backbone.band_names), size, size), gpu=gpu,
                             profile=EngineProfile(), precision=options.trt_precision,
                             hardware_compatibility=options.trt_hardware_compatibility, timing_cache=cache)
    except TensorRTUnavailable as e:
        _TensorRTNotice.skip(str(e))
        return []
    return [entry]


#: A process's fine-tuning scenes, drawn once for all the specialists of a task it builds (tiny preset: 2.4 MB a
#: step of 32 tiles, about 480 MB for the default 200 steps).
_BATCHES = SharedBatches(max_bytes=512 * 2**20)


def build_specialist(
    model: Mapex, checkpoint_sha256: str, task: Task, modalities: Sequence[str], options: BuildOptions,
    progress: tqdm | None = None,
) -> Path:
    """Prune, fine-tune the head (with the backbone for ``full_finetune``), export, check and write one entry."""
    modalities = list(task.check_modalities(modalities))  # canonical order: the manifest's band order
    name = specialist_name(task.name, modalities)

    def stage(what: str) -> None:
        if progress is not None:
            progress.set_postfix_str(f"{name}: {what}")

    stage("pruning")
    pruned: PruneResult = prune(model, modalities, coverage=options.coverage, keep_top=options.keep_top, seed=options.seed)
    stage("fine-tuning head")
    full = task.name in options.full_finetune or name in options.full_finetune
    spec, _metrics = finetune(pruned.model, task, modalities, steps=options.finetune_steps, batch_size=32,
                              seed=options.seed, full=full, progress=False, kept=pruned.kept,
                              source_config=model.cfg, parameters=pruned.parameters,
                              data=_BATCHES.of(task, model.cfg.img_size, options.seed))
    spec.eval()

    folder = options.repo / name
    folder.mkdir(parents=True, exist_ok=True)
    version = options.version or _next_version(folder)
    final = folder / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists; pass another --version or remove it")
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=folder))
    staging.chmod(0o755)  # mkdtemp makes it private; the entry must be readable by the service
    try:
        onnx_path = staging / "model.onnx"
        stage("exporting ONNX")
        export_onnx(spec, onnx_path, options.opset, options.form)
        stage("checking ONNX Runtime parity")
        check_parity(spec, onnx_path, options.tolerance, options.seed)
        stage("TensorRT")
        engines = _engines(onnx_path, staging, spec, options)
        size = model.cfg.img_size
        channels = len(bands_of(modalities))
        forms = block_forms(spec, options.form)
        sensors = {BANDS[b].sensor for b in bands_of(modalities)}
        kept = [k.model_copy(update={"form": forms[k.block]}) for k in pruned.kept]
        out_shape = [-1, len(task.classes)] if task.head == "class" else [-1, len(task.classes), size, size]
        artefacts = {
            str(p.relative_to(staging)): Artefact(sha256=sha256_file(p), bytes=p.stat().st_size)
            for p in sorted(staging.rglob("*")) if p.is_file()
        }
        manifest = Manifest(
            name=name, version=version, task=task.name, head=task.head, classes=list(task.classes),
            modalities=modalities, bands=_band_specs(spec.backbone), tile_size=size,
            input=TensorSpec(name=INPUT_NAME, shape=[-1, channels, size, size]),
            output=TensorSpec(name=OUTPUT_NAME, shape=out_shape),
            experts_kept=kept, parameters=pruned.parameters, opset=options.opset, artefacts=artefacts,
            engines=engines, source_checkpoint_sha256=checkpoint_sha256, created=datetime.now(UTC),
            pixel_size_m=options.pixel_size_m,
            reflectance=options.reflectance if "S2" in sensors else None,
            backscatter=options.backscatter if "S1" in sensors else None,
        )
        (staging / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def demo_checkpoint() -> Path:
    """The cached ``tiny`` demo checkpoint (pre-trained here, 300 steps, on first use).

    The cache is keyed by the synthetic generator's version: a model pre-trained on older scenes
    is not reused after the generator changes.
    """
    from training.data.synthetic import GENERATOR_VERSION
    from training.pretrain import PretrainArgs, train

    root = Path(os.environ.get("MAPEX_CACHE", Path.home() / ".cache" / "mapex-serve"))
    cache = root / f"demo-tiny-300-synthetic-v{GENERATOR_VERSION}"
    path = cache / "checkpoint.pt"
    # A run that was stopped leaves a checkpoint of its last step but no finished run.json: resume it.
    run = cache / "run.json"
    finished = run.is_file() and not json.loads(run.read_text()).get("interrupted", True)
    if not (path.is_file() and finished):
        tqdm.write(f"no --checkpoint: pre-training the tiny demo model into {cache} (a few minutes)", file=sys.stderr)
        summary = train(PretrainArgs(out=cache, preset="tiny", steps=300, seed=0, resume=path.is_file()))
        if summary.get("interrupted"):
            raise SystemExit("demo pre-training was interrupted; run the build again to resume it")
    return path


def _requests(args: argparse.Namespace) -> Iterator[tuple[Task, tuple[str, ...]]]:
    if args.all:
        for task in TASKS.values():
            for modalities in task.default_modalities:
                yield task, modalities
        return
    task = get_task(args.task)
    yield task, tuple(resolve_modality(m) for m in args.modality)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", action="append", default=[], help="task modality (repeat for several): "
                   "RGB, RED_EDGE, NIR, SWIR, SAR, ELE")
    p.add_argument("--task", default="landcover", help=f"one of {', '.join(TASKS)} (default landcover)")
    p.add_argument("--all", action="store_true", help="build every task's default specialists")
    p.add_argument("--checkpoint", type=Path, help="pre-trained checkpoint (default: the cached tiny demo model)")
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository folder (default models/)")
    p.add_argument("--coverage", type=float, default=BuildOptions.coverage, help="keep the fewest experts covering this share of tokens")
    p.add_argument("--keep-top", type=int, help="keep exactly the N most used experts per MoE block instead")
    p.add_argument("--finetune-steps", type=int, default=BuildOptions.finetune_steps, help="head training steps on synthetic tiles")
    p.add_argument("--full-finetune", default=",".join(BuildOptions.full_finetune), metavar="NAMES",
                   help="comma-separated tasks or specialists whose backbone trains with the head (default "
                        "%(default)s; '' for none)")
    p.add_argument("--seed", type=int, default=BuildOptions.seed)
    p.add_argument("--version", type=int, help="entry version (default: next free)")
    p.add_argument("--opset", type=int, default=BuildOptions.opset)
    p.add_argument("--reflectance", choices=("surface", "top-of-atmosphere"),
                   help="the Sentinel-2 reflectance the model learned, which the service checks files against "
                        "(default: the checkpoint's pre-training data's: surface for synthetic scenes, ben-ge and HLS, "
                        "top-of-atmosphere for EuroSAT and Sen1Floods11)")
    p.add_argument("--backscatter", choices=("sigma0", "gamma0"),
                   help="the Sentinel-1 backscatter the model learned, which the service checks files against "
                        "(default: the checkpoint's pre-training data's: sigma0 for synthetic scenes, ben-ge and "
                        "Sen1Floods11)")
    p.add_argument("--pixel-size", type=float, metavar="METRES",
                   help="the size on the ground of the pixels the model learned from, which the service checks "
                        "scenes against (default: what the checkpoint records of its pre-training data, e.g. 37.5 "
                        "for the tiny preset on ben-ge's 10 m chips resized to 32 px; none for synthetic scenes)")
    p.add_argument("--form", choices=typing.get_args(Form), default=BuildOptions.form,
                   help="how MoE blocks with several experts are exported (default %(default)s: each token "
                        "runs only its chosen experts; dense: every expert on every token, masked)")
    trt = p.add_mutually_exclusive_group()
    trt.add_argument("--trt", dest="trt", action="store_true", default=None, help="build TensorRT engines (precision: --trt-precision)")
    trt.add_argument("--no-trt", dest="trt", action="store_false", help="never build TensorRT engines")
    p.add_argument("--trt-precision", choices=typing.get_args(Precision), default=BuildOptions.trt_precision)
    p.add_argument("--trt-hardware-compatibility", choices=typing.get_args(HardwareCompatibility),
                   default=BuildOptions.trt_hardware_compatibility,
                   help="engines that also run on other GPUs: ampere_plus (any compute capability >= 8.0) or "
                        "same_compute_capability; a little slower than an engine for one GPU type")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="build N specialists at a time, each in its own process with its share of the cores "
                        "(default 1; each holds a copy of the model while it fine-tunes). PyTorch's thread count "
                        "changes its sums in the last bits, so weights can differ slightly from a --jobs 1 build")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, not {args.jobs}")
    if not args.all and not args.modality:
        p.error("give --modality (one or more) or --all")
    if args.pixel_size is not None and not (math.isfinite(args.pixel_size) and args.pixel_size > 0):
        p.error(f"--pixel-size must be a positive number of metres, not {args.pixel_size:g}")
    full = tuple(t for t in args.full_finetune.split(",") if t)
    if unknown := [t for t in full if t not in TASKS and not any(t.startswith(f"{task}-") for task in TASKS)]:
        p.error(f"--full-finetune: {', '.join(unknown)} is neither a task nor a specialist of one; tasks: "
                f"{', '.join(TASKS)}; specialists are named task-modality, e.g. landcover-rgb")
    try:
        requests = list(_requests(args))
        for task, modalities in requests:
            task.check_modalities(modalities)
    except ValueError as e:  # unknown task or modality
        p.error(str(e))

    checkpoint = args.checkpoint or demo_checkpoint()
    model, payload = load_model(checkpoint)
    if missing := {m for _, mods in requests for m in mods} - set(model.cfg.modalities):
        p.error(f"the checkpoint has no {sorted(missing)} modality; it has {list(model.cfg.modalities)}")
    options = BuildOptions(repo=args.repo, coverage=args.coverage, keep_top=args.keep_top,
                           finetune_steps=args.finetune_steps, full_finetune=full, seed=args.seed, opset=args.opset,
                           form=args.form, trt=args.trt,
                           trt_precision=args.trt_precision, trt_hardware_compatibility=args.trt_hardware_compatibility,
                           version=args.version,
                           pixel_size_m=payload.get("pixel_size_m") if args.pixel_size is None else args.pixel_size,
                           reflectance=args.reflectance or learned_reflectance(payload.get("data")),
                           backscatter=args.backscatter or learned_backscatter(payload.get("data")))
    digest = sha256_file(checkpoint)
    if args.jobs > 1 and len(requests) > 1:
        entries = _build_in_workers(checkpoint, digest, requests, options, args.jobs)
    else:
        with tqdm(requests, desc="building specialists", unit="specialist", dynamic_ncols=True) as bar:
            entries = [build_specialist(model, digest, task, modalities, options, bar) for task, modalities in bar]
    print("\n".join(_summary(entry) for entry in entries))
    return 0


def _summary(entry: Path) -> str:
    manifest = json.loads((entry / MANIFEST_NAME).read_text())
    params = manifest["parameters"]
    pixels = f", pixels {manifest['pixel_size_m']:g} m" if manifest.get("pixel_size_m") else ""
    return (f"{entry}  params {params['pruned']:,} / {params['full']:,} ({params['pruned'] / params['full']:.2f}x), "
            f"experts {[k['experts'] for k in manifest['experts_kept']]}{pixels}")


_worker_model: Mapex | None = None


def _start_worker(checkpoint: Path, threads: int) -> None:
    global _worker_model
    torch.set_num_threads(threads)
    _TensorRTNotice.in_worker = True
    _worker_model, _ = load_model(checkpoint)


def _build_here(digest: str, task_name: str, modalities: tuple[str, ...], options: BuildOptions) -> tuple[Path, str | None]:
    assert _worker_model is not None, "_start_worker runs first"
    entry = build_specialist(_worker_model, digest, get_task(task_name), modalities, options)
    return entry, _TensorRTNotice.why


def _build_in_workers(
    checkpoint: Path, digest: str, requests: list[tuple[Task, tuple[str, ...]]], options: BuildOptions, jobs: int,
) -> list[Path]:
    """Build specialists ``jobs`` at a time in spawned processes; entries come back in request order.

    Each specialist is fine-tuned, exported and checked on its own, into its own folder, so the builds share
    nothing but the cores (split evenly between the processes' PyTorch threads). A build is handed over only
    when a process is free, so the first failure is raised once the builds still running have finished their
    own entries, and no other starts.
    """
    jobs = min(jobs, len(requests))
    threads = max(1, usable_cores() // jobs)
    context = multiprocessing.get_context("spawn")  # a forked PyTorch thread pool can hang the child
    queue = iter(enumerate(requests))
    entries: dict[int, Path] = {}
    with (tqdm(total=len(requests), desc=f"building specialists ({jobs} at a time)", unit="specialist",
               dynamic_ncols=True) as bar,
          ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                              initargs=(checkpoint, threads)) as pool):
        running: dict[Future, int] = {}

        def hand_over_next() -> None:
            for i, (task, modalities) in itertools.islice(queue, 1):
                running[pool.submit(_build_here, digest, task.name, modalities, options)] = i

        for _ in range(jobs):
            hand_over_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                entries[i], notice = future.result()
                if notice:
                    _TensorRTNotice.skip(notice)
                bar.set_postfix_str(f"{entries[i].parent.name} built")
                bar.update()
                hand_over_next()
    return [entries[i] for i in range(len(requests))]


if __name__ == "__main__":
    sys.exit(main())

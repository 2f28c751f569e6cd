"""Shared fixtures: one real pre-training run and one built model repository that several test modules read.

The suite runs in pytest-xdist workers (``-n auto``: one a core, at most 4; ``--dist loadfile`` keeps a module's
tests and its servers on one worker): on 2 cores a worker's tests that wait on servers, uploads and retries leave
the other core to the other worker. With one OpenMP thread a worker (below), the suite took 512 s here against 850 s
in one process. The two expensive folders are built once per run by whichever worker asks first; the others wait on
its lock and read the same folder. ``-n 0`` runs the suite in one process.
"""

import contextlib
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def _cores() -> int:
    """The cores this process may use: its CPU affinity, bounded by a cgroup v2 CPU quota (a container's limit)."""
    cores = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    return max(1, cores)


# Each worker's share of the cores for torch, ONNX Runtime and the processes the tests start (they inherit it):
# more threads than cores spin in OpenMP's wait loops: two workers at two threads each cost the suite a third more CPU
# (1,245-1,327 CPU-s against 921-1,007) and as much more time.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores() // workers)))


def pytest_xdist_auto_num_workers(config) -> int:
    """One worker a core, at most 4: the servers and builds of more workers would only compete for memory."""
    return min(_cores(), 4)


def _built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``build`` fills, made once for the whole run, shared by every xdist worker."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder, done = base / name, base / f"{name}.done"
    with FileLock(f"{folder}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The issue's reference run: tiny preset, modality router, 300 steps, seed 0. A worker draws its scenes ahead
    while the training runs on one thread, so that the two share the 2 cores: 33 s, against 43 s drawn between
    steps on two threads (the sums' last bits differ from the demo's run)."""
    def pretrain(out: Path) -> None:
        cmd = [sys.executable, "-m", "training.pretrain", "--out", str(out), "--steps", "300", "--seed", "0",
               "--workers", "1"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]

    return _built_once(tmp_path_factory, "tiny-300", pretrain)


@pytest.fixture(scope="session")
def built_repo(tiny_run, tmp_path_factory) -> Path:
    """Every task's default specialists of the tiny run, built once through the CLI (TensorRT asked for, absent here).

    Two at a time (``--jobs 2``): 126 s instead of 246 s on 2 cores, most of the suite's setup. Heads train 70 steps
    (the demo's 200): most of a build's time is their synthetic tiles, and from 70 steps the real-patch figures
    (tests/training/test_real_patches.py) meet the same goals as at 100.
    """
    def build(root: Path) -> None:
        cmd = [sys.executable, "-m", "export.build", "--all", "--checkpoint", str(tiny_run / "checkpoint.pt"),
               "--repo", str(root), "--finetune-steps", "70", "--trt", "--jobs", "2"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stderr.count("TensorRT engines skipped") == 1, "the missing TensorRT is reported once"

    return _built_once(tmp_path_factory, "models", build)

"""Shared fixtures: one real pre-training run that several test modules read."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The issue's reference run: tiny preset, modality router, 300 steps, seed 0. A worker draws its scenes ahead
    while the training runs on one thread, so that the two share the 2 cores: 33 s, against 43 s drawn between
    steps on two threads (the sums' last bits differ from the demo's run)."""
    out = tmp_path_factory.mktemp("tiny-300")
    cmd = [sys.executable, "-m", "training.pretrain", "--out", str(out), "--steps", "300", "--seed", "0",
           "--workers", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def built_repo(tiny_run, tmp_path_factory) -> Path:
    """Every task's default specialists of the tiny run, built once through the CLI (TensorRT asked for, absent here).

    Two at a time (``--jobs 2``): 126 s instead of 246 s on 2 cores, most of the suite's setup. Heads train 70 steps
    (the demo's 200): most of a build's time is their synthetic tiles, and from 70 steps the real-patch figures
    (tests/training/test_real_patches.py) meet the same goals as at 100.
    """
    root = tmp_path_factory.mktemp("models")
    cmd = [sys.executable, "-m", "export.build", "--all", "--checkpoint", str(tiny_run / "checkpoint.pt"),
           "--repo", str(root), "--finetune-steps", "70", "--trt", "--jobs", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("TensorRT engines skipped") == 1, "the missing TensorRT is reported once"
    return root

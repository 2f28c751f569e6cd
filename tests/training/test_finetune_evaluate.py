"""Fine-tuning and the evaluation tables, on a real (short) pre-training run and synthetic tiles."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import load_model
from training.evaluate import knn_accuracy, landcover_split
from training.finetune import evaluate_specialist, finetune, main
from training.specialist import Specialist


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain-20")
    cmd = [sys.executable, "-m", "training.pretrain", "--out", str(out), "--steps", "20", "--seed", "0"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "checkpoint.pt"


def test_finetuning_a_head_beats_the_majority_class_on_held_out_tiles(checkpoint):
    model, _ = load_model(checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec, summary = finetune(model, "landcover", ["SAR"], steps=60, batch_size=32, seed=0, progress=False)
    scores = evaluate_specialist(spec, "landcover", ["SAR"], tiles=128, seed=0)
    assert summary["train_loss_last10"] < summary["train_loss_first10"]
    assert summary["trainable_parameters"] == sum(p.numel() for p in spec.head.parameters())
    print(f"landcover SAR head after 60 steps: {scores['accuracy']:.3f} (majority {scores['majority_baseline']:.3f})")
    assert scores["accuracy"] > scores["majority_baseline"] + 0.15, scores
    assert np.sum(scores["confusion"]) == 128 and scores["data"].startswith("synthetic")
    # The caller's model is untouched (the specialist owns a copy of it).
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(spec.backbone.parameters(), model.parameters(), strict=True))


def test_cli_prunes_finetunes_and_writes_a_loadable_specialist(checkpoint, tmp_path, capsys):
    out = tmp_path / "flood"
    argv = ["--checkpoint", str(checkpoint), "--task", "flood", "--modality", "s1", "--prune", "--steps", "4",
            "--batch-size", "8", "--eval-tiles", "16", "--out", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert record["task"] == "flood" and record["modalities"] == ["SAR"] and record["pruned"] is True
    assert record["steps"] == 4 and record["full_finetune"] is False and "train_loss_last10" in record
    held = record["heldout"]
    assert 0 <= held["pixel_accuracy"] <= 1 and 0 <= held["mean_iou"] <= 1 and set(held["iou"]) == {"dry", "flooded"}
    assert record["parameters"]["pruned"] < record["parameters"]["full"]
    assert len(record["source_checkpoint"]["sha256"]) == 64
    spec = Specialist.load(out / "specialist.pt")
    assert spec.pruned and spec.modalities == ("SAR",) and spec.task == "flood"
    assert spec.info["finetune"]["steps"] == 4 and spec.info["source_checkpoint"]["router"] == "modality"
    again = evaluate_specialist(spec, "flood", tiles=16, seed=0)
    assert again["pixel_accuracy"] == held["pixel_accuracy"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "floods", "--modality", "SAR"], "invalid choice: 'floods'"),
        (["--task", "flood", "--modality", "ELE"], "give at least one of SAR, RGB, RED_EDGE, NIR, SWIR"),
        (["--task", "wildfire", "--modality", "LIDAR"], "accepted modalities: RGB, RED_EDGE, NIR, SWIR, SAR, ELE"),
        (["--task", "landcover"], "--modality"),
    ],
)
def test_cli_rejects_bad_tasks_and_modalities(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "floods" in args:
        assert all(t in err for t in ("landcover", "flood", "wildfire", "landcover-seg"))


def test_knn_accuracy_on_separable_and_on_random_labels():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 10
    train_y, test_y = rng.integers(0, 4, 200), rng.integers(0, 4, 100)
    train_x = centres[train_y] + rng.normal(0, 0.5, (200, 4))
    test_x = centres[test_y] + rng.normal(0, 0.5, (100, 4))
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=5) == 1.0
    accuracies = [
        knn_accuracy(rng.normal(size=(400, 16)), rng.integers(0, 4, 400), rng.normal(size=(400, 16)), rng.integers(0, 4, 400))
        for _ in range(5)
    ]
    assert 0.15 < np.mean(accuracies) < 0.35, accuracies


def test_landcover_split_is_deterministic_shared_across_modalities_and_held_out():
    a = landcover_split("RGB", seed=3, train=40, test=20)
    b = landcover_split("sar", seed=3, train=40, test=20)
    assert set(a.train.inputs) == {"RGB"} and set(b.train.inputs) == {"SAR"}
    assert a.train.inputs["RGB"].shape == (40, 3, 32, 32) and b.test.inputs["SAR"].shape == (20, 2, 32, 32)
    assert np.array_equal(a.train_labels, b.train_labels) and np.array_equal(a.test_labels, b.test_labels)
    smaller = landcover_split("RGB", seed=3, train=10, test=5)
    assert torch.equal(smaller.train.inputs["RGB"], a.train.inputs["RGB"][:10])
    assert not torch.equal(a.train.inputs["RGB"][:20], a.test.inputs["RGB"])
    assert not np.array_equal(landcover_split("RGB", seed=4, train=40, test=20).train_labels, a.train_labels)


def test_evaluate_quick_writes_both_tables(checkpoint, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    (runs / "modality").mkdir(parents=True)
    shutil.copy(checkpoint, runs / "modality" / "checkpoint.pt")  # the other two routers get pre-trained
    cmd = [sys.executable, "-m", "training.evaluate", "--runs", str(runs), "--out", str(out), "--quick",
           "--steps", "3", "--finetune-steps", "3"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (runs / "positional" / "checkpoint.pt").is_file() and (runs / "deterministic" / "checkpoint.pt").is_file()
    markdown = (out / "evaluation.md").read_text()
    data = json.loads((out / "evaluation.json").read_text())
    assert "SYNTHETIC" in markdown.splitlines()[0] and "not on real imagery" in markdown
    assert data["data"] == "synthetic" and "SYNTHETIC" in data["note"]
    modalities = ["RGB", "RED_EDGE", "NIR", "SWIR", "SAR", "ELE"]
    assert list(data["landcover_classification"]) == modalities
    assert list(data["router_ablation_knn"]) == modalities
    for m in modalities:
        row = data["landcover_classification"][m]
        assert set(row["knn"]) == set(row["finetune"]) == {"scratch", "pretrained", "pruned"}
        assert all(0 <= v <= 100 for v in [*row["knn"].values(), *row["finetune"].values()])
        assert row["parameters"]["pruned"] < row["parameters"]["full"]
        assert set(data["router_ablation_knn"][m]) == {"deterministic", "positional", "modality"}
        assert data["router_ablation_knn"][m]["modality"] == row["knn"]["pretrained"]
        assert f"| {m} |" in markdown
    assert "| modality | deterministic | positional | modality |" in markdown
    assert data["settings"]["pretrained_steps"] == {"deterministic": 3, "positional": 3, "modality": 20}

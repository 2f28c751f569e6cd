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
from training.evaluate import main as evaluate_main
from training.finetune import SharedBatches, evaluate_specialist, finetune, main, synthetic_batches
from training.specialist import Specialist
from training.tasks import get_task


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
    # 0.1 over the majority class: the head learned more than the mix. It was 0.15 until generator
    # v4, whose EEA land-cover shares make grassland (which single-date SAR barely tells from
    # cropland) 1.7x as common; on this seed v3 scored 0.680, v4 0.594, v5 0.641, majority 0.453 all.
    assert scores["accuracy"] > scores["majority_baseline"] + 0.1, scores
    assert np.sum(scores["confusion"]) == 128 and scores["data"].startswith("synthetic")
    # The caller's model is untouched (the specialist owns a copy of it).
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(spec.backbone.parameters(), model.parameters(), strict=True))


def test_shared_batches_are_the_specialists_own_drawn_once_and_kept_within_their_bound():
    """A build's specialists of one task train on the scenes each would draw, drawn once while they fit."""
    task = get_task("landcover")
    own = synthetic_batches(task, 32, 0, ["SAR"])(3, 4)
    shared = SharedBatches(max_bytes=2**30)
    batch = shared.of(task, 32, 0)(3, 4)
    assert torch.equal(batch.inputs["SAR"], own.inputs["SAR"]) and torch.equal(batch.landcover, own.landcover)
    assert set(batch.inputs) > {"SAR", "RGB"}, "every modality, for the task's next specialist"
    assert shared.of(task, 32, 0)(3, 4) is batch and shared.of(task, 32, 1)(3, 4) is not batch
    one = shared.kept_bytes // 2
    small = SharedBatches(max_bytes=2 * one)
    first = small.of(task, 32, 0)(1, 4)
    for step in (2, 3):
        small.of(task, 32, 0)(step, 4)
    assert small.kept_bytes <= 2 * one and small.of(task, 32, 0)(1, 4) is not first, "the oldest went first"


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


COLUMNS = {"majority", "knn_scratch", "knn_full", "knn_specialist", "linear_probe", "ft_scratch", "ft_specialist"}


def check_table(data, markdown, rows, routers_rows):
    """Every row has every column (mean, std and one figure per seed), parameters full vs specialist, a header."""
    assert list(data["rows"]) == rows
    seeds = data["settings"]["seeds"]
    for key, row in data["rows"].items():
        assert COLUMNS <= set(row), key
        for c in COLUMNS:
            assert len(row[c]["runs"]) == len(seeds) and all(0 <= v <= 100 for v in row[c]["runs"])
            assert row[c]["mean"] == pytest.approx(np.mean(row[c]["runs"]), abs=0.01)
        assert row["parameters"]["specialist"] < row["parameters"]["full"]
        assert f"| {row['task']} | {row['modality']} | {row['metric']} |" in markdown
    assert list(data["router_ablation_knn"]) == routers_rows
    for key in routers_rows:
        assert data["router_ablation_knn"][key]["modality"]["runs"] == data["rows"][key]["knn_full"]["runs"]
    header = markdown.split("## (1)")[0]
    for needle in (f"data set: **{data['data']}**", f"preset: **{data['settings']['preset']}**", "seeds: ",
                   "pre-training steps per checkpoint", "fine-tuning: ", "commit: "):
        assert needle in header, needle
    assert "| task | modality | metric | majority | k-NN scratch | k-NN full | k-NN specialist | linear probe " \
           "specialist | FT scratch | FT specialist | parameters full / specialist |" in markdown


@pytest.mark.slow
def test_evaluate_synthetic_quick_writes_every_table(checkpoint, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    (runs / "modality").mkdir(parents=True)
    shutil.copy(checkpoint, runs / "modality" / "checkpoint.pt")  # the other routers and priors get pre-trained
    argv = ["--dataset", "synthetic", "--runs", str(runs), "--out", str(out), "--quick", "--steps", "2",
            "--finetune-steps", "2", "--seeds", "0"]
    assert evaluate_main(argv) == 0
    markdown = (out / "evaluation.md").read_text()
    data = json.loads((out / "evaluation.json").read_text())
    assert "SYNTHETIC" in markdown.splitlines()[0] and "not on real imagery" in markdown
    assert data["data"] == "synthetic" and "SYNTHETIC" in data["note"]
    landcover = [f"landcover/{m}" for m in ["RGB", "RED_EDGE", "NIR", "SWIR", "SAR", "ELE"]]
    check_table(data, markdown, [*landcover, "flood/SAR", "wildfire/SWIR", "landcover-seg/RGB"], landcover)
    assert data["settings"]["pretrained_steps"] == {"deterministic": 2, "positional": 2, "modality": 20,
                                                    "prior-0": 2, "prior-1": 2}
    prior = data["router_prior_ablation"]
    assert list(prior) == ["0", "1", "2"]
    assert prior["0"]["own_group_share"] < 0.5 < prior["2"]["own_group_share"]  # no prior, no pull to the own pair
    assert all(0 < prior[p]["specialisation_min"] <= prior[p]["specialisation_mean"] <= 1 for p in prior)
    assert "| router_prior | specialisation mean |" in markdown


def test_synthetic_seeds_draw_different_tiles_and_real_splits_stay_fixed(eurosat_root):
    from training.benchmarks import benchmark

    synthetic, eurosat = benchmark("synthetic", train_tiles=8, test_tiles=4), benchmark("eurosat", eurosat_root)
    task = synthetic.rows[0].task
    a, b = synthetic.tiles(0, 32, task)[0], synthetic.tiles(1, 32, task)[0]
    assert not torch.equal(a.inputs["RGB"], b.inputs["RGB"])
    train0, test0, how = eurosat.tiles(0, 32, eurosat.rows[0].task)
    train1, test1, _ = eurosat.tiles(1, 32, eurosat.rows[0].task)
    assert test0.names == test1.names and not set(train0.names) & set(test0.names)
    assert len(train0) == 16 and len(test0) == 4 and "seeded 80% / 20% split" in how


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> Path:
    """Three 2-step tiny checkpoints (one per router) that the real-data tables load instead of pre-training."""
    from training.evaluate import ROUTERS
    from training.pretrain import PretrainArgs, train

    runs = tmp_path_factory.mktemp("tiny-runs")
    for r in ROUTERS:
        train(PretrainArgs(out=runs / r, steps=2, router=r, batch_size=4, stats_samples=16))
    return runs


@pytest.mark.parametrize(
    ("dataset", "root", "rows", "ablated"),
    [
        ("ben-ge-8k", "benge_root", [f"landcover/{m}" for m in ["RGB", "RED_EDGE", "NIR", "SWIR", "SAR", "ELE"]]
         + ["landcover-seg/RGB"], 6),
        ("hls-burn-scars", "hls_root", ["wildfire/SWIR"], 1),
        ("eurosat", "eurosat_root", [f"landcover/{m}" for m in ["RGB", "RED_EDGE", "NIR", "SWIR"]], 4),
    ],
)
def test_evaluate_on_each_real_layout_writes_the_papers_table(dataset, root, rows, ablated, tiny_runs, tmp_path, request):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_runs, runs)
    argv = ["--dataset", dataset, "--root", str(request.getfixturevalue(root)), "--preset", "tiny", "--runs", str(runs),
            "--out", str(tmp_path / "out"), "--finetune-steps", "2", "--seeds", "0"]
    assert evaluate_main(argv) == 0
    data = json.loads((tmp_path / "out" / f"{dataset}.json").read_text())
    markdown = (tmp_path / "out" / f"{dataset}.md").read_text()
    check_table(data, markdown, rows, rows[:ablated])
    assert "router_prior_ablation" not in data and data["note"].startswith("Real data")
    first = data["rows"][rows[0]]
    assert "split" in first["tiles"] or "official" in first["tiles"]
    if dataset == "ben-ge-8k":
        assert len(first["classes"]) == 11 and data["rows"]["landcover-seg/RGB"]["metric"] == "mIoU"


@pytest.mark.slow
def test_evaluate_pretrains_on_the_real_data_set_when_no_checkpoint_exists(sen1floods11_root, tmp_path):
    """The whole command on a fresh folder: pre-train (three routers) on Sen1Floods11's train split, prune, tune, score."""
    runs = tmp_path / "runs"
    argv = ["--dataset", "sen1floods11", "--root", str(sen1floods11_root), "--preset", "tiny", "--runs", str(runs),
            "--steps", "2", "--pretrain-batch", "4", "--finetune-steps", "2", "--seeds", "0", "1"]  # fixed split, 2 seeds
    assert evaluate_main(argv) == 0
    data = json.loads((runs / "sen1floods11.json").read_text())
    check_table(data, (runs / "sen1floods11.md").read_text(), ["flood/SAR"], ["flood/SAR"])
    assert set(data["settings"]["pretrained_on"].values()) == {"sen1floods11"}
    assert data["settings"]["pretrained_steps"] == {"deterministic": 2, "positional": 2, "modality": 2}
    assert data["rows"]["flood/SAR"]["metric"] == "mIoU" and "official" in data["rows"]["flood/SAR"]["tiles"]


def test_evaluate_reports_a_wrong_layout_without_a_traceback(tmp_path, capsys):
    assert evaluate_main(["--dataset", "eurosat", "--root", str(tmp_path), "--runs", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "expected the 10 class folders" in err and str(tmp_path) in err and "Traceback" not in err

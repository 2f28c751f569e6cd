"""Real BigEarthNet patches for the realism and real-data checks (a test helper, not a data-set loader).

The patches stay in the team's shared folder (``../shared/data/real/bigearthnet``); tests skip
where it is absent. Run as a script to print the real-data figures of a model repository and to
draw the real-vs-synthetic histograms:

    .venv/bin/python tests/training/realdata.py --repo models --plot docs/img/realism.png
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[2]
BIGEARTHNET = ROOT.parent / "shared" / "data" / "real" / "bigearthnet"
S2_FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
PATCH = 120  # pixels at 10 m
TILE_OFFSETS = (0, 29, 58, 88)  # 4 x 4 tiles of 32 px covering a 120 px patch (overlapping)

#: CORINE level-3 labels of BigEarthNet (v1, 43 classes) -> the synthetic land-cover classes.
#: Agricultural mosaics count as cropland, "transitional woodland/shrub" as trees, pastures and
#: natural grass, moors and sclerophyllous scrub as grassland; every water class is water.
CORINE_TO_CLASS = {
    **dict.fromkeys([
        "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
        "Road and rail networks and associated land", "Port areas", "Airports"], "built-up"),
    **dict.fromkeys(["Mineral extraction sites", "Dump sites", "Construction sites", "Beaches, dunes, sands",
                     "Bare rock", "Sparsely vegetated areas", "Burnt areas", "Glaciers and perpetual snow"], "bare"),
    **dict.fromkeys(["Green urban areas", "Sport and leisure facilities", "Pastures", "Natural grassland",
                     "Moors and heathland", "Sclerophyllous vegetation"], "grassland"),
    **dict.fromkeys([
        "Non-irrigated arable land", "Permanently irrigated land", "Rice fields", "Vineyards",
        "Fruit trees and berry plantations", "Olive groves", "Annual crops associated with permanent crops",
        "Complex cultivation patterns",
        "Land principally occupied by agriculture, with significant areas of natural vegetation"], "cropland"),
    **dict.fromkeys(["Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
                     "Transitional woodland/shrub"], "trees"),
    **dict.fromkeys(["Inland marshes", "Peatbogs", "Salt marshes", "Salines", "Intertidal flats"], "wetland"),
    **dict.fromkeys(["Water courses", "Water bodies", "Coastal lagoons", "Estuaries", "Sea and ocean"], "water"),
}


@dataclass
class Patch:
    """One real patch: bands in physical units on the 10 m grid, and its CORINE labels."""

    name: str
    bands: dict[str, np.ndarray]  # band -> (120, 120) float32
    labels: list[str]

    @property
    def classes(self) -> set[str]:
        """The synthetic classes its CORINE labels map to (``KeyError`` names an unmapped label)."""
        return {CORINE_TO_CLASS[label] for label in self.labels}


def available() -> bool:
    return (BIGEARTHNET / "S2").is_dir() and (BIGEARTHNET / "S1").is_dir()


def _read(path: Path) -> np.ndarray:
    """One band, nearest-upsampled to the 10 m grid (20 m and 60 m bands are stored coarser)."""
    with rasterio.open(path) as f:
        x = f.read(1).astype(np.float32)
    k = PATCH // x.shape[0]
    if k * x.shape[0] != PATCH:
        raise ValueError(f"{path}: {x.shape} does not divide a {PATCH} px patch")
    return np.repeat(np.repeat(x, k, axis=0), k, axis=1)


def _labels(folder: Path) -> list[str]:
    return _metadata(folder)["labels"]


def s2_patches() -> list[Patch]:
    """Every Sentinel-2 L2A patch, reflectance (stored x 10000 -> 0..1)."""
    return [Patch(d.name, {b: _read(d / f"{d.name}_{b}.tif") / 1e4 for b in S2_FILE_BANDS}, _labels(d))
            for d in sorted((BIGEARTHNET / "S2").iterdir()) if d.is_dir()]


def s1_patches() -> list[Patch]:
    """Every Sentinel-1 GRD patch, sigma0 in dB (VV, VH)."""
    return [Patch(d.name, {b: _read(d / f"{d.name}_{b}.tif") for b in ("VV", "VH")}, _labels(d))
            for d in sorted((BIGEARTHNET / "S1").iterdir()) if d.is_dir()]


def tiles(patch: Patch, bands: list[str]) -> np.ndarray:
    """(16, C, 32, 32) float32 tiles of one patch, bands in the given order."""
    x = np.stack([patch.bands[b] for b in bands])
    return np.stack([x[:, r : r + 32, c : c + 32] for r in TILE_OFFSETS for c in TILE_OFFSETS]).astype(np.float32)


def stitch(probs: np.ndarray) -> np.ndarray:
    """(16, K, 32, 32) tile probabilities -> (K, 120, 120), averaged where tiles overlap."""
    out = np.zeros((probs.shape[1], PATCH, PATCH))
    count = np.zeros((PATCH, PATCH))
    for p, (r, c) in zip(probs, [(r, c) for r in TILE_OFFSETS for c in TILE_OFFSETS], strict=True):
        out[:, r : r + 32, c : c + 32] += p
        count[r : r + 32, c : c + 32] += 1
    return out / count


def ndvi_rule(red: np.ndarray, nir: np.ndarray) -> str:
    """The physical baseline for land cover: one class from the tile's mean NDVI."""
    v = float(np.mean((nir - red) / (nir + red + 1e-6)))
    return "water" if v < 0 else "bare" if v < 0.2 else "grassland" if v < 0.5 else "trees"


class OnnxSpecialist:
    """A repository entry run with ONNX Runtime on CPU, inputs in physical units (the manifest's bands)."""

    def __init__(self, entry: Path):
        import onnxruntime as ort

        self.manifest = json.loads((entry / "manifest.json").read_text())
        self.bands = [b["name"] for b in self.manifest["bands"]]
        self.classes = self.manifest["classes"]
        self.session = ort.InferenceSession(str(entry / "model.onnx"), providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.manifest["input"]["name"]: x})[0]


def entry(repo: Path, name: str) -> Path:
    """The newest version of ``<repo>/<name>``."""
    versions = sorted((p for p in (repo / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise FileNotFoundError(f"no version of {name} in {repo}")
    return versions[-1]


def _metadata(folder: Path) -> dict:
    return json.loads(next(folder.glob("*_labels_metadata.json")).read_text())


def paired_water() -> dict[str, float | None]:
    """Per S1 patch: the share of open water its paired S2 patch shows, or None where that patch is not here.

    BigEarthNet-MM pairs each S1 patch with an S2 patch of the same place (``corresponding_s2_patch``);
    an optical water mask of the pair, NDWI > 0 and MNDWI > 0 (McFeeters 1996; Xu 2006), is the
    only pixel-level water reference these files could give the flood specialist.
    """
    out: dict[str, float | None] = {}
    for d in sorted((BIGEARTHNET / "S1").iterdir()):
        if not d.is_dir():
            continue
        pair = BIGEARTHNET / "S2" / _metadata(d)["corresponding_s2_patch"]
        if not pair.is_dir():
            out[d.name] = None
            continue
        b = {k: _read(pair / f"{pair.name}_{k}.tif") for k in ("B03", "B08", "B11")}
        ndwi = (b["B03"] - b["B08"]) / (b["B03"] + b["B08"] + 1e-6)
        mndwi = (b["B03"] - b["B11"]) / (b["B03"] + b["B11"] + 1e-6)
        out[d.name] = float(((ndwi > 0) & (mndwi > 0)).mean())
    return out


def flood_figures(repo: Path) -> dict[str, float]:
    """Share of pixels called water on the real S1 patches, whose CORINE labels hold no water.

    With no water in the labels the IoU of water is undefined: the figure is the false-alarm
    rate (lower is better) of the flood specialist and of the VV < -15 dB rule, per patch and mean.
    """
    spec = OnnxSpecialist(entry(repo, "flood-sar"))
    out: dict[str, float] = {}
    spec_rates, rule_rates = [], []
    for p in s1_patches():
        if "water" in p.classes:
            raise ValueError(f"{p.name} carries a water label: score it with an IoU, not a false-alarm rate")
        water = stitch(spec(tiles(p, spec.bands)))[spec.classes.index("flooded")] > 0.5
        spec_rates.append(float(water.mean()))
        rule_rates.append(float((p.bands["VV"] < -15).mean()))
    out["patches"] = len(spec_rates)
    out["specialist_false_alarm"] = float(np.mean(spec_rates))
    out["vv_threshold_false_alarm"] = float(np.mean(rule_rates))
    out["specialist_per_patch"] = spec_rates
    out["vv_threshold_per_patch"] = rule_rates
    return out


def landcover_figures(repo: Path, modality: str) -> dict[str, float]:
    """Tile hit rate of one land-cover specialist: the predicted class is among the patch's labels.

    Baselines on the same tiles: the majority class (the class present in most patches,
    predicted everywhere) and, for optical specialists, the NDVI rule of the tile.
    """
    spec = OnnxSpecialist(entry(repo, f"landcover-{modality.lower()}"))
    patches = s1_patches() if modality == "SAR" else s2_patches()
    presence = {c: sum(c in p.classes for p in patches) for c in spec.classes}
    majority = max(presence, key=presence.get)
    hits, base, ndvi, n = 0, 0, 0, 0
    for p in patches:
        x = tiles(p, spec.bands)
        pred = [spec.classes[i] for i in spec(x).argmax(axis=1)]
        hits += sum(c in p.classes for c in pred)
        base += len(pred) * (majority in p.classes)
        if modality != "SAR":
            red, nir = tiles(p, ["B04"])[:, 0], tiles(p, ["B08"])[:, 0]
            ndvi += sum(ndvi_rule(r, q) in p.classes for r, q in zip(red, nir, strict=True))
        n += len(pred)
    out = {"patches": len(patches), "tiles": n, "specialist": hits / n, "majority_class": majority,
           "majority_baseline": base / n}
    if modality != "SAR":
        out["ndvi_rule"] = ndvi / n
    return out


def synthetic_figures(repo: Path, tiles: int = 256, seed: int = 0) -> dict[str, dict]:
    """The same ONNX entries on held-out synthetic tiles (the HELDOUT seeds ``training.finetune`` scores on)."""
    from training.finetune import synthetic_tiles
    from training.seeds import HELDOUT
    from training.tasks import get_task

    out = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        spec = OnnxSpecialist(entry(repo, folder.name))
        task = get_task(spec.manifest["task"])
        data = synthetic_tiles(seed, HELDOUT, tiles, task.scene_config(spec.manifest["tile_size"]),
                               spec.manifest["modalities"])
        x = np.concatenate([data.inputs[m].numpy() for m in spec.manifest["modalities"]], axis=1)
        pred = np.concatenate([spec(x[i : i + 64]).argmax(axis=1) for i in range(0, len(x), 64)])
        truth = task.labels(data).numpy()
        if task.head == "class":
            out[folder.name] = {"accuracy": float((pred == truth).mean()),
                                "majority_baseline": float(np.bincount(truth.ravel()).max() / truth.size)}
        else:
            positive = 1 if task.name == "flood" else None
            record = {"pixel_accuracy": float((pred == truth).mean())}
            if positive is not None:
                p, t = pred == positive, truth == positive
                record |= {"flood_iou": float((p & t).sum() / max(1, (p | t).sum())),
                           "vv_threshold_iou": _vv_iou(data.inputs["SAR"].numpy()[:, 0] < -15, t)}
            out[folder.name] = record
    return out


def _vv_iou(water: np.ndarray, truth: np.ndarray) -> float:
    return float((water & truth).sum() / max(1, (water | truth).sum()))


def wildfire_figures(repo: Path) -> dict[str, float]:
    """Share of real S2 tiles called burned; no patch carries CORINE's "Burnt areas", so each is a false alarm.

    Baseline: the NBR rule, a tile is burned when its mean (B08 - B12) / (B08 + B12) is below 0
    (unburned vegetation sits well above it, fresh burns below: Key & Benson 2006).
    """
    spec = OnnxSpecialist(entry(repo, "wildfire-swir"))
    patches = s2_patches()
    if any("Burnt areas" in p.labels for p in patches):
        raise ValueError("a real patch is labelled burnt: score hits, not false alarms")
    called, rule, n = 0, 0, 0
    for p in patches:
        called += int((spec(tiles(p, spec.bands)).argmax(axis=1) == spec.classes.index("burned")).sum())
        nir, swir = tiles(p, ["B08"])[:, 0], tiles(p, ["B12"])[:, 0]
        rule += int((((nir - swir) / (nir + swir + 1e-6)).mean(axis=(1, 2)) < 0).sum())
        n += len(nir)
    return {"patches": len(patches), "tiles": n, "specialist_false_alarm": called / n, "nbr_rule_false_alarm": rule / n}


def real_figures(repo: Path) -> dict[str, dict]:
    """Every real-data figure of a repository's demo specialists."""
    figures = {"flood-sar": flood_figures(repo), "wildfire-swir": wildfire_figures(repo)}
    for m in ("RGB", "RED_EDGE", "NIR", "SWIR", "SAR"):
        figures[f"landcover-{m.lower()}"] = landcover_figures(repo, m)
    return figures


def plot(path: Path, scenes: int = 600) -> None:
    """Real vs synthetic histograms per band (synthetic: vegetated, water- and cloud-free tiles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(Path(__file__).parent))
    from test_realism import comparable_synthetic, snow_share  # the same selections the test compares

    s2 = [p for p in s2_patches() if snow_share(p) <= 0.1]
    real = {b: np.concatenate([p.bands[b].ravel() for p in s2]) for b in S2_FILE_BANDS}
    real |= {b: np.concatenate([p.bands[b].ravel() for p in s1_patches()]) for b in ("VV", "VH")}
    synth = comparable_synthetic(scenes)
    names = [*S2_FILE_BANDS, "VV", "VH"]
    fig, axes = plt.subplots(2, 7, figsize=(21, 6))
    for ax, b in zip(axes.ravel(), names, strict=True):
        lo, hi = np.percentile(np.concatenate([real[b], synth[b]]), [0.5, 99.5])
        bins = np.linspace(lo, hi, 50)
        ax.hist(real[b], bins=bins, density=True, alpha=0.55, label="real (BigEarthNet)")
        ax.hist(synth[b], bins=bins, density=True, alpha=0.55, label="synthetic")
        ax.set_title(f"{b} ({'dB' if b in ('VV', 'VH') else 'reflectance'})", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Per-band distributions: real BigEarthNet patches ({len(s2)} S2 without snow, 4 S1) "
                 "vs synthetic tiles of vegetated land (>= 90 %, no water or cloud)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, help="model repository whose demo specialists to score on the real patches")
    p.add_argument("--plot", type=Path, help="write the real-vs-synthetic histogram figure here")
    a = p.parse_args(argv)
    if not available():
        raise SystemExit(f"no BigEarthNet patches at {BIGEARTHNET}")
    if a.repo:
        print(json.dumps({"real": real_figures(a.repo), "synthetic_heldout": synthetic_figures(a.repo)}, indent=2))
    if a.plot:
        plot(a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

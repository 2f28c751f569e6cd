"""Small copies of the real data sets, written in each one's documented on-disk layout.

File names, folders, dtypes, band order and label encoding follow the sources cited in the
loaders' docstrings (training/data/*.py); the pixel values are seeded noise around known
per-band levels, so that a test can check that each band arrives under its canonical name and in
physical units. Chips are smaller than the real ones (64 px instead of 512 for Sen1Floods11 and
HLS) to keep the tests fast; ben-ge and EuroSAT keep their real 120 and 64 px. It also makes the
real-patch helper (``realdata.py``, beside the tests) importable under importlib mode.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio import Affine

#: Known level per band (reflectance, dB, metres) that the fixtures write, in stored units below.
LEVEL = {"B01": 0.05, "B02": 0.06, "B03": 0.08, "B04": 0.10, "B05": 0.14, "B06": 0.2, "B07": 0.23, "B08": 0.3,
         "B8A": 0.31, "B09": 0.32, "B10": 0.01, "B11": 0.22, "B12": 0.15, "VV": -11.0, "VH": -18.0, "DEM": 412.0}


sys.path.insert(0, str(Path(__file__).parent))  # realdata.py, the real-patch helper


def write_tif(path: Path, data: np.ndarray, dtype: str, nodata: float | None = None, crs: str = "EPSG:32633") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
                       transform=Affine(10, 0, 500000, 0, -10, 5000000), nodata=nodata) as dst:
        dst.write(data.astype(dtype))


def _levels(rng: np.random.Generator, bands: list[str], size: int, scale: float) -> np.ndarray:
    """(C, size, size) around each band's level, in stored units (physical / scale), +-2% noise."""
    return np.stack([np.full((size, size), LEVEL[b] / scale) * (1 + 0.02 * rng.standard_normal((size, size))) for b in bands])


BENGE_S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
WORLDCOVER_COLUMNS = ["tree_cover", "shrubland", "grassland", "cropland", "built-up", "bare/sparse_vegetation",
                      "snow_and_ice", "permanent_water_bodies", "herbaceous_wetland", "mangroves", "moss_and_lichen"]


def write_benge(root: Path, n: int = 10, seed: int = 0) -> Path:
    """ben-ge-8k: CSV index + meta, S1/S2 ``_all_bands.npy``, ``_dem.tif`` (int16) and ``_esaworldcover.tif`` (uint8)."""
    rng = np.random.default_rng(seed)
    index, meta = [], []
    for i in range(n):
        patch = f"S2A_MSIL2A_20170613T101031_{i}_70"
        patch_s1 = f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{i}_70"
        s2 = np.clip(np.rint(_levels(rng, BENGE_S2, 120, 1e-4)), 0, 65535).astype(np.uint16)
        (root / "sentinel-2" / "s2_npy").mkdir(parents=True, exist_ok=True)
        np.save(root / "sentinel-2" / "s2_npy" / f"{patch}_all_bands.npy", s2)
        s1 = np.stack([np.full((120, 120), LEVEL["VV"]), np.full((120, 120), LEVEL["VH"])]).astype(np.float32)
        (root / "sentinel-1" / "s1_npy").mkdir(parents=True, exist_ok=True)
        np.save(root / "sentinel-1" / "s1_npy" / f"{patch_s1}_all_bands.npy", s1 + rng.normal(0, 0.5, s1.shape).astype(np.float32))
        write_tif(root / "glo-30_dem" / f"{patch}_dem.tif", np.full((1, 120, 120), LEVEL["DEM"] + i), "int16")
        # Land cover: patch i is mostly one of three classes (cropland 40, tree cover 10, water 80) with a strip of
        # built-up (50) and a corner without data (0).
        major = (40, 10, 80)[i % 3]
        codes = np.full((120, 120), major, dtype=np.uint8)
        codes[:, :30] = 50
        codes[:8, :8] = 0
        write_tif(root / "esaworldcover" / f"{patch}_esaworldcover.tif", codes[None], "uint8")
        fractions = {c: 0.0 for c in WORLDCOVER_COLUMNS}
        valid = (codes > 0).sum()
        fractions["built-up"] = float((codes == 50).sum() / valid)
        fractions[{40: "cropland", 10: "tree_cover", 80: "permanent_water_bodies"}[major]] = float((codes == major).sum() / valid)
        index.append({"filename": f"{patch}_esaworldcover.tif", "patch_id": patch, **fractions})
        meta.append({"patch_id": patch, "patch_id_s1": patch_s1, "timestamp_s2": "2017-06-13 10:10:31",
                     "timestamp_s1": "2017-06-13 16:50:43", "season_s2": 0.99, "season_s1": 0.99, "lon": 8.1, "lat": 47.2})
    for name, rows in (("ben-ge-8k_esaworldcover.csv", index), ("ben-ge-8k_meta.csv", meta)):
        with (root / name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


SEN1FLOODS11_S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def write_sen1floods11(root: Path, chips: tuple[str, ...] = ("Bolivia_103757", "Ghana_5079", "India_1018", "USA_181263"),
                       size: int = 64, seed: int = 0) -> Path:
    """Sen1Floods11 v1.1: S1Hand (float32 dB, NaN no data), S2Hand (uint16 DN), LabelHand (int16 -1/0/1) and splits."""
    rng = np.random.default_rng(seed)
    base = root / "v1.1" / "data" / "flood_events" / "HandLabeled"
    for k, chip in enumerate(chips):
        s1 = _levels(rng, ["VV", "VH"], size, 1.0).astype(np.float32)
        s1[:, :4, :4] = np.nan
        label = np.zeros((size, size), dtype=np.int16)
        label[:, : 8 * (k + 1)] = 1  # water on the left, wider in each chip
        label[-4:, -4:] = -1
        s1[:, label == 1] -= 10.0  # open water is dark in SAR
        write_tif(base / "S1Hand" / f"{chip}_S1Hand.tif", s1, "float32")
        s2 = np.clip(np.rint(_levels(rng, SEN1FLOODS11_S2, size, 1e-4)), 0, 65535)
        write_tif(base / "S2Hand" / f"{chip}_S2Hand.tif", s2, "uint16")
        write_tif(base / "LabelHand" / f"{chip}_LabelHand.tif", label[None], "int16", nodata=None)
    splits = root / "v1.1" / "splits" / "flood_handlabeled"
    splits.mkdir(parents=True, exist_ok=True)
    for split, members in (("train", chips[:2]), ("valid", chips[2:3]), ("test", chips[3:])):
        with (splits / f"flood_{split}_data.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([f"{c}_S1Hand.tif", f"{c}_LabelHand.tif"] for c in members)
    return root


HLS_BANDS = ["B02", "B03", "B04", "B8A", "B11", "B12"]


def write_hls_burn_scars(root: Path, n: int = 4, size: int = 64, seed: int = 0) -> Path:
    """HLS burn scars: training/ and validation/ with ``<scene>_merged.tif`` (float32 reflectance) and ``<scene>.mask.tif``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = "training" if i < n - 1 else "validation"
        scene = f"subsetted_512x512_HLS.S30.T10SEH.20181{i:02d}.v1.4"
        data = _levels(rng, HLS_BANDS, size, 1.0).astype(np.float32)
        mask = np.zeros((size, size), dtype=np.int16)
        if i % 2 == 0:
            mask[8:40, 8:40] = 1  # a burn scar in the upper left
            data[4:, 8:40, 8:40] += 0.1  # brighter SWIR (and lower NIR) over the scar
            data[3, 8:40, 8:40] -= 0.15
        mask[:2, :] = -1
        data[:, :2, :] = -9999.0
        write_tif(root / folder / f"{scene}_merged.tif", data, "float32")
        write_tif(root / folder / f"{scene}.mask.tif", mask[None], "int16")
    return root


EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake"]


def write_eurosat(root: Path, per_class: int = 2, seed: int = 0) -> Path:
    """EuroSAT-MS: ``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<n>.tif``, 13 bands uint16."""
    rng = np.random.default_rng(seed)
    base = root / "ds" / "images" / "remote_sensing" / "otherDatasets" / "sentinel_2" / "tif"
    for c, cls in enumerate(EUROSAT):
        for n in range(1, per_class + 1):
            levels = _levels(rng, SEN1FLOODS11_S2, 64, 1e-4) * (1 + 0.1 * c)  # classes differ in brightness
            write_tif(base / cls / f"{cls}_{n}.tif", np.clip(np.rint(levels), 0, 65535), "uint16", crs="EPSG:32632")
    return root


@pytest.fixture(scope="session")
def benge_root(tmp_path_factory) -> Path:
    return write_benge(tmp_path_factory.mktemp("ben-ge-8k"))


@pytest.fixture(scope="session")
def sen1floods11_root(tmp_path_factory) -> Path:
    return write_sen1floods11(tmp_path_factory.mktemp("sen1floods11"))


@pytest.fixture(scope="session")
def hls_root(tmp_path_factory) -> Path:
    return write_hls_burn_scars(tmp_path_factory.mktemp("hls_burn_scars"))


@pytest.fixture(scope="session")
def eurosat_root(tmp_path_factory) -> Path:
    return write_eurosat(tmp_path_factory.mktemp("eurosat"))

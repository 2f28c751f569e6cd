"""The real data set loaders on small copies written in each data set's layout (tests/training/conftest.py)."""

import re
import shutil

import numpy as np
import pytest
import torch

from mapex_serve.bands import MODALITIES
from training.data import (
    DATASETS,
    EUROSAT_CLASSES,
    WORLDCOVER_CLASSES,
    BenGe,
    DatasetLayoutError,
    EuroSAT,
    FittedTiles,
    HLSBurnScars,
    Sen1Floods11,
    TileSet,
)

from .conftest import LEVEL


def assert_levels(sample, modalities, rel=0.08, absolute=0.6):
    """Each modality holds its bands in physical units, at the levels the fixture wrote."""
    assert tuple(sample.inputs) == tuple(modalities)
    for m in modalities:
        x = sample.inputs[m]
        assert x.dtype == torch.float32 and x.shape[0] == len(MODALITIES[m])
        for c, b in enumerate(MODALITIES[m]):
            median = float(torch.nanmedian(x[c]))
            tol = absolute if b in ("VV", "VH", "DEM") else rel * LEVEL[b]
            assert abs(median - LEVEL[b]) <= tol + (10 if b == "DEM" else 0), (m, b, median)


def test_benge_reads_every_modality_in_physical_units_with_worldcover_labels(benge_root):
    ds = BenGe(benge_root)
    assert len(ds) == 10 and ds.modalities() == ("RGB", "RED_EDGE", "NIR", "SWIR", "SAR", "ELE")
    assert BenGe.CANONICAL["sentinel-2"][-3:] == ("B09", "B11", "B12") and BenGe.CANONICAL["glo-30_dem"] == ("DEM",)
    for i in (0, 1, 2):
        s = ds[i]
        assert_levels(s, ds.modalities())
        assert s.inputs["RGB"].shape == (3, 120, 120)
        assert float(s.inputs["ELE"][0, 0, 0]) == LEVEL["DEM"] + i  # int16 metres, exactly
        lc = s.labels["landcover"]
        assert lc.shape == (120, 120) and lc.dtype == torch.int64
        assert int(lc[0, 0]) == -1 and int(lc[60, 10]) == WORLDCOVER_CLASSES.index("built-up")
        major = ("cropland", "tree cover", "permanent water bodies")[i % 3]
        assert int(s.labels["tile_class"]) == WORLDCOVER_CLASSES.index(major)
        expected = torch.zeros(len(WORLDCOVER_CLASSES))
        expected[WORLDCOVER_CLASSES.index(major)] = 1  # built-up covers 24%: under the 0.3 threshold
        assert torch.equal(s.labels["multilabel"], expected)


def test_sen1floods11_reads_sar_and_optical_with_water_masks_and_splits(sen1floods11_root):
    ds = Sen1Floods11(sen1floods11_root)
    assert len(ds) == 4 and ds.chips[0] == "Bolivia_103757"
    assert ds.modalities() == ("RGB", "RED_EDGE", "NIR", "SWIR", "SAR")
    s = ds[1]
    assert s.inputs["SAR"].shape == (2, 64, 64) and s.inputs["RGB"].shape == (3, 64, 64)
    assert torch.isnan(s.inputs["SAR"][:, :4, :4]).all()  # no data stays NaN in the loader
    assert float(torch.nanmedian(s.inputs["SAR"][0, :, 32:])) == pytest.approx(LEVEL["VV"], abs=0.6)
    assert float(torch.nanmedian(s.inputs["SAR"][0, :, :8])) == pytest.approx(LEVEL["VV"] - 10, abs=0.6)  # water
    assert_levels(type(s)({m: s.inputs[m] for m in ("RGB", "NIR", "SWIR")}), ("RGB", "NIR", "SWIR"))
    mask = s.labels["flood"]
    assert mask.dtype == torch.int64 and set(mask.unique().tolist()) == {-1, 0, 1}
    assert int((mask == 1).sum()) == 64 * 16 - 0 and int(s.labels["has_flood"]) == 1
    assert [Sen1Floods11(sen1floods11_root, split).chips for split in ("train", "valid", "test")] == [
        ["Bolivia_103757", "Ghana_5079"], ["India_1018"], ["USA_181263"]]


def test_hls_burn_scars_reads_reflectance_with_burn_masks(hls_root):
    ds = HLSBurnScars(hls_root)
    assert len(ds) == 4 and len(HLSBurnScars(hls_root, "validation")) == 1
    assert HLSBurnScars.CANONICAL["merged"] == ("B02", "B03", "B04", "B8A", "B11", "B12")
    assert ds.modalities() == ("RGB", "SWIR")  # no B08, so no NIR
    burned, clean = ds[0], ds[1]
    assert torch.isnan(burned.inputs["SWIR"][:, :2]).all()  # the -9999 fill value
    assert float(torch.nanmedian(clean.inputs["SWIR"][0])) == pytest.approx(LEVEL["B11"], rel=0.05)  # scale 1
    assert_levels(clean, ("RGB", "SWIR"))
    assert int(burned.labels["has_burn"]) == 1 and int(clean.labels["has_burn"]) == 0
    assert int((burned.labels["burn"] == 1).sum()) == 32 * 32 and int((burned.labels["burn"] == -1).sum()) == 128


def test_eurosat_reads_thirteen_bands_in_class_folders(eurosat_root):
    ds = EuroSAT(eurosat_root)
    assert len(ds) == 20 and ds.modalities() == ("RGB", "RED_EDGE", "NIR", "SWIR")
    first, last = ds[0], ds[19]
    assert first.name == "AnnualCrop_1" and int(first.labels["tile_class"]) == 0
    assert int(last.labels["tile_class"]) == EUROSAT_CLASSES.index("SeaLake") == 9
    assert first.inputs["NIR"].shape == (2, 64, 64)
    assert_levels(first, ds.modalities())
    # B8A is the 9th band of the file: NIR = (B08, B8A) must read 0.30 and 0.31, not B09's 0.32.
    assert float(first.inputs["NIR"][1].median()) == pytest.approx(LEVEL["B8A"], rel=0.03)
    # Classes were written brighter by 10% each: the SeaLake chip's B04 is 1.9x the AnnualCrop's.
    assert float(last.inputs["RGB"][0].median() / first.inputs["RGB"][0].median()) == pytest.approx(1.9, rel=0.05)


def test_chips_become_model_tiles_cut_or_resized_with_labels_rederived(sen1floods11_root, benge_root):
    floods = FittedTiles(Sen1Floods11(sen1floods11_root), 32)
    assert floods.per_chip == 4 and len(floods) == 16
    tiles = TileSet.of(floods)
    assert tiles.inputs["SAR"].shape == (16, 2, 32, 32) and tiles.flood.shape == (16, 32, 32)
    assert torch.isfinite(tiles.inputs["SAR"]).all()  # nodata filled for the model
    # Chip 0 has water in its 8 left columns: its left tiles flood, its right ones do not.
    assert tiles.has_flood[:4].tolist() == [1, 0, 1, 0]
    fitted = FittedTiles(BenGe(benge_root), 32)
    # Cut chips keep the data set's 10 m pixels; ben-ge's 120 px chips resized to 32 px have 37.5 m ones.
    assert floods.pixel_size_m == 10.0 and fitted.pixel_size_m == 37.5
    benge = TileSet.of(fitted)
    assert benge.inputs["ELE"].shape == (10, 1, 32, 32) and benge.landcover.shape == (10, 32, 32)
    assert benge.tile_class.tolist() == [WORLDCOVER_CLASSES.index(c) for c in
                                         ["cropland", "tree cover", "permanent water bodies"] * 3 + ["cropland"]]
    with pytest.raises(AttributeError, match="has no label 'burn'"):
        _ = benge.burn


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("ben-ge-8k", lambda r: (r / "ben-ge-8k_meta.csv").unlink(), "expected one file matching '*_meta.csv'"),
        ("ben-ge-8k", lambda r: next((r / "glo-30_dem").glob("*_dem.tif")).unlink(),
         "1 of the 10 patches listed in ben-ge-8k_esaworldcover.csv have no file there"),
        ("sen1floods11", lambda r: shutil.rmtree(r / "v1.1" / "data"), "looked for"),
        ("sen1floods11", lambda r: next((r / "v1.1/data/flood_events/HandLabeled/S2Hand").glob("*.tif")).unlink(),
         "have no S2Hand file"),
        ("hls-burn-scars", lambda r: next((r / "training").glob("*.mask.tif")).unlink(), "expected its mask"),
        ("hls-burn-scars", lambda r: shutil.rmtree(r / "training"), "expected a folder"),
        ("eurosat", lambda r: shutil.rmtree(next(r.rglob("Highway"))), "holds 9 folders, missing Highway"),
    ],
)
def test_a_wrong_layout_says_where_it_looked_what_it_expected_and_found(
    name, damage, message, tmp_path, request, benge_root, sen1floods11_root, hls_root, eurosat_root
):
    source = {"ben-ge-8k": benge_root, "sen1floods11": sen1floods11_root, "hls-burn-scars": hls_root,
              "eurosat": eurosat_root}[name]
    root = tmp_path / "copy"
    shutil.copytree(source, root)
    damage(root)
    with pytest.raises(DatasetLayoutError, match=re.escape(message)) as info:
        DATASETS[name](root)
    assert str(root) in str(info.value)


def test_a_band_count_that_does_not_match_the_layout_is_reported(eurosat_root, tmp_path):
    root = tmp_path / "eurosat"
    shutil.copytree(eurosat_root, root)
    path = next(root.rglob("AnnualCrop_1.tif"))
    from .conftest import write_tif

    write_tif(path, np.ones((3, 64, 64)), "uint16")  # an RGB file where the 13-band one should be
    with pytest.raises(DatasetLayoutError, match=r"AnnualCrop_1.tif: expected 13 bands, found 3"):
        EuroSAT(root)[0]

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio

from mapex_serve.bands import BANDS, bands_of
from mapex_serve.rasters import BandNamesMissingError, band_names, scale_offset
from mapex_serve.repository import Manifest
from mapex_serve.routing import NoMatchingSpecialistError, choose_route

DATA = Path(__file__).parents[1] / "data"


def manifest(task: str, modalities: list[str]) -> Manifest:
    bands = [{"name": b, "unit": BANDS[b].unit, "scale": BANDS[b].scale, "mean": 0.0, "std": 1.0}
             for b in bands_of(modalities)]
    return Manifest(
        name=f"{task}-{'+'.join(m.lower() for m in modalities)}", version=1, task=task, head="class",
        classes=["a", "b"], modalities=modalities, bands=bands, tile_size=32,
        input={"name": "input", "shape": [-1, len(bands), 32, 32]}, output={"name": "probabilities", "shape": [-1, 2]},
        experts_kept=[], parameters={"full": 10, "pruned": 5}, opset=18,
        artefacts={"model.onnx": {"sha256": "0" * 64, "bytes": 1}}, source_checkpoint_sha256="0" * 64,
        created=datetime.now(UTC),
    )


LANDCOVER = [manifest("landcover", [m]) for m in ("RGB", "SWIR", "SAR", "ELE")]


def test_the_real_sentinel2_crop_routes_by_its_band_descriptions():
    with rasterio.open(DATA / "sentinel2_6band_10m_epsg32719.tif") as src:
        names = band_names(src)
    assert names == ("B02", "B03", "B04", "B07", "B11", "B12")
    wildfire = choose_route([manifest("wildfire", ["SWIR"])], names)
    assert wildfire.manifest.name == "wildfire-swir" and wildfire.band_indexes == (5, 6)
    seg = choose_route([manifest("landcover-seg", ["RGB"])], names)
    assert seg.bands == ["B04", "B03", "B02"] and seg.band_indexes == (3, 2, 1)


def test_most_modalities_win_and_modality_forces_a_specialist():
    both = manifest("flood", ["SWIR", "SAR"])
    manifests = [manifest("flood", ["SAR"]), both]
    assert choose_route(manifests, ["VV", "VH", "B11", "B12"]).manifest is both
    assert choose_route(manifests, ["VH", "VV"]).band_indexes == (2, 1)
    assert choose_route(manifests, ["VV", "VH", "B11", "B12"], modality="sar").manifest.name == "flood-sar"
    assert choose_route(LANDCOVER, ["B04", "B03", "B02", "B11", "B12"], modality="SWIR").band_indexes == (4, 5)


def test_no_matching_specialist_lists_the_bands_found_and_the_sets_accepted():
    with pytest.raises(NoMatchingSpecialistError) as err:
        choose_route(LANDCOVER, ["B05", "B06"])
    message = str(err.value)
    assert "['B05', 'B06']" in message and "landcover-rgb: B04, B03, B02" in message and "landcover-ele: DEM" in message
    with pytest.raises(NoMatchingSpecialistError, match="with modality=SAR"):
        choose_route(LANDCOVER, ["B04", "B03", "B02"], modality="SAR")


def test_a_file_without_band_descriptions_needs_bands_and_says_how():
    with rasterio.open(DATA / "rmnp-rgb.tif") as src:
        with pytest.raises(BandNamesMissingError, match="bands=red,green,blue"):
            band_names(src)
        assert band_names(src, ["red", "green", "blue"]) == ("B04", "B03", "B02")
        with pytest.raises(BandNamesMissingError, match="names given"):
            band_names(src, ["red", "green"])


def test_band_tags_name_bands_and_the_file_scale_wins(tmp_path):
    path = tmp_path / "tagged.tif"
    profile = dict(driver="GTiff", width=4, height=4, count=2, dtype="uint16", crs="EPSG:32633",
                   transform=rasterio.Affine(10, 0, 0, 0, -10, 0))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((2, 4, 4), dtype=np.uint16))
        dst.update_tags(1, NAME="swir1")
        dst.update_tags(2, band_name="B12")
        dst.scales = (1.0, 2e-4)
        dst.offsets = (0.0, -0.1)
    with rasterio.open(path) as src:
        assert band_names(src) == ("B11", "B12")
        assert scale_offset(src, 1, "B11") == (pytest.approx(1e-4), 0.0)
        assert scale_offset(src, 2, "B12") == (pytest.approx(2e-4), pytest.approx(-0.1))


def test_training_chips_named_as_linear_snap_bands_are_refused(tmp_path):
    """``band_names`` feeds training, which scales but never converts units: linear power must not pass as dB."""
    from mapex_serve.units import UnitError

    path = tmp_path / "chip.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=2, dtype="float32") as dst:
        dst.write(np.full((2, 4, 4), 0.05, np.float32))
        dst.descriptions = ("Sigma0_VV", "Sigma0_VH")
    with rasterio.open(path) as src, pytest.raises(UnitError, match="linear values"):
        band_names(src)

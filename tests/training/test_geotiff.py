import struct

import numpy as np
import pytest
import rasterio
import torch
from rasterio import Affine
from rasterio.crs import CRS

from mapex_serve.bands import BANDS, MODALITIES
from mapex_serve.errors import MapexError
from training.data import (
    BandNamesMissingError,
    ChipFolder,
    ChipFolderError,
    LabelsNotFoundError,
    generate_scene,
    read_geotiff,
    write_scene_geotiff,
)

S2_ALL = [b for b in BANDS if BANDS[b].sensor == "S2"]


@pytest.fixture(scope="module")
def scene():
    return generate_scene(0)


def tiff_tags(path):
    """Tag numbers of the first image directory of a little-endian classic TIFF (GDAL hides the layout)."""
    raw = path.read_bytes()
    assert raw[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", raw, 4)
    (count,) = struct.unpack_from("<H", raw, ifd)
    return {struct.unpack_from("<H", raw, ifd + 2 + 12 * i)[0] for i in range(count)}


def write_raw(path, data, descriptions=None, tags=None, **profile):
    """A GeoTIFF written with rasterio directly, to test what the reader makes of other writers' files."""
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs="EPSG:32719", transform=Affine(10, 0, 300000, 0, -10, 7000000), **profile) as dst:
        dst.write(data)
        for i in range(count):
            if descriptions:
                dst.set_band_description(i + 1, descriptions[i])
            if tags:
                dst.update_tags(i + 1, **tags[i])
    return path


def test_s2_only_scene_is_uint16_dn_with_names_crs_and_transform(scene, tmp_path):
    path = write_scene_geotiff(scene, tmp_path / "s2.tif", ["red", "green", "blue", "nir"])
    with rasterio.open(path) as src:
        assert src.descriptions == ("B04", "B03", "B02", "B08")
        assert src.dtypes == ("uint16",) * 4
        assert src.crs == CRS.from_epsg(32633)
        assert src.transform == Affine(10.0, 0, 500000.0, 0, -10.0, 5000000.0)
        assert src.compression.value == "DEFLATE"
        np.testing.assert_array_equal(src.read(1), np.rint(scene.bands["B04"] * 10000).astype(np.uint16))
    values, profile = read_geotiff(path)
    assert list(values) == ["B04", "B03", "B02", "B08"]
    for b, x in values.items():
        assert x.dtype == np.float32
        np.testing.assert_allclose(x, scene.bands[b], atol=1e-4, rtol=0)
    assert profile["crs"] == CRS.from_epsg(32633) and (profile["width"], profile["height"]) == (32, 32)
    assert profile["nodata"] is None and profile["transform"].a == 10.0
    assert {322, 323} <= tiff_tags(path)  # TileWidth, TileLength: tiled, not stripped
    assert [p.name for p in tmp_path.iterdir()] == ["s2.tif"]  # no temporary file left behind


def test_scene_with_sar_and_dem_is_float32(scene, tmp_path):
    names = [*S2_ALL, "VV", "VH", "elevation"]
    path = write_scene_geotiff(scene, tmp_path / "all.tif", names, crs="EPSG:4326", origin=(10.0, 50.0))
    with rasterio.open(path) as src:
        assert src.dtypes == ("float32",) * 16
        assert src.descriptions[-3:] == ("VV", "VH", "DEM") and src.crs == CRS.from_epsg(4326)
        assert src.transform.c == 10.0 and src.transform.f == 50.0
        np.testing.assert_array_equal(src.read(15), scene.bands["VH"])
    values, _ = read_geotiff(path)
    assert set(values) == set(BANDS)
    for b, x in values.items():
        np.testing.assert_allclose(x, scene.bands[b], atol=1e-4, rtol=0)


def test_overwrite_replaces_the_file(scene, tmp_path):
    path = tmp_path / "x.tif"
    write_scene_geotiff(scene, path, ["VV"])
    write_scene_geotiff(scene, path, ["B02", "B03"])
    assert list(read_geotiff(path)[0]) == ["B02", "B03"]
    assert len(list(tmp_path.iterdir())) == 1


def test_band_names_from_tags(tmp_path):
    data = np.arange(3 * 4 * 4, dtype=np.uint16).reshape(3, 4, 4)
    path = write_raw(tmp_path / "t.tif", data, tags=[{"NAME": "red"}, {"band_name": "S2_B03"}, {"BandName": "b2"}])
    values, _ = read_geotiff(path)
    assert list(values) == ["B04", "B03", "B02"]
    np.testing.assert_allclose(values["B03"], data[1] * 1e-4, rtol=1e-6)


def test_bands_argument_overrides_descriptions(tmp_path):
    data = np.full((2, 4, 4), 2500, dtype=np.uint16)
    path = write_raw(tmp_path / "d.tif", data, descriptions=["B04", "B03"])
    assert list(read_geotiff(path, bands=["swir1", "swir2"])[0]) == ["B11", "B12"]
    assert list(read_geotiff(path)[0]) == ["B04", "B03"]


def test_unnamed_bands_raise_an_error_that_says_how_to_name_them(tmp_path):
    path = write_raw(tmp_path / "n.tif", np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(BandNamesMissingError, match="set_band_description") as err:
        read_geotiff(path)
    assert isinstance(err.value, MapexError) and isinstance(err.value, ValueError)
    assert "bands=" in str(err.value) and "n.tif" in str(err.value)
    assert list(read_geotiff(path, bands=["VV", "VH"])[0]) == ["VV", "VH"]
    with pytest.raises(BandNamesMissingError, match="2 bands"):
        read_geotiff(path, bands=["VV"])


def test_nodata_reads_as_nan_and_file_scale_offset_wins(tmp_path):
    # An L2A file of processing baseline 04.00 carries DN with offset -1000 (here: GDAL scale/offset).
    data = np.array([[[0, 1000], [3000, 11000]]], dtype=np.uint16)
    path = write_raw(tmp_path / "o.tif", data, descriptions=["B08"], nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (1e-4,), (-0.1,)
    values, profile = read_geotiff(path)
    assert profile["nodata"] == 0
    np.testing.assert_allclose(values["B08"], [[np.nan, 0.0], [0.2, 1.0]], atol=1e-6)


def write_chips(root, scene, labels="file,label\na.tif,water\nb.tif,Trees\nc.tif,3\nd.tif,built-up\n"):
    write_scene_geotiff(scene, root / "a.tif", [*S2_ALL, "VV", "VH", "DEM"])
    write_scene_geotiff(scene, root / "b.tif", [b for m in ("RGB", "RED_EDGE", "NIR", "SWIR") for b in MODALITIES[m]])
    write_scene_geotiff(scene, root / "c.tif", ["VV", "VH", "DEM"])
    write_scene_geotiff(scene, root / "d.tif", ["red", "green", "blue", "B01"])
    (root / "labels.csv").write_text(labels)


def test_chip_folder_reads_every_modality_a_chip_covers(scene, tmp_path):
    write_chips(tmp_path, scene)
    chips = ChipFolder(tmp_path)
    assert len(chips) == 4 and isinstance(chips, torch.utils.data.Dataset)
    expected = [(list(MODALITIES), 0), (["RGB", "RED_EDGE", "NIR", "SWIR"], 1), (["SAR", "ELE"], 3), (["RGB"], 4)]
    for i, (modalities, label) in enumerate(expected):
        inputs, got = chips[i]
        assert list(inputs) == modalities and got == label
        for m, x in inputs.items():
            assert x.dtype == torch.float32 and x.shape == (len(MODALITIES[m]), 32, 32)
            np.testing.assert_allclose(x.numpy(), scene.modality(m), atol=1e-4, rtol=0)


def test_chip_folder_requested_modalities(scene, tmp_path):
    write_chips(tmp_path, scene)
    chips = ChipFolder(tmp_path, modalities=["rgb"])
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(chips, [0, 1, 3]), batch_size=3)
    inputs, labels = next(iter(loader))
    assert list(inputs) == ["RGB"] and inputs["RGB"].shape == (3, 3, 32, 32) and labels.tolist() == [0, 1, 4]
    with pytest.raises(ChipFolderError, match=r"c\.tif lacks modality RGB") as err:
        chips[2]
    assert "'VV', 'VH', 'DEM'" in str(err.value) and "'B04', 'B03', 'B02'" in str(err.value)


def test_chip_folder_errors(scene, tmp_path):
    with pytest.raises(LabelsNotFoundError, match="labels.csv") as err:
        ChipFolder(tmp_path)
    assert str(tmp_path) in str(err.value) and isinstance(err.value, FileNotFoundError)

    write_chips(tmp_path, scene, labels="file,label\na.tif,forest\n")
    with pytest.raises(ChipFolderError, match="unknown label 'forest'.*'water', 'trees'"):
        ChipFolder(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\na.tif,7\n")
    with pytest.raises(ChipFolderError, match="index 0..6"):
        ChipFolder(tmp_path)
    (tmp_path / "labels.csv").write_text("path,class\na.tif,water\n")
    with pytest.raises(ChipFolderError, match="expected 'file' and 'label'"):
        ChipFolder(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\nmissing.tif,water\n")
    with pytest.raises(ChipFolderError, match="missing.tif"):
        ChipFolder(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\nd.tif,water\n")
    assert list(ChipFolder(tmp_path)[0][0]) == ["RGB"]
    write_scene_geotiff(scene, tmp_path / "d.tif", ["B01"])
    with pytest.raises(ChipFolderError, match="covers no whole modality"):
        ChipFolder(tmp_path)[0]
    (tmp_path / "other.csv").write_text("file,label\na.tif,0\n")
    assert ChipFolder(tmp_path, labels="other.csv", classes=["x"])[0][1] == 0

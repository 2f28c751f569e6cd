"""Top-of-atmosphere (Level-1C) against surface (Level-2A) reflectance: what files say, and the specialist's check."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window

from mapex_serve.inputs import RequestScene, UploadedFile
from mapex_serve.reflectance import ReflectanceLevelError, level_of
from mapex_serve.units import ImplausibleValuesError, UnitOverrides

SAFE_L2A = ("S2A_MSIL2A_20230914T100031_N0509_R122_T33UUP_20230914T130000.SAFE/GRANULE/L2A_T33UUP_A043000_"
            "20230914T100900/IMG_DATA/R10m/T33UUP_20230914T100031_B04_10m.jp2")


@pytest.mark.parametrize(
    ("file", "path", "tags", "level"),
    [
        # gdal_translate SENTINEL2_L1C:MTD_MSIL1C.xml:10m:EPSG_32633 copies the driver's metadata into the GeoTIFF.
        ("s2.tif", "/vsimem/a/s2.tif", {"PROCESSING_LEVEL": "Level-1C", "PRODUCT_TYPE": "S2MSI1C"}, "top-of-atmosphere"),
        ("s2.tif", "/vsimem/a/s2.tif", {"PRODUCT_TYPE": "S2MSI2A"}, "surface"),
        ("T33UUP_20230914T100031_B02.jp2", "/vsimem/a/T33UUP_20230914T100031_B02.jp2", {}, "top-of-atmosphere"),
        (SAFE_L2A, f"/vsimem/a/{SAFE_L2A}", {}, "surface"),
        ("B04.jp2", "/vsicurl/https://sentinel-s2-l1c.s3.amazonaws.com/tiles/33/U/UP/2023/9/14/0/B04.jp2", {},
         "top-of-atmosphere"),
        ("B04.jp2", "/vsis3/eodata/Sentinel-2/MSI/L1C/2023/09/14/S2A_MSIL1C_20230914T100031.SAFE/B04.jp2", {},
         "top-of-atmosphere"),
        ("s2_l2a_rgb_2023.tif", "/vsimem/a/s2_l2a_rgb_2023.tif", {}, "surface"),
        ("SENTINEL2X_20230815-000000-000_L3A_T31TCJ_C_V2-0_FRC_B4.tif", "/vsimem/a/x.tif", {}, "surface"),  # THEIA's
        # Nothing said: Earth Engine's download, the Planetary Computer's COG, HLS, Landsat's Level-1 band.
        ("download.B4.tif", "/vsimem/0a1c/download.B4.tif", {}, None),
        ("T33UUP_20230914T100031_B04_10m.tif", "/vsimem/a/T33UUP_20230914T100031_B04_10m.tif", {}, None),
        ("HLS.S30.T33UUP.2023257T100031.v2.0.B04.tif", "/vsimem/a/HLS.tif", {}, None),
        ("LC09_L1TP_044034_20220111_20220123_02_T1_B4.TIF", "/vsimem/a/LC09.TIF", {}, None),
    ],
)
def test_what_a_file_says_of_its_processing_level(file, path, tags, level):
    found = level_of(file, path, tags)
    assert (found and found.level) == level


@pytest.fixture(scope="module")
def swir_file(to_geotiff):
    values = np.random.default_rng(0).integers(500, 3000, (2, 32, 32)).astype(np.uint16)
    return lambda tags: to_geotiff(values, ["B11", "B12"], tags=tags)


def read_for(model, data: bytes, **overrides) -> np.ndarray:
    with RequestScene([UploadedFile("s2_swir.tif", data)]) as scene:
        reader = scene.reader(["B11", "B12"], UnitOverrides.parse(**overrides), model=model)
        return reader.read(Window(0, 0, 32, 32))[0]


def test_a_level_1c_file_for_a_model_of_surface_reflectance_is_refused_unless_asked_to_run_as_is(swir_manifest,
                                                                                                  swir_file):
    surface = swir_manifest.model_copy(update={"reflectance": "surface"})
    l1c = swir_file({"PROCESSING_LEVEL": "Level-1C"})
    with pytest.raises(ReflectanceLevelError) as refused:
        read_for(surface, l1c)
    message = str(refused.value)
    assert message.startswith("s2_swir.tif holds top-of-atmosphere reflectance (Level-1C), by its GDAL metadata "
                              "PROCESSING_LEVEL=Level-1C, and wildfire-swir learned surface reflectance (Level-2A)")
    assert "sen2cor" in message and "reflectance=as-is" in message
    as_is = read_for(surface, l1c, reflectance="as-is")
    np.testing.assert_array_equal(as_is, read_for(surface, swir_file({})))  # the same values, read as they are
    read_for(surface, swir_file({"PROCESSING_LEVEL": "Level-2A"}))
    read_for(swir_manifest, l1c)  # a model that records no level reads any


def test_a_model_of_top_of_atmosphere_reflectance_refuses_surface_reflectance(swir_manifest, swir_file):
    """EuroSAT and Sen1Floods11 are Level-1C: a model trained on them is told Level-2A from its files too."""
    toa = swir_manifest.model_copy(update={"reflectance": "top-of-atmosphere"})
    read_for(toa, swir_file({"PROCESSING_LEVEL": "Level-1C"}))
    with pytest.raises(ReflectanceLevelError, match=r"learned top-of-atmosphere reflectance \(Level-1C\).*Send the "
                                                    r"scene's Level-1C product, or add reflectance=as-is"):
        read_for(toa, swir_file({"PRODUCT_TYPE": "S2MSI2A"}))


def test_earth_engines_landsat_toa_is_top_of_atmosphere_and_its_level1_numbers_are_not_scaled(swir_manifest, to_geotiff):
    """Earth Engine names a Landsat image by its scene id in every collection (``LC08_044034_20220111``) and its bands
    ``B6`` in the Level-1 and TOA ones, ``SR_B6`` in the Level-2 ones. A TOA download (floats 0..1) got a 422 asking
    for units=reflectance, which then ran it as surface reflectance; a Level-1 one (digital numbers) got a 422 naming
    Level-2's scale, wrong for it. Both say what they hold now; the Level-2 bands are read in their scale."""
    surface = swir_manifest.model_copy(update={"reflectance": "surface"})
    rng = np.random.default_rng(1)

    def files(kind, data):
        return [UploadedFile(f"LC08_044034_20220111.{kind}{n}.tif", to_geotiff(data[i][None], [None]))
                for i, n in enumerate((6, 7))]

    def read(uploads, **overrides):
        with RequestScene(uploads) as scene:
            return scene.reader(["B11", "B12"], UnitOverrides.parse(**overrides), model=surface).read(
                Window(0, 0, 32, 32))[0]

    toa = files("B", rng.uniform(0.02, 0.4, (2, 32, 32)).astype(np.float32))
    with pytest.raises(ReflectanceLevelError, match=r"holds top-of-atmosphere reflectance, by its band's name B6, as "
                                                    r"Earth Engine names .* Send its Collection 2 Level-2 surface "
                                                    r"reflectance \(in Earth Engine LANDSAT/LC09/C02/T1_L2's SR_B4"):
        read(toa, units="reflectance")
    read(toa, units="reflectance", reflectance="as-is")
    with pytest.raises(ImplausibleValuesError, match=r"Level-1 band holds top-of-atmosphere digital numbers \(by its "
                                                     r"band's name B6"):
        read(files("B", rng.integers(7000, 30000, (2, 32, 32)).astype(np.uint16)), reflectance="as-is")
    dn = rng.integers(8000, 20000, (2, 32, 32)).astype(np.uint16)
    np.testing.assert_allclose(read(files("SR_B", dn)), dn * 2.75e-5 - 0.2, atol=1e-6)


def test_a_landsat_toa_export_under_any_name_is_top_of_atmosphere_by_its_collection_layer(swir_manifest, to_geotiff):
    """Earth Engine's Landsat 8 TOA image exported whole under the user's name: its bands ``B6`` and ``B7`` beside
    ``QA_PIXEL`` and the thermal ``B10``, ``B11`` are the TOA collection's (its Level-2 is named ``SR_B6``)."""
    surface = swir_manifest.model_copy(update={"reflectance": "surface"})
    rng = np.random.default_rng(2)
    names = ["B6", "B7", "B10", "B11", "QA_PIXEL"]

    def read(data, **overrides):
        with RequestScene([UploadedFile("study_area.tif", to_geotiff(data, names))]) as scene:
            return scene.reader(["B11", "B12"], UnitOverrides.parse(**overrides), model=surface).read(
                Window(0, 0, 32, 32))[0]

    toa = rng.uniform(0.02, 0.4, (5, 32, 32)).astype(np.float32)
    toa[2:4] = 295.0  # brightness temperature, kelvin
    with pytest.raises(ReflectanceLevelError, match=r"by its band's name B6 beside QA_PIXEL, as Earth Engine names"):
        read(toa, units="reflectance")
    with RequestScene([UploadedFile("l8_toa.tif", to_geotiff(toa, names))]) as scene, pytest.raises(
            ReflectanceLevelError, match=r"holds top-of-atmosphere reflectance, by .* Send its Collection 2 Level-2"):
        scene.reader(["B11", "B12"], UnitOverrides.parse(units="reflectance"), model=surface)  # not Sentinel-2's
    np.testing.assert_allclose(read(toa, units="reflectance", reflectance="as-is"), toa[:2])  # SWIR 1 and 2, not kelvin
    with pytest.raises(ImplausibleValuesError, match=r"Level-1 band holds top-of-atmosphere digital numbers"):
        read(rng.integers(7000, 30000, (5, 32, 32)).astype(np.uint16), reflectance="as-is")


def test_a_landsat_toa_collection_of_one_image_is_top_of_atmosphere_by_its_image_id(swir_manifest, to_geotiff):
    """Earth Engine's ``toBands()`` of LANDSAT/LC08/C02/T1_TOA names its bands ``LC08_044034_20220111_B6``: the id
    before ``B6`` says Earth Engine's Level-1/TOA naming, as the file name of its download does."""
    surface = swir_manifest.model_copy(update={"reflectance": "surface"})
    toa = np.random.default_rng(3).uniform(0.02, 0.4, (2, 32, 32)).astype(np.float32)
    data = to_geotiff(toa, [f"LC08_044034_20220111_B{n}" for n in (6, 7)])
    with RequestScene([UploadedFile("export.tif", data)]) as scene, pytest.raises(
            ReflectanceLevelError, match=r"top-of-atmosphere reflectance, by its band's name B6, as Earth Engine"):
        scene.reader(["B11", "B12"], UnitOverrides.parse(units="reflectance"), model=surface)


def test_a_request_whose_files_say_no_level_is_told_by_its_bands(swir_manifest, to_geotiff):
    """Earth Engine's downloads say nothing of their collection: an export of every band of COPERNICUS/S2_HARMONIZED
    (Level-1C, EuroSAT's way) ran as surface reflectance. Its cirrus band B10 says Level-1C (every Level-2A product
    drops it; HLS keeps it), a scene classification says Level-2A; a file that states its level wins."""
    surface = swir_manifest.model_copy(update={"reflectance": "surface"})
    toa = swir_manifest.model_copy(update={"reflectance": "top-of-atmosphere"})
    dn = np.random.default_rng(2).integers(500, 3000, (3, 32, 32)).astype(np.uint16)

    def read(model, names, files=None):
        uploads = files or [UploadedFile(f"download.{n}.tif", to_geotiff(dn[i][None], [None])) for i, n in
                            enumerate(names)]
        with RequestScene(uploads) as scene:
            return scene.reader(["B11", "B12"], UnitOverrides(), model=model).read(Window(0, 0, 32, 32))[0]

    with pytest.raises(ReflectanceLevelError, match=r"holds top-of-atmosphere reflectance \(Level-1C\), by its band "
                                                    r"B10 \(download.B10.tif: cirrus, 1375 nm\)"):
        read(surface, ["B11", "B12", "B10"])
    read(toa, ["B11", "B12", "B10"])
    with pytest.raises(ReflectanceLevelError, match=r"by its scene classification \(download.SCL.tif\)"):
        read(toa, ["B11", "B12", "SCL"])
    read(surface, ["B11", "B12", "SCL"])
    hls = [UploadedFile(f"HLS.S30.T33UUP.2023245T100031.v2.0.{n}.tif", to_geotiff(dn[i][None], [None]))
           for i, n in enumerate(["B11", "B12", "B10"])]
    read(surface, [], hls)  # HLS keeps the cirrus band in its surface reflectance
    fmask = np.zeros((1, 32, 32), np.uint8)
    renamed = [*(UploadedFile(f"download.{n}.tif", to_geotiff(dn[i][None], [None])) for i, n in
                 enumerate(["B11", "B12", "B10"])), UploadedFile("download.Fmask.tif", to_geotiff(fmask, [None]))]
    read(surface, [], renamed)  # so does Earth Engine's HLSS30 exported whole: its Fmask says HLS
    stated = [UploadedFile("s2_swir.tif", to_geotiff(dn[:2], ["B11", "B12"], tags={"PROCESSING_LEVEL": "Level-2A"})),
              UploadedFile("download.B10.tif", to_geotiff(dn[2][None], [None]))]
    read(surface, [], stated)  # the file that says its level wins

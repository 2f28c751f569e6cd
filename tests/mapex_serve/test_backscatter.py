"""sigma0 against gamma0: what Sentinel-1 files say of their backscatter, and the specialist's check."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window

from mapex_serve.backscatter import BackscatterError, backscatter_of
from mapex_serve.inputs import RequestScene, UploadedFile
from mapex_serve.units import UnitOverrides

HYP3 = "S1A_IW_20230914T052201_DVP_RTC30_G_{}puned_8C2F_{}.tif"
OPERA = "OPERA_L2_RTC-S1_T069-147170-IW1_20231010T121227Z_20231010T163008Z_S1A_30_v1.0_{}.tif"
NRB = "s1a-iw-nrb-20200103t170705-030639-0382d5-32tps-{}-{}-lin.tif"
DB = np.random.default_rng(0).uniform(-22, -6, (2, 32, 32)).astype(np.float32)
LINEAR = (10 ** (DB / 10)).astype(np.float32)


def one_file_per_band(name: str) -> list[tuple[str, np.ndarray, list[str | None]]]:
    return [(name.format(pol), LINEAR[i:i + 1], [None]) for i, pol in enumerate(("VV", "VH"))]


@pytest.fixture(scope="module")
def files_of(to_geotiff):
    """``[(file name, values, descriptions)]`` as uploads."""
    return lambda files: [UploadedFile(name, to_geotiff(values, descriptions)) for name, values, descriptions in files]


@pytest.mark.parametrize(
    ("files", "said"),
    [
        (one_file_per_band(HYP3.replace("{}", "g", 1)), "gamma0"),  # HyP3's default radiometry
        (one_file_per_band(HYP3.replace("{}", "s", 1)), "sigma0"),  # ordered with radiometry=sigma0
        (one_file_per_band(OPERA), "gamma0"),
        (one_file_per_band("iw-{}.rtc.tiff"), "gamma0"),  # the Planetary Computer's sentinel-1-rtc
        ([(NRB.format(p, "s"), LINEAR[i:i + 1], [None]) for i, p in enumerate(("vv", "vh"))], "sigma0"),
        ([("s1.tif", LINEAR, ["Gamma0_VV", "Gamma0_VH"])], "gamma0"),  # SNAP
        ([("s1.tif", DB, ["Sigma0_VV_db", "Sigma0_VH_db"])], "sigma0"),
        ([("s1.tif", DB, ["VV_gamma0_dB", "VH_gamma0_dB"])], "gamma0"),
        ([("flood_gamma0_2023.tif", DB, ["VV", "VH"])], "gamma0"),  # the word in the file's name
        # Sentinel Hub EO Browser's analytical download, a file a band; its S1GRD default is gamma0 (ellipsoid).
        ([(f"2023-04-23-00_00_2023-04-23-23_59_Sentinel-1_IW_VV+VH_{pol}_-_decibel_gamma0.tiff", DB[i:i + 1], [None])
          for i, pol in enumerate(("VV", "VH"))], "gamma0"),
        # Nothing said: Earth Engine's COPERNICUS/S1_GRD download (sigma0), a bare export.
        ([("download.tif", DB, ["VV", "VH"])], None),
        ([("S1_GRD_2023.tif", DB, ["VV", "VH"])], None),
    ],
)
def test_what_a_file_says_of_its_backscatter(files_of, files, said):
    with RequestScene(files_of(files)) as scene:
        found = backscatter_of(scene.band("VV"))
    assert (found and found.backscatter) == said


@pytest.fixture(scope="module")
def sar_model(sar_manifest):
    """The flood specialist's manifest recording the backscatter it learned."""
    return lambda learned: sar_manifest.model_copy(update={"backscatter": learned})


def read_for(model, uploads: list[UploadedFile], **overrides) -> np.ndarray:
    with RequestScene(uploads) as scene:
        return scene.reader(["VV", "VH"], UnitOverrides.parse(**overrides), model=model).read(Window(0, 0, 32, 32))[0]


def test_gamma0_for_a_model_of_sigma0_is_refused_unless_asked_to_run_as_is(sar_model, files_of):
    gamma0 = files_of(one_file_per_band(OPERA))
    with pytest.raises(BackscatterError) as refused:
        read_for(sar_model("sigma0"), gamma0)
    message = str(refused.value)
    assert message.startswith(f"{OPERA.format('VV')} holds gamma0, by its OPERA RTC-S1 file name (gamma0, linear "
                              f"power), and flood-sar learned sigma0")
    assert "radiometry=sigma0" in message and "COPERNICUS/S1_GRD" in message and "backscatter=as-is" in message
    assert "its burst's ..._rtc_anf_gamma0_to_sigma0.tif (RTC-S1-STATIC) beside it" in message
    as_is = read_for(sar_model("sigma0"), gamma0, backscatter="as-is")
    np.testing.assert_allclose(as_is, DB, atol=1e-4)  # the values, read as they are
    read_for(sar_model("sigma0"), files_of([("s1.tif", DB, ["Sigma0_VV_db", "Sigma0_VH_db"])]))
    read_for(sar_model("sigma0"), files_of([("download.tif", DB, ["VV", "VH"])]))  # says nothing: taken as sigma0
    read_for(sar_model(None), gamma0)  # a model that records none reads any


STATIC = "OPERA_L2_RTC-S1-STATIC_T069-147170-IW1_20140403_S1A_30_v1.0_rtc_anf_gamma0_to_sigma0.tif"


def test_opera_gamma0_with_its_bursts_gamma0_to_sigma0_factor_is_read_as_sigma0(sar_model, files_of, to_geotiff):
    """OPERA's RTC-S1-STATIC layer ``rtc_anf_gamma0_to_sigma0`` is, per pixel, the ratio sigma0 / gamma0 on the
    burst's grid: sent beside the burst's VV and VH, a model of sigma0 reads sigma0 = gamma0 x factor."""
    factor = np.random.default_rng(1).uniform(0.55, 0.95, (32, 32)).astype(np.float32)  # ~cos(incidence) on slopes
    factor[0, :4] = np.nan  # no factor (outside the burst): no data, not gamma0 read as sigma0
    with_factor = [*files_of(one_file_per_band(OPERA)),
                   UploadedFile(STATIC, to_geotiff(factor[None], [None], nodata=float("nan")))]
    with RequestScene(with_factor) as scene:
        reader = scene.reader(["VV", "VH"], UnitOverrides(), model=sar_model("sigma0"))
        values, reasons = reader.read(Window(0, 0, 32, 32))
        assert scene.band("VV").conversion.steps[-1] == (
            f"gamma0 to sigma0: x the factor of {STATIC} (+ its 10·log10 in dB), which flood-sar learned")
        assert reader.masked() == {"no gamma0 to sigma0 factor (its nodata, or <= 0)": 4}
        assert scene.bands[-1].report() | {"rule": "-"} == {"file": STATIC, "band": 1, "found": STATIC, "rule": "-",
                                                           "mapped_to": "gamma0 to sigma0 factor", "used": True}
    sigma0 = 10 * np.log10(LINEAR * factor)
    np.testing.assert_allclose(values[:, 1:], sigma0[:, 1:], atol=1e-4)
    assert (reasons[0, :4] != 0).all() and not reasons[1:].any()
    assert (values - DB)[:, 1:].max() < -0.2  # sigma0 is darker than the gamma0 sent
    # Read as it is, or by a model of gamma0, the factor is left aside.
    np.testing.assert_allclose(read_for(sar_model("sigma0"), with_factor, backscatter="as-is"), DB, atol=1e-4)
    np.testing.assert_allclose(read_for(sar_model("gamma0"), with_factor), DB, atol=1e-4)


def test_a_model_of_gamma0_refuses_sigma0_and_says_where_gamma0_comes_from(sar_model, files_of):
    read_for(sar_model("gamma0"), files_of(one_file_per_band("iw-{}.rtc.tiff")))
    with pytest.raises(BackscatterError, match=r"flood-sar learned gamma0.*Send terrain-flattened gamma0 \(ASF HyP3 "
                                               r"RTC's default, OPERA RTC-S1.*or add backscatter=as-is"):
        read_for(sar_model("gamma0"), files_of([("s1.tif", LINEAR, ["Sigma0_VV", "Sigma0_VH"])]))


@pytest.mark.parametrize(("layer", "stored"), [("decibel_gamma0", DB), ("linear_gamma0_-_orthorectified(1)", LINEAR),
                                               ("decibel_sigma0_-_radiometric_terrain_corrected", DB)])
def test_eo_browser_layer_files_name_their_band_unit_and_backscatter(files_of, layer, stored):
    """EO Browser names a download after its acquisition's polarisations and its layer (``..._IW_VV+VH_VV_-_decibel_
    gamma0.tiff``): before, the name's two polarisations left the band unnamed, a 422."""
    names = [f"2023-04-23-00_00_2023-04-23-23_59_Sentinel-1_IW_VV+VH_{pol}_-_{layer}.tiff" for pol in ("VV", "VH")]
    with RequestScene(files_of([(n, stored[i:i + 1], [None]) for i, n in enumerate(names)])) as scene:
        assert scene.band("VH").identity.rule.startswith("Sentinel Hub EO Browser file name")
        assert backscatter_of(scene.band("VV")).backscatter == layer.split("_")[1]
        values, _ = scene.reader(["VV", "VH"], UnitOverrides()).read(Window(0, 0, 32, 32))
    np.testing.assert_allclose(values, DB, atol=1e-4)

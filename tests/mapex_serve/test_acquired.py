"""When a scene was acquired, by the names its providers give their files and the SNAP headers in them: what a job's
STAC Item is dated by when no STAC item sent the scene."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import rasterio

from mapex_serve.acquired import acquisition
from mapex_serve.jobs.models import JobRequest
from mapex_serve.jobs.runner import resolve_sources
from mapex_serve.jobs.stac_result import _when

SAFE = "S2B_MSIL2A_20230912T100031_N0509_R122_T33UUP_20230912T120001.SAFE"
THEIA = "SENTINEL2B_20230815-105856-123_L2A_T31TCJ_C_V3-1"
THEIA_L3A = "SENTINEL2X_20230815-000000-000_L3A_T31TCJ_C_V2-0"


@pytest.mark.parametrize("names, acquired", [
    (["S2B_MSIL2A_20170914T093029_32_39_B11.tif"], "2017-09-14T09:30:29Z"),  # BigEarthNet's patches
    ([f"{SAFE}/GRANULE/L2A_T33UUP_A034_20230912T100027/IMG_DATA/R10m/T33UUP_20230912T100031_B02_10m.jp2"],
     "2023-09-12T10:00:31Z"),  # the product's sensing time, not its processing time (the name's second)
    (["T33UUP_20230912T100031_B11_20m.jp2", "T33UUP_20230912T100031_SCL_20m.jp2"], "2023-09-12T10:00:31Z"),
    (["s3://eodata/S1A_IW_GRDH_1SDV_20150705T064241_20150705T064306_006672_008EA0_24EE.SAFE/measurement/vv.tiff"],
     "2015-07-05T06:42:41Z"),
    (["S1A_IW_20180128T161201_DVP_RTC30_G_gpuned_FD6A_VV.tif"], "2018-01-28T16:12:01Z"),  # HyP3
    (["OPERA_L2_RTC-S1_T069-147170-IW1_20231019T121502Z_20231020T091509Z_S1A_30_v1.0_VV.tif"],
     "2023-10-19T12:15:02Z"),
    (["HLS.S30.T33UUP.2023245T100031.v2.0.B04.tif"], "2023-09-02T10:00:31Z"),  # day 245 of 2023
    ([f"{THEIA}/{THEIA}_FRE_B4.tif", f"{THEIA}/MASKS/{THEIA}_CLM_R2.tif"], "2023-08-15T10:58:56Z"),  # MAJA's L2A
    (["LANDSAT8-OLITIRS-XS_20210821-102351-515_L2A_T31TFJ_C_V2-2_FRE_B5.tif"], "2021-08-21T10:23:51Z"),  # THEIA's
    ([f"{THEIA_L3A}/{THEIA_L3A}_FRC_B4.tif"], "2023-08-15T00:00:00Z/2023-08-15T23:59:59Z"),  # a synthesis's centre
    (["20230912_175450_00_2439_3B_AnalyticMS_SR.tif", "20230912_175450_00_2439_3B_udm2.tif"], "2023-09-12T17:54:50Z"),
    (["20210913_211131_ssc15_u0001_analytic_SR.tif"], "2021-09-13T21:11:31Z"),  # SkySat
    (["LC09_L2SP_044034_20220111_20220113_02_T1_SR_B4.TIF"], "2022-01-11T00:00:00Z/2022-01-11T23:59:59Z"),
    (["ga_s2am_nbart_3-2-1_53JQJ_2020-10-31_final_band11.tif"], "2020-10-31T00:00:00Z/2020-10-31T23:59:59Z"),
    (["X0069_Y0042/20230815_LEVEL2_SEN2A_BOA.tif"], "2023-08-15T00:00:00Z/2023-08-15T23:59:59Z"),  # a FORCE cube's
    (["S2A2A_20190723_022_Barbellino_BOA_10.tif"], "2019-07-23T00:00:00Z/2019-07-23T23:59:59Z"),  # sen2r
    # Earth Engine's downloads of a stored image, named after its id: Sentinel-2's, and Landsat's (the day)
    (["20230912T100031_20230912T100345_T33UUP.B4.tif", "20230912T100031_20230912T100345_T33UUP.cs_cdf.tif"],
     "2023-09-12T10:00:31Z"),
    (["LC09_044034_20220111.SR_B4.tif"], "2022-01-11T00:00:00Z/2022-01-11T23:59:59Z"),
    (["S2B_MSIL2A_20230912T100031_x_B04.tif", "20230912_101500_00_2439_3B_udm2.tif"], "2023-09-12T10:00:31Z"),
    (["S2B_MSIL2A_20230912T100031_x_B04.tif", "S2B_MSIL2A_20230915T100031_x_B11.tif"], None),  # two overpasses
    (["LC09_L2SP_044034_20220111_20220113_02_T1_SR_B4.TIF", "S2B_MSIL2A_20220112T100031_x_B11.tif"], None),
    (["flood.tif", "s1_scene.tif", "S2B_MSIL2A_20231345T100031_x_B04.tif"], None),  # no date; no such date
])
def test_the_names_providers_give_their_files_say_when_they_were_acquired(names, acquired):
    assert acquisition(names) == acquired


def test_a_job_by_url_is_dated_by_its_path_and_a_day_becomes_stacs_start_and_end():
    url = f"https://example.org/{SAFE}/GRANULE/x/IMG_DATA/R20m/T33UUP_20230912T100031_B11_20m.tif"
    assert resolve_sources(JobRequest(url=url), [], [], 10**6).acquired == "2023-09-12T10:00:31Z"
    assert resolve_sources(JobRequest(url="https://example.org/flood.tif"), [], [], 10**6).acquired is None
    assert _when("2023-09-12T10:00:31Z", "2026-12-06T09:00:00Z") == {"datetime": "2023-09-12T10:00:31Z"}
    assert _when(None, "2026-12-06T09:00:00Z") == {"datetime": "2026-12-06T09:00:00Z"}
    assert _when("2022-01-11T00:00:00Z/2022-01-11T23:59:59Z", "2026-12-06T09:00:00Z") == {
        "datetime": None, "start_datetime": "2022-01-11T00:00:00Z", "end_datetime": "2022-01-11T23:59:59Z"}


def test_a_snap_export_sent_under_any_name_is_dated_by_its_header(snap_geotiff, tmp_path):
    """A SNAP GeoTIFF renamed by its user is dated by the start and stop its DIMAP header states (the stop rounded up
    to the second); a name that states the instant gives the instant, within the header's span."""
    path = tmp_path / "subset_flood.tif"
    path.write_bytes(snap_geotiff(np.ones((2, 8, 8), np.float32), ["Sigma0_VH", "Sigma0_VV"],
                                  sensed=("30-AUG-2024 17:00:00.123456", "30-AUG-2024 17:00:25.500000")))
    resolved = resolve_sources(JobRequest(), [("subset_flood.tif", path)], [], 10**6)
    assert resolved.acquired == "2024-08-30T17:00:00Z/2024-08-30T17:00:26Z"
    sensed = [(datetime(2024, 8, 30, 17, 0, tzinfo=UTC), datetime(2024, 8, 30, 17, 0, 25, tzinfo=UTC))]
    assert acquisition(["S1A_IW_GRDH_1SDV_20240830T170000_x_Cal_TC.tif"], sensed) == "2024-08-30T17:00:00Z"
    assert acquisition(["S1A_IW_GRDH_1SDV_20240901T170000_x_Cal_TC.tif"], sensed) is None  # they disagree
    later = [(start + timedelta(days=12), stop + timedelta(days=12)) for start, stop in sensed]
    assert acquisition([], sensed + sensed) == "2024-08-30T17:00:00Z/2024-08-30T17:00:25Z"  # one product's files
    assert acquisition([], sensed + later) is None  # two passes
    next_slice = [(start + timedelta(seconds=25), stop + timedelta(seconds=25)) for start, stop in sensed]
    assert acquisition([], sensed + next_slice) == "2024-08-30T17:00:00Z/2024-08-30T17:00:50Z"  # two slices, one pass


def test_a_zipped_beam_dimap_product_is_dated_by_its_dim(dimap_document, tmp_path):
    """SNAP's own format, zipped: the ``.dim`` beside the ENVI band files states the scene's start and stop."""
    sigma0 = np.full((1, 8, 8), 0.05, np.float32)
    dim = dimap_document(["Sigma0_VV"], sigma0, units=["intensity"], nodata=[0.0], scales=[(1.0, 0.0)], virtual={},
                         sensed=("05-JUL-2015 06:42:41.000000", "05-JUL-2015 06:43:06.000000"))
    band = tmp_path / "Sigma0_VV.img"
    with rasterio.open(band, "w", driver="ENVI", count=1, width=8, height=8, dtype="float32", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(sigma0)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("flood_Cal_TC.dim", dim)
        for f in (band, band.with_suffix(".hdr")):
            z.write(f, f"flood_Cal_TC.data/{f.name}")
    resolved = resolve_sources(JobRequest(), [("flood_Cal_TC.zip", archive)], [], 10**7)
    assert "Sigma0_VV.img" in [f.name for f in resolved.files]
    assert resolved.acquired == "2015-07-05T06:42:41Z/2015-07-05T06:43:06Z"


def _tagged_tif(path, **tags) -> None:
    with rasterio.open(path, "w", driver="GTiff", count=1, width=8, height=8, dtype="float32", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(np.full((1, 8, 8), 0.05, np.float32))
        dst.update_tags(**tags)


@pytest.mark.parametrize("tags, acquired", [
    # OPERA RTC-S1's burst GeoTIFFs (as its browse tools read them; the end may lack the Z)
    ({"ZERO_DOPPLER_START_TIME": "2023-10-19T12:15:02.123456Z", "ZERO_DOPPLER_END_TIME": "2023-10-19T12:15:05.2"},
     "2023-10-19T12:15:02Z/2023-10-19T12:15:06Z"),
    ({"SENSING_TIME": "2023-09-02T10:00:31.6374430Z"}, "2023-09-02T10:00:31Z"),  # HLS, 7 digits of fraction
    ({"SENSING_TIME": "2023-09-02T10:00:31.1Z; 2023-09-02T10:00:45.9Z"},  # a tile over two datatakes
     "2023-09-02T10:00:31Z/2023-09-02T10:00:46Z"),
    ({"PRODUCT_START_TIME": "2015-08-13T10:24:06.637Z", "PRODUCT_STOP_TIME": "2015-08-13T10:24:06.637Z"},
     "2015-08-13T10:24:06Z"),  # gdal_translate of a SAFE: GDAL's SENTINEL2 driver metadata
    ({"TIFFTAG_DATETIME": "2026:12:06 09:00:00"}, None),  # when the file was written, not sensed
    ({"SENSING_TIME": "unknown"}, None),
])
def test_a_renamed_file_is_dated_by_the_sensing_times_its_gdal_metadata_states(tags, acquired, tmp_path):
    """Files renamed by their users (``vv.tif``) lost the date their names gave, and the job's STAC Item was dated by
    the day it ran; OPERA, HLS and GDAL's Sentinel-2 driver state the sensing times in GDAL metadata."""
    path = tmp_path / "vv.tif"
    _tagged_tif(path, **tags)
    assert resolve_sources(JobRequest(), [("vv.tif", path)], [], 10**6).acquired == acquired


@pytest.mark.parametrize("images, acquired", [
    (["20230912T100031_20230912T100345_T33UUP"], "2023-09-12T10:00:31Z"),
    (["1_LC09_044034_20220111"], "2022-01-11T00:00:00Z/2022-01-11T23:59:59Z"),  # a merged collection's, the day
    (["S1A_IW_GRDH_1SDV_20150705T064241_20150705T064306_006672_008EB8_7E3C"], "2015-07-05T06:42:41Z"),
    (["20230912T100031_20230912T100345_T33UUP", "20230917T100029_20230917T100347_T33UUP"], None),  # a time series
])
def test_an_earth_engine_export_of_a_collection_of_one_image_is_dated_by_its_band_names(images, acquired, tmp_path):
    """``toBands()`` names every band after its image (``<id>_B4``): the id dates a file exported under any name."""
    path = tmp_path / "export.tif"
    with rasterio.open(path, "w", driver="GTiff", count=len(images), width=8, height=8, dtype="uint16",
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(np.full((len(images), 8, 8), 500, np.uint16))
        dst.descriptions = tuple(f"{image}_{'VV' if image.startswith('S1') else 'B4'}" for image in images)
    assert resolve_sources(JobRequest(), [("export.tif", path)], [], 10**6).acquired == acquired


def test_a_file_by_url_is_dated_by_its_gdal_metadata_when_its_url_says_nothing(range_server):
    """Read by ranges through GDAL, bounded, and only where the URL gives no date."""
    _tagged_tif(range_server.root / "burst_vv.tif", ZERO_DOPPLER_START_TIME="2023-10-19T12:15:02.5Z",
                ZERO_DOPPLER_END_TIME="2023-10-19T12:15:05.5Z")
    url = f"{range_server.url}/burst_vv.tif"
    assert resolve_sources(JobRequest(url=url), [], [], 10**6).acquired == "2023-10-19T12:15:02Z/2023-10-19T12:15:06Z"
    name = "OPERA_L2_RTC-S1_T069-147170-IW1_20231019T121502Z_20231020T091509Z_S1A_30_v1.0_VV.tif"
    _tagged_tif(range_server.root / name, ZERO_DOPPLER_START_TIME="2023-10-31T12:15:02.5Z")  # a day it cannot be
    assert resolve_sources(JobRequest(url=f"{range_server.url}/{name}"), [], [], 10**6).acquired == \
        "2023-10-19T12:15:02Z"  # its name dates it: its metadata is not read (read, the two would disagree: none)

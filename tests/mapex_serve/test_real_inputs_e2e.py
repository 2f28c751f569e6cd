"""Real inputs end to end through a real server: units, several files, containers, the report and its errors."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from training.data import SceneConfig, generate_scene, mosaic

DATA = Path(__file__).parents[1] / "data"
S2 = DATA / "sentinel2_6band_10m_epsg32719.tif"
BIGEARTHNET = Path(__file__).parents[3] / "shared" / "data" / "real" / "bigearthnet"


def post(server, task: str, files: list[tuple[str, bytes]], **params) -> httpx.Response:
    r = httpx.post(f"{server.url}/predict/{task}", files=[("file", f) for f in files], params=params, timeout=60)
    return server.checked(r)  # a GeoTIFF answer must be a valid COG


def tiff(bands: np.ndarray, descriptions, like: dict) -> bytes:
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=len(bands), height=bands.shape[1], width=bands.shape[2],
                      dtype=bands.dtype, **like) as dst:
            dst.write(bands)
            for i, d in enumerate(descriptions, start=1):
                if d:
                    dst.set_band_description(i, d)
        return mem.read()


@pytest.fixture(scope="module")
def flood_scene() -> tuple[np.ndarray, dict]:
    """A 96 x 96 mosaic of nine flooded SAR scenes (the flood head's training distribution), VV and VH in dB."""
    scenes = [generate_scene(np.random.default_rng(seed), SceneConfig(size=32, flood_prob=1.0)) for seed in range(9)]
    big = mosaic(scenes, columns=3)
    db = np.stack([big.bands["VV"], big.bands["VH"]]).astype(np.float32)
    return db, {"crs": "EPSG:32633", "transform": rasterio.transform.from_origin(500000, 5000000, 10, 10)}


def mask_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    with MemoryFile(response.content) as mem, mem.open() as out:
        return out.read(1)  # post() has validated it as a COG


def test_snap_linear_and_db_give_the_same_flood_mask(server, flood_scene):
    db, like = flood_scene
    in_db = post(server, "flood", [("S1_Sigma0_db.tif", tiff(db, ["Sigma0_VV_db", "Sigma0_VH_db"], like))])
    linear = (10 ** (db / 10)).astype(np.float32)
    in_linear = post(server, "flood", [("S1_Sigma0.tif", tiff(linear, ["Sigma0_VV", "Sigma0_VH"], like))])
    agreement = (mask_of(in_db) == mask_of(in_linear)).mean()
    print(f"SNAP linear vs dB: {agreement:.4f} of pixels agree")
    assert agreement >= 0.99
    inputs = json.loads(in_linear.headers["x-mapex-inputs"])
    assert inputs[0]["found"] == "Sigma0_VV" and inputs[0]["band"] == "VV" and "SNAP band name" in inputs[0]["rule"]
    assert any("10·log10" in c for c in inputs[0]["conversions"])


def test_a_snap_geotiff_export_is_served_as_the_same_bands_described_in_gdal_metadata(server, flood_scene, snap_geotiff):
    """SNAP names, scales and gives no-data to its GeoTIFF's bands only in its DIMAP header (tag 65000): VH first,
    linear power, 0 outside the swath."""
    db, like = flood_scene
    linear = (10 ** (db / 10)).astype(np.float32)
    linear[:, :, :16] = 0  # outside the swath
    exported = snap_geotiff(linear[::-1].copy(), ["Sigma0_VH", "Sigma0_VV"], units=["intensity"] * 2, nodata=[0.0] * 2)
    described = tiff(linear, ["Sigma0_VV", "Sigma0_VH"], {**like, "nodata": 0.0})
    from_snap = post(server, "flood", [("S1A_IW_GRDH_Cal_TC.tif", exported)])
    assert np.array_equal(mask_of(from_snap), mask_of(post(server, "flood", [("s1.tif", described)])))
    inputs = json.loads(from_snap.headers["x-mapex-inputs"])
    assert [(i["found"], i["band"]) for i in inputs] == [("Sigma0_VH", "VH"), ("Sigma0_VV", "VV")]
    assert all("SNAP's DIMAP header" in i["rule"] for i in inputs)


def test_linear_sar_with_plain_names_is_422_naming_units_linear_and_then_served(server, flood_scene):
    db, like = flood_scene
    data = tiff((10 ** (db / 10)).astype(np.float32), ["VV", "VH"], like)
    refused = post(server, "flood", [("s1.tif", data)])
    assert refused.status_code == 422 and refused.json()["error"] == "ImplausibleValuesError"
    assert "units=linear" in refused.json()["detail"] and "stored float32" in refused.json()["detail"]
    stated = post(server, "flood", [("s1.tif", data)], units="linear")
    served_db = post(server, "flood", [("s1.tif", tiff(db, ["VV", "VH"], like))])
    assert (mask_of(stated) == mask_of(served_db)).mean() >= 0.99


def test_vv_and_vh_as_two_files_give_the_same_answer_as_one_stacked_file(server, flood_scene):
    db, like = flood_scene
    stacked = post(server, "flood", [("s1.tif", tiff(db, ["VV", "VH"], like))], format="json")
    separate = post(server, "flood", [("S1A_IW_GRDH_1SDV_x_VH.tif", tiff(db[1:], [None], like)),
                                      ("S1A_IW_GRDH_1SDV_x_VV.tif", tiff(db[:1], [None], like))], format="json")
    assert stacked.status_code == separate.status_code == 200, separate.text
    assert stacked.json()["classes"] == separate.json()["classes"]
    rules = {i["mapped_to"]: i["rule"] for i in separate.json()["inputs"]}
    assert "file name" in rules["VV"] and "file name" in rules["VH"]


def s2_rgb_and_20m_swir() -> list[tuple[str, bytes]]:
    """The real Sentinel-2 crop cut the way L2A ships it: RGB at 10 m, SWIR averaged to its native 20 m."""
    with rasterio.open(S2) as src:
        rgb = src.read([3, 2, 1])
        h, w = src.height // 2, src.width // 2
        swir = src.read([5, 6], out_shape=(2, h, w), resampling=Resampling.average)
        like = {"crs": src.crs, "transform": src.transform}
        coarse = {"crs": src.crs, "transform": src.transform * src.transform.scale(src.width / w, src.height / h)}
    return [("T19_B04_B03_B02_10m.tif", tiff(rgb, ["B04", "B03", "B02"], like)),
            ("T19_B11_B12_20m.tif", tiff(swir, ["B11", "B12"], coarse))]


def test_10m_rgb_and_20m_swir_files_route_to_the_rgb_swir_specialist(server):
    r = post(server, "wildfire", s2_rgb_and_20m_swir())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["specialist"] == "wildfire-rgb+swir" and r.headers["x-mapex-specialist"] == "wildfire-rgb+swir"
    assert body["grid"]["pixel_size"] == [10.0, 10.0] and body["grid"]["resampled"] == ["T19_B11_B12_20m.tif"]
    assert body["grid"]["crs"] == "EPSG:32719"
    swir_only = post(server, "wildfire", s2_rgb_and_20m_swir()[1:])
    assert swir_only.json()["specialist"] == "wildfire-swir"


@pytest.mark.skipif(not BIGEARTHNET.is_dir(), reason="../shared/data/real/bigearthnet is absent (a user's fresh clone)")
def test_real_bigearthnet_band_files_at_10_and_20_m(server):
    """BigEarthNet v1: one uint16 file per band, the band in the file name, 10 m and 20 m grids."""
    patch = BIGEARTHNET / "S2" / "S2B_MSIL2A_20170924T093019_43_47"
    files = [(p.name, p.read_bytes()) for b in ("B02", "B03", "B04", "B11", "B12")
             for p in patch.glob(f"*_{b}.tif")]
    r = post(server, "wildfire", files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["specialist"] == "wildfire-rgb+swir" and body["grid"]["width"] == 120
    assert {i["mapped_to"] for i in body["inputs"]} == {"B02", "B03", "B04", "B11", "B12"}


def test_a_level_1c_file_is_refused_by_the_specialists_of_surface_reflectance_unless_run_as_is(server, to_geotiff):
    """The demo specialists learned Level-2A: a GeoTIFF gdal_translate wrote from a Level-1C SAFE says it is one."""
    values = np.random.default_rng(1).integers(500, 3000, (2, 64, 64)).astype(np.uint16)
    l1c = to_geotiff(values, ["B11", "B12"], tags={"PROCESSING_LEVEL": "Level-1C", "PRODUCT_TYPE": "S2MSI1C"})
    refused = post(server, "wildfire", [("S2_L1C_swir.tif", l1c)])
    assert refused.status_code == 422 and refused.json()["error"] == "ReflectanceLevelError", refused.text
    assert "wildfire-swir learned surface reflectance (Level-2A)" in refused.json()["detail"]
    assert post(server, "wildfire", [("S2_L1C_swir.tif", l1c)], reflectance="as-is").status_code == 200


def test_a_bbox_answers_for_the_part_of_a_real_scene_inside_it_and_a_bbox_off_it_is_a_422(server):
    """The real Sentinel-2 crop (3 x 2 km, UTM 19S) asked for a box of about 1 x 0.8 km in degrees: the mask covers
    the box on the scene's pixel lines, as the same pixels cut out and sent alone are answered."""
    box = transform_bounds("EPSG:32719", "EPSG:4326", 600_733, 4_698_517, 601_761, 4_699_309)
    whole = post(server, "landcover", [(S2.name, S2.read_bytes())], format="json")
    r = post(server, "landcover", [(S2.name, S2.read_bytes())], bbox=",".join(map(str, box)), format="json")
    assert whole.status_code == r.status_code == 200, r.text
    grid, scene = r.json()["grid"], whole.json()["grid"]
    assert grid["crs"] == "EPSG:32719" and grid["pixel_size"] == [10.0, 10.0]
    # The box's edges, densified, bulge past its UTM corners: 107 x 84 pixels from column 71, row 69.
    assert (grid["width"], grid["height"]) == (107, 84) and (scene["width"], scene["height"]) == (300, 200)
    window = Window(71, 69, 107, 84)
    with rasterio.open(S2) as src:
        like = {"crs": src.crs, "transform": window_transform(window, src.transform)}
        alone = post(server, "landcover", [("cut.tif", tiff(src.read(window=window), src.descriptions, like))],
                     format="json")
    answer = {k: v for k, v in r.json().items() if k not in ("inputs", "inputs_used")}
    assert answer == {k: v for k, v in alone.json().items() if k not in ("inputs", "inputs_used")}
    off = httpx.post(f"{server.url}/predict/landcover", files=[("file", (S2.name, S2.read_bytes()))],
                     params={"bbox": "10,45,10.1,45.1"}, timeout=60)
    assert off.status_code == 422 and off.json()["error"] == "BboxError", off.text
    assert "does not overlap the scene, which covers -67.66" in off.json()["detail"]


def test_an_aoi_polygon_answers_its_inside_and_masks_its_outside_as_no_data(server):
    """A GeoJSON triangle over the real crop (WGS84, as a disaster team's AOI file holds it): the answer covers the
    box around it, and the mask's pixels outside it are no data (255), counted under their reason."""
    triangle = {"type": "Polygon", "coordinates": [[[-67.66, -47.86], [-67.645, -47.86], [-67.66, -47.848],
                                                    [-67.66, -47.86]]]}
    files = [(S2.name, S2.read_bytes())]
    r = post(server, "landcover-seg", files, aoi=json.dumps(triangle), format="json")
    assert r.status_code == 200, r.text
    masked, valid = r.json()["masked_pixels"], r.json()["valid_pixels"]
    total = r.json()["grid"]["width"] * r.json()["grid"]["height"]
    assert masked == {"total": total - valid, "by_reason": {"outside the area of interest (aoi=)": total - valid}}
    assert 0.4 < valid / total < 0.6  # a triangle fills half its box
    labels = post(server, "landcover-seg", files, aoi=json.dumps(triangle))
    with rasterio.MemoryFile(labels.content) as mem, mem.open() as ds:
        mask = ds.read(1)
        assert ds.nodata == 255 and (mask == 255).sum() == total - valid and mask.shape == (ds.height, ds.width)
    point = post(server, "landcover-seg", files, aoi='{"type": "Point", "coordinates": [-67.65, -47.85]}')
    assert point.status_code == 422 and point.json()["error"] == "AoiError", point.text


def test_an_aoi_polygon_too_long_for_a_url_is_sent_as_a_multipart_field(server):
    """A basin's outline of 5,000 vertices is about 180 KB of GeoJSON: no URL holds it (httpx refuses one over 64
    KiB), and until the body's option fields were read it could not be sent at all. As ``-F aoi=@basin.geojson``
    (before or after the scene) it masks the scene as the query's would."""
    angles = np.linspace(0, 2 * np.pi, 5000)
    ring = [[-67.6525 + 0.0075 * np.cos(a), -47.854 + 0.005 * np.sin(a)] for a in angles]
    basin = json.dumps({"type": "Feature", "properties": {"name": "basin"},
                        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}}).encode()
    assert len(basin) > 150_000
    with pytest.raises(httpx.InvalidURL):
        post(server, "landcover-seg", [(S2.name, S2.read_bytes())], aoi=basin.decode())
    for parts in ([("aoi", ("basin.geojson", basin)), ("file", (S2.name, S2.read_bytes()))],
                  [("file", (S2.name, S2.read_bytes())), ("aoi", ("basin.geojson", basin))]):
        r = httpx.post(f"{server.url}/predict/landcover-seg", files=parts, params={"format": "json"}, timeout=60)
        assert r.status_code == 200, r.text[:300]
        valid, total = r.json()["valid_pixels"], r.json()["grid"]["width"] * r.json()["grid"]["height"]
        assert 0.7 < valid / total < 0.85  # an ellipse fills pi/4 of its box
        assert r.json()["masked_pixels"]["by_reason"] == {"outside the area of interest (aoi=)": total - valid}


def test_8bit_rgb_is_422_with_the_fix(server):
    with rasterio.open(DATA / "rmnp-rgb.tif") as src:
        assert src.dtypes[0] == "uint8"
    r = httpx.post(f"{server.url}/predict/landcover", content=(DATA / "rmnp-rgb.tif").read_bytes(),
                   headers={"Content-Type": "image/tiff"}, params={"bands": "red,green,blue"}, timeout=60)
    assert r.status_code == 422 and "8-bit values" in r.json()["detail"] and "scale=" in r.json()["detail"]


def test_masked_pixels_are_reported_and_excluded(server, flood_scene):
    db, like = flood_scene
    """Sentinel Hub's S1 GRD evalscripts return ``dataMask`` beside VV and VH (0 where there is no data)."""
    data_mask = np.ones((1, *db.shape[1:]), np.float32)
    data_mask[0, :10] = 0  # the top 10 rows: 960 pixels
    data = tiff(np.concatenate([db, data_mask]), ["VV", "VH", "dataMask"], like)
    body = post(server, "flood", [("s1_with_scl.tif", data)], format="json").json()
    assert body["masked_pixels"] == {"total": 960, "by_reason": {"dataMask no data": 960}}
    assert body["valid_pixels"] == 96 * 96 - 960
    mask = mask_of(post(server, "flood", [("s1_with_scl.tif", data)]))
    assert (mask[:10] == 255).all() and (mask[10:] != 255).all()


def test_a_cloud_score_plus_band_masks_its_clouds_at_the_cut_asked_for(server):
    """Real Sentinel-2 bands downloaded from Earth Engine with Cloud Score+ linked (``cs_cdf``, 1 clear): the pixels
    below Google's 0.60 are masked and counted, ``mask_threshold=`` moves the cut, and a cut that cannot apply is a
    422 naming the layers."""
    with rasterio.open(S2) as src:
        like = {"crs": src.crs, "transform": src.transform}
        files = [(f"download.{b}.tif", tiff(src.read([i]), [None], like)) for b, i in (("B4", 3), ("B3", 2), ("B2", 1))]
        cs_cdf = np.full((1, src.height, src.width), 0.95, np.float32)
    cs_cdf[0, :10], cs_cdf[0, 10:20] = 0.3, 0.55  # a cloud over 10 rows, haze over the next 10
    files.append(("download.cs_cdf.tif", tiff(cs_cdf, [None], like)))
    width = cs_cdf.shape[2]
    body = post(server, "landcover", files, format="json").json()
    assert body["masked_pixels"] == {"total": 20 * width, "by_reason": {"Cloud Score+ clear likelihood below 0.6":
                                                                         20 * width}}, body
    assert [i["masks"] for i in body["inputs"] if "masks" in i] == ["masked below 0.6 (Google's Cloud Score+ examples)"]
    body = post(server, "landcover", files, format="json", mask_threshold="0.5").json()
    assert body["masked_pixels"]["by_reason"] == {"Cloud Score+ clear likelihood below 0.5": 10 * width}
    assert [i["masks"] for i in body["inputs"] if "masks" in i] == ["masked below 0.5 (the request's mask_threshold)"]
    refused = post(server, "landcover", files, mask_threshold="CLP:80")
    assert refused.status_code == 422 and "names CLP, which the request does not read; it reads CS_CDF" in \
        refused.json()["detail"], refused.text


def test_planetary_computer_rtc_assets_and_a_hyp3_layover_shadow_map_through_the_server(server, flood_scene):
    """The Planetary Computer's ``iw-vv.rtc.tiff`` holds linear gamma0, said by its name alone: the demo's flood
    specialist learned sigma0 and refuses it, and with ``backscatter=as-is`` answers as the same values described in
    dB; a HyP3 product's ``_ls_map.tif`` masks its layover and shadow rows, each counted by reason."""
    db, like = flood_scene
    linear = (10 ** (db / 10)).astype(np.float32)
    described = mask_of(post(server, "flood", [("s1.tif", tiff(db, ["VV", "VH"], like))]))
    assets = [("iw-vv.rtc.tiff", tiff(linear[:1], [None], like)), ("iw-vh.rtc.tiff", tiff(linear[1:], [None], like))]
    refused = post(server, "flood", assets)
    assert refused.status_code == 422 and refused.json()["error"] == "BackscatterError", refused.text
    assert refused.json()["detail"].startswith("iw-vv.rtc.tiff holds gamma0, by its Planetary Computer sentinel-1-rtc "
                                               "file name (gamma0, linear power), and flood-sar learned sigma0")
    assert (mask_of(post(server, "flood", assets, backscatter="as-is")) == described).mean() >= 0.99
    product = "S1A_IW_20230914T052201_DVP_RTC10_G_gpuned_8C2F"
    ls_map = np.ones((1, *db.shape[1:]), np.uint8)
    ls_map[0, :4], ls_map[0, 4:6] = 5, 17  # 4 rows of layover, 2 of shadow
    files = [(f"{product}_VV.tif", tiff(linear[:1], [None], like)), (f"{product}_VH.tif", tiff(linear[1:], [None], like)),
             (f"{product}_ls_map.tif", tiff(ls_map, [None], like))]
    body = post(server, "flood", files, format="json", backscatter="as-is").json()
    assert body["masked_pixels"]["by_reason"] == {"HyP3 RTC layover": 4 * 96, "HyP3 RTC radar shadow": 2 * 96}
    mask = mask_of(post(server, "flood", files, backscatter="as-is"))
    assert (mask[:6] == 255).all() and (mask[6:] == described[6:]).mean() >= 0.99


def test_opera_gamma0_with_its_static_gamma0_to_sigma0_factor_is_answered_as_the_sigma0_it_makes(server, flood_scene):
    """OPERA RTC-S1's VV and VH (gamma0, linear power) are refused by the demo's flood specialist, which learned
    sigma0; sent with the burst's ``rtc_anf_gamma0_to_sigma0`` from RTC-S1-STATIC they are answered as the sigma0
    they make, as the same sigma0 described in dB is."""
    db, like = flood_scene  # sigma0 in dB
    factor = np.full(db.shape[1:], 0.7, np.float32)
    factor[:, 48:] = 0.8  # a slope facing away: less normalised
    gamma0 = (10 ** (db / 10) / factor).astype(np.float32)  # what OPERA's terrain flattening would have given
    burst = "OPERA_L2_RTC-S1_T069-147170-IW1_20231010T121227Z_20231010T163008Z_S1A_30_v1.0"
    static = "OPERA_L2_RTC-S1-STATIC_T069-147170-IW1_20140403_S1A_30_v1.0_rtc_anf_gamma0_to_sigma0.tif"
    files = [(f"{burst}_VV.tif", tiff(gamma0[:1], [None], like)), (f"{burst}_VH.tif", tiff(gamma0[1:], [None], like))]
    refused = post(server, "flood", files)
    assert refused.status_code == 422 and "rtc_anf_gamma0_to_sigma0.tif (RTC-S1-STATIC)" in refused.json()["detail"]
    files.append((static, tiff(factor[None], [None], like)))
    sigma0 = mask_of(post(server, "flood", files))
    assert (sigma0 == mask_of(post(server, "flood", [("s1.tif", tiff(db, ["VV", "VH"], like))]))).mean() >= 0.999
    body = post(server, "flood", files, format="json").json()
    assert [i["mapped_to"] for i in body["inputs"] if i["used"]] == ["VV", "VH", "gamma0 to sigma0 factor"]


def test_netcdf_and_a_hostile_vrt_through_the_server(server, tmp_path):
    netCDF4 = pytest.importorskip("netCDF4")
    path = tmp_path / "product.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("y", 64)
        ds.createDimension("x", 64)
        for name in ("B11", "B12", "cloud_probability"):
            v = ds.createVariable(name, "u2", ("y", "x"))
            v[:] = np.random.default_rng(0).integers(500, 3000, (64, 64))
    r = post(server, "wildfire", [("product.nc", path.read_bytes())])
    assert r.status_code == 200 and r.json()["specialist"] == "wildfire-swir", r.text
    assert r.json()["ignored_subdatasets"] == ["product.nc:cloud_probability"]
    evil = b"""<VRTDataset rasterXSize="8" rasterYSize="8"><VRTRasterBand dataType="Byte" band="1">
      <Description>B11</Description><SimpleSource><SourceFilename>/etc/passwd</SourceFilename></SimpleSource>
      </VRTRasterBand></VRTDataset>"""
    r = post(server, "wildfire", [("evil.vrt", evil)])
    assert r.status_code == 400 and r.json()["error"] == "ForbiddenReferenceError" and "/etc/passwd" in r.json()["detail"]


def test_an_earth_engine_zip_is_served_as_its_band_files_sent_as_parts(server):
    """getDownloadURL's default download (a ZIP of ``download.<band>.tif``, one GeoTIFF a band), posted as a file
    part and as a raw ``application/zip`` body: the answer of the band files sent as parts, and the report says
    what the archive held; an archive of no raster is a 400 that names its files."""
    import io
    import zipfile

    with rasterio.open(S2) as src:
        like = {"crs": src.crs, "transform": src.transform}
        bands = {f"download.{b}.tif": tiff(src.read([i]), [None], like)
                 for b, i in (("B4", 3), ("B3", 2), ("B2", 1), ("B11", 5), ("B12", 6))}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in bands.items():
            z.writestr(name, data)
    parts = post(server, "wildfire", list(bands.items()), format="json")
    as_part = post(server, "wildfire", [("download.zip", out.getvalue())], format="json")
    raw = httpx.post(f"{server.url}/predict/wildfire", content=out.getvalue(), params={"format": "json"},
                     headers={"content-type": "application/zip"}, timeout=60)
    assert parts.status_code == as_part.status_code == raw.status_code == 200, (as_part.text, raw.text)
    assert as_part.json()["specialist"] == "wildfire-rgb+swir"
    for r, name in ((as_part, "download.zip"), (raw, "upload.zip")):  # a raw body is named by its type
        body = r.json()
        assert body.pop("archives") == [{"name": name, "kind": "ZIP archive", "read": list(bands), "skipped": []}]
        assert body == parts.json()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("manifest.json", b"{}")
    empty = post(server, "wildfire", [("download.zip", out.getvalue())])
    assert empty.status_code == 400 and empty.json()["error"] == "UnreadableArchiveError"
    assert "no raster file in it (it holds manifest.json)" in empty.json()["detail"]


def test_a_theia_zip_is_served_as_its_flat_reflectance_described_with_its_clouds_masked(server):
    """Real Sentinel-2 reflectance laid out as THEIA's MAJA L2A zip: FRE and SRE files a band (int16 reflectance x
    10000, -10000 outside the image), cloud masks at 10 and 20 m, aerosols and metadata. The answer equals the same
    bands described in GDAL metadata, with the 20 m cloud mask's clouds masked."""
    import io
    import zipfile

    with rasterio.open(S2) as src:
        stack = src.read([3, 2, 1, 5, 6]).astype(np.int16)  # B04, B03, B02, B11, B12
        like = {"crs": src.crs, "transform": src.transform, "nodata": -10000}
    stack[stack == 0] = -10000
    stack[:, :, :10] = -10000  # the image's edge
    height, width = stack.shape[1:]
    clm = np.zeros((height // 2, width // 2), np.uint8)
    clm[:10, 5:] = 1 | 2 | 32  # clouds and their shadows over the top 20 rows, right of the edge
    plain = {"crs": like["crs"], "transform": like["transform"]}  # the masks declare no no-data
    coarse = {**plain, "transform": like["transform"] * like["transform"].scale(2)}
    theia = "SENTINEL2A_20230716-144900-101_L2A_T19HCB_C_V3-1"
    names = ("B4", "B3", "B2", "B11", "B12")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i, b in enumerate(names):
            z.writestr(f"{theia}/{theia}_FRE_{b}.tif", tiff(stack[i:i + 1], [None], like))
            z.writestr(f"{theia}/{theia}_SRE_{b}.tif", tiff(stack[i:i + 1] // 2, [None], like))
        z.writestr(f"{theia}/MASKS/{theia}_CLM_R1.tif", tiff(np.ones((1, height, width), np.uint8), [None], plain))
        z.writestr(f"{theia}/MASKS/{theia}_CLM_R2.tif", tiff(clm[None], [None], coarse))
        z.writestr(f"{theia}/{theia}_ATB_R1.tif", tiff(np.ones((2, height, width), np.uint8), [None, None], plain))
        z.writestr(f"{theia}/{theia}_MTD_ALL.xml", b"<Muscate_Metadata_Document/>")
    product = [(f"{theia}.zip", out.getvalue())]
    r = post(server, "landcover-seg", product, format="json")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["specialist"] == "landcover-seg-rgb"
    masked = body["masked_pixels"]["by_reason"]
    assert masked["THEIA CLM cloud or cloud shadow"] == 20 * (width - 10)
    assert masked["nodata, mask or alpha band"] == int((stack[:3] == -10000).any(axis=0).sum())  # RGB is read
    described = [("s2.tif", tiff(stack, ["B04", "B03", "B02", "B11", "B12"], like))]
    ours, theirs = mask_of(post(server, "landcover-seg", product)), mask_of(post(server, "landcover-seg", described))
    assert (ours[:20, 10:] == 255).all()
    np.testing.assert_array_equal(ours[84:], theirs[84:])  # past the tiles that reach the clouds, the same answer


def test_a_planet_surface_reflectance_file_and_its_udm2_are_served_as_the_same_bands_described(server):
    """Real Sentinel-2 reflectance laid out as Planet delivers a 4-band surface reflectance asset: no band names, the
    asset in the file name, and its UDM2 beside it. The answer equals the same bands described in GDAL metadata,
    with the UDM2's cloud masked; the radiance asset of the same item gets a 422 naming the asset to order."""
    with rasterio.open(S2) as src:
        bands = src.read([1, 2, 3, 4])  # B02, B03, B04, and B07 standing in for PlanetScope's near infrared
        like = {"crs": src.crs, "transform": src.transform, "nodata": 0}
    udm2 = np.zeros((8, *bands.shape[1:]), np.uint8)
    udm2[0], udm2[5, :20], udm2[0, :20] = 1, 1, 0  # the top 20 rows cloud
    item = "20230912_175450_00_2439_3B"
    planet = [(f"{item}_AnalyticMS_SR_clip.tif", tiff(bands, [None] * 4, like)),
              (f"{item}_udm2_clip.tif", tiff(udm2, [None] * 8, {k: like[k] for k in ("crs", "transform")}))]
    described = [("s2.tif", tiff(bands, ["B02", "B03", "B04", "B08"], like))]
    r = post(server, "landcover-seg", planet, format="json")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["masked_pixels"] == {"total": 20 * bands.shape[2], "by_reason": {"UDM2 cloud": 20 * bands.shape[2]}}
    assert {i["mapped_to"] for i in body["inputs"] if i["used"]} >= {"B02", "B03", "B04", "quality layer UDM2_CLOUD"}
    ours, theirs = mask_of(post(server, "landcover-seg", planet)), mask_of(post(server, "landcover-seg", described))
    assert (ours[:20] == 255).all()
    # The tiles that reach the masked rows (32 px, blended over their overlap) see them filled, not the clouds'
    # values, and may answer a few pixels otherwise; past them the answers are the same.
    assert (ours[20:84] == theirs[20:84]).mean() >= 0.99
    np.testing.assert_array_equal(ours[84:], theirs[84:])
    radiance = post(server, "landcover-seg", [(f"{item}_AnalyticMS_clip.tif", tiff(bands, [None] * 4, like))])
    assert radiance.status_code == 422 and "ortho_analytic_4b_sr" in radiance.json()["detail"]


def test_the_tiles_of_a_split_earth_engine_export_answer_as_the_whole_export(server):
    """Real Sentinel-2 reflectance exported as Earth Engine splits a large image: four files without band names,
    named by their offsets, sent as the parts of one request (read where they arrived, as every TIFF is)."""
    with rasterio.open(S2) as src:
        bands, transform, crs = src.read([3, 2, 1]), src.transform, src.crs
    parts = []
    for r0, r1 in ((0, 128), (128, 200)):
        for c0, c1 in ((0, 160), (160, 300)):
            like = {"crs": crs, "transform": transform * transform.translation(c0, r0), "nodata": 0}
            parts.append((f"flood_export-{r0:010d}-{c0:010d}.tif", tiff(bands[:, r0:r1, c0:c1], [None] * 3, like)))
    whole = [("flood_export.tif", tiff(bands, [None] * 3, {"crs": crs, "transform": transform, "nodata": 0}))]
    r = post(server, "landcover-seg", parts, format="json", bands="B04,B03,B02")
    assert r.status_code == 200, r.text
    assert r.json()["grid"]["mosaicked"] == [name for name, _ in parts]
    assert (r.json()["grid"]["width"], r.json()["grid"]["height"]) == (300, 200)
    tiled = mask_of(post(server, "landcover-seg", parts, bands="B04,B03,B02"))
    np.testing.assert_array_equal(tiled, mask_of(post(server, "landcover-seg", whole, bands="B04,B03,B02")))
    skipped = post(server, "landcover-seg", parts[:3], format="json", bands="B04,B03,B02")  # skipEmptyTiles
    assert skipped.status_code == 200, skipped.text
    assert skipped.json()["masked_pixels"] == {"total": 72 * 140, "by_reason": {"nodata, mask or alpha band": 72 * 140}}


def test_a_scene_of_another_pixel_size_than_the_model_learned_is_refused_resampled_or_read_as_asked(
        built_repo, start_server, tmp_path, flood_scene):
    """A flood model that records its 10 m pixels, sent the same scene stated at 30 m (what HLS or a 30 m RTC
    is): refused with both ways round, read as it is with pixel_size=native (the same mask as the 10 m file, whose
    pixels it is), resampled onto 10 m pixels over the same ground with pixel_size=model; a job likewise."""
    repo = tmp_path / "repo"
    shutil.copytree(built_repo / "flood-sar", repo / "flood-sar")
    path = next((repo / "flood-sar").glob("*/manifest.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()), "pixel_size_m": 10.0}))
    s = start_server(repo, MAPEX_JOBS_DIR=str(tmp_path / "jobs"))
    db, like = flood_scene
    at_10 = tiff(db, ["VV", "VH"], like)
    at_30 = tiff(db, ["VV", "VH"], {**like, "transform": rasterio.transform.from_origin(500000, 5000000, 30, 30)})

    refused = post(s, "flood", [("s1.tif", at_30)])
    assert refused.status_code == 422 and refused.json()["error"] == "PixelSizeError", refused.text
    assert "30 m on the ground" in refused.json()["detail"] and "288 x 288 pixels" in refused.json()["detail"]
    native = post(s, "flood", [("s1.tif", at_30)], pixel_size="native")
    assert np.array_equal(mask_of(native), mask_of(post(s, "flood", [("s1.tif", at_10)])))
    resampled = post(s, "flood", [("s1.tif", at_30)], pixel_size="model")
    with MemoryFile(resampled.content) as mem, mem.open() as out:
        assert (out.width, out.height, out.res) == (288, 288, (10.0, 10.0))
        assert out.bounds == (500000, 5000000 - 96 * 30, 500000 + 96 * 30, 5000000)
    report = post(s, "flood", [("s1.tif", at_30)], pixel_size="model", format="json").json()["grid"]
    assert report["ground_pixel_size"]["model_m"] == 10.0 and report["resampled"] == ["s1.tif"]
    assert report["ground_pixel_size"]["scene_m"] == pytest.approx([30.0, 30.0], rel=1e-3)

    job = httpx.post(f"{s.url}/jobs/flood", files={"file": ("s1.tif", at_30)}, timeout=60)
    assert job.status_code == 422 and job.json()["error"] == "PixelSizeError", job.text
    job = httpx.post(f"{s.url}/jobs/flood", files={"file": ("s1.tif", at_30)}, params={"pixel_size": "model"},
                     timeout=60)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 120
    while (status := httpx.get(f"{s.url}/jobs/{job.json()['id']}", timeout=10).json())["state"] not in (
            "done", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["state"] == "done", status
    summary = httpx.get(f"{s.url}/jobs/{status['id']}/result", params={"format": "json"}, timeout=60).json()
    assert (summary["grid"]["width"], summary["grid"]["height"]) == (288, 288)
    assert summary["valid_pixels"] == 288 * 288

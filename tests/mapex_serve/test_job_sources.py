"""Where a job's scene comes from: URLs mapped to GDAL's virtual file systems, STAC items read as their
catalogues write them (Earth Search's Sentinel-2 L2A, STAC 1.1 bands), the catalogue's scale, offset and
nodata applied to the values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from mapex_serve.inputs import GridMismatchError, SourceFile
from mapex_serve.jobs.models import JobRequest
from mapex_serve.jobs.scene import opened_scene
from mapex_serve.jobs.sources import (
    JobSourceError,
    ResolvedSources,
    gdal_path,
    one_acquisition,
    resolve_stac,
    resolve_urls,
)


def test_urls_map_to_gdal_virtual_file_systems_and_nothing_else_is_read():
    assert gdal_path("https://sentinel-cogs.s3.us-west-2.amazonaws.com/a/B04.tif") == \
        "/vsicurl/https://sentinel-cogs.s3.us-west-2.amazonaws.com/a/B04.tif"
    assert gdal_path("s3://my-bucket/S1/vv.tif") == "/vsis3/my-bucket/S1/vv.tif"
    assert gdal_path("gs://my-bucket/ee/export.tif") == "/vsigs/my-bucket/ee/export.tif"
    for bad in ("file:///etc/passwd", "/etc/passwd", "/vsicurl/http://x/y.tif", "ftp://x/y.tif", "s3:///nokey",
                "gs:///nokey", "az://c/k.tif"):
        with pytest.raises(JobSourceError, match="http"):
            gdal_path(bad)
    with pytest.raises(JobSourceError, match="MAPEX_JOB_URL_PREFIXES"):
        gdal_path("https://elsewhere.org/x.tif", ["s3://mine/", "https://mine.org/"])
    assert gdal_path("s3://mine/x.tif", ["s3://mine/"]) == "/vsis3/mine/x.tif"


def test_a_url_names_its_file_as_the_file_was_named():
    """A browser's download served as it was saved: its name's rules (``(Raw)``: a Sentinel Hub raw band) apply."""
    url = "https://data.example.org/s2/2023-04-23-00_00_2023-04-23-23_59_Sentinel-2_L2A_B04_%28Raw%29.tiff?sig=x"
    (source,) = resolve_urls([url]).files
    assert source.name == "2023-04-23-00_00_2023-04-23-23_59_Sentinel-2_L2A_B04_(Raw).tiff"
    assert source.path == f"/vsicurl/{url}"


def earth_search_item() -> dict:
    """An item as Earth Search v1 serves sentinel-2-l2a (processing baseline 05.10): names in eo:bands, the
    scale and the -0.1 offset only in raster:bands, relative and absolute hrefs."""
    def asset(href: str, name: str, common: str | None, res: int) -> dict:
        band = {"name": name, **({"common_name": common} if common else {})}
        return {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
                "eo:bands": [band], "raster:bands": [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                                                       "spatial_resolution": res, "scale": 0.0001, "offset": -0.1}]}
    return {"type": "Feature", "stac_version": "1.0.0", "id": "S2B_33UUP_20260601_0_L2A",
            "properties": {"datetime": "2026-06-01T10:00:00Z", "s2:processing_baseline": "05.10"},
            "assets": {"swir16": asset("B11.tif", "swir16", "swir16", 20),
                       "swir22": asset("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B12.tif", "swir22",
                                       "swir22", 20),
                       "scl": {"href": "SCL.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                               "roles": ["data"], "raster:bands": [{"nodata": 0}]},
                       "swir16-jp2": {**asset("s3://sentinel-s2-l2a/tiles/33/U/UP/2026/6/1/0/B11.jp2", "swir16",
                                              "swir16", 20), "type": "image/jp2"},
                       "thumbnail": {"href": "thumb.jpg", "roles": ["thumbnail"]}},
            "geometry": None, "links": []}


def test_an_earth_search_item_gives_band_names_scale_offset_and_nodata():
    item_url = "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/S2B_33UUP.json"
    resolved = resolve_stac(earth_search_item(), None, item_url)
    # scl: the quality layer, read as an uploaded SCL is; swir16-jp2: B11 again; thumbnail: no data
    assert [f.name for f in resolved.files] == ["B11.tif", "B12.tif", "SCL.tif"]
    assert {"asset": "swir16-jp2", "left_out": "the same bands as asset 'swir16'"} in resolved.described
    assert resolved.files[0].path == \
        "/vsicurl/https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/B11.tif"
    assert resolved.files[1].path.startswith("/vsicurl/https://sentinel-cogs")
    assert resolved.bands == ["swir16", "swir22", "scl"] and resolved.files[0].nodata == (0.0,)
    assert resolved.overrides.get("scale", "B11") == 0.0001 and resolved.overrides.get("offset", "B12") == -0.1
    with pytest.raises(JobSourceError, match="no asset"):
        resolve_stac(earth_search_item(), ["B8A"], item_url)
    with pytest.raises(JobSourceError, match="not a STAC item"):
        resolve_stac({"type": "FeatureCollection", "features": []}, None, item_url)


def test_an_earth_search_item_whose_values_have_the_offset_removed_takes_none():
    """Earth Search's sentinel-2-l2a lists -0.1 in every item's raster:bands, also where it removed the offset from
    the values (earthsearch:boa_offset_applied): read by raster:bands those were 0.1 too dark."""
    item = earth_search_item()
    item["properties"]["earthsearch:boa_offset_applied"] = True
    resolved = resolve_stac(item, None, "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/x")
    assert resolved.overrides.get("offset", "B11") == 0.0 and resolved.overrides.get("scale", "B11") == 0.0001
    assert "earthsearch:boa_offset_applied" in resolved.described[0]["offset_from"]


@pytest.mark.parametrize("baseline, offset", [("05.10", -0.1), ("04.00", -0.1), ("03.01", None), (None, None)])
def test_a_planetary_computer_item_takes_the_offset_its_processing_baseline_implies(baseline, offset):
    """The Planetary Computer's sentinel-2-l2a items give no scale or offset, only s2:processing_baseline; from
    04.00 the values carry the offset of -1000: read as x 10000 alone they were 0.1 too bright."""
    item = {"type": "Feature", "properties": {"s2:processing_baseline": baseline} if baseline else {},
            "assets": {"B04": {"href": "https://sentinel2l2a01.blob.core.windows.net/x/T33UUP_B04_10m.tif",
                               "roles": ["data"], "eo:bands": [{"name": "B04", "common_name": "red"}]},
                       "SCL": {"href": "https://sentinel2l2a01.blob.core.windows.net/x/T33UUP_SCL_20m.tif",
                               "roles": ["data"], "eo:bands": [{"name": "SCL"}]}}}
    resolved = resolve_stac(item, ["B04"], None)
    assert resolved.overrides.get("offset", "B04") == offset
    assert resolved.overrides.get("scale", "B04") == (None if offset is None else 0.0001)


def test_stac_1_1_bands_with_raster_fields_on_the_band():
    item = {"type": "Feature", "assets": {"vv": {"href": "s3://b/vv.tif", "roles": ["data"],
                                                 "bands": [{"name": "VV", "raster:nodata": -9999, "raster:unit": "dB"}]},
                                          "vh": {"href": "s3://b/vh.tif", "bands": [{"name": "VH"}]}}}
    resolved = resolve_stac(item, None, None)
    assert resolved.bands == ["VV", "VH"] and resolved.files[0].nodata == (-9999.0,) and resolved.files[1].nodata is None
    assert resolved.overrides.get("units", "VV") == "dB" and resolved.files[0].path == "/vsis3/b/vv.tif"


def test_the_catalogue_scale_and_offset_are_applied_and_the_caller_wins(tmp_path, swir_manifest):
    """Earth Search's COGs store DN = (reflectance + 0.1) x 10000 without saying so in the file: read with the
    item's raster:bands the values are reflectance; without them they would be 0.1 too bright."""
    reflectance = np.random.default_rng(0).uniform(0.02, 0.4, size=(2, 64, 64))
    dn = np.rint((reflectance + 0.1) * 10000).astype(np.uint16)
    dn[:, :4] = 0  # the catalogue's nodata
    files = []
    for name, band in (("b11.tif", dn[0]), ("b12.tif", dn[1])):
        path = tmp_path / name
        with rasterio.open(path, "w", driver="GTiff", count=1, height=64, width=64, dtype="uint16", crs="EPSG:32633",
                           transform=rasterio.transform.from_origin(500000, 5000000, 20, 20)) as dst:
            dst.write(band[None])
        files.append(SourceFile(name, str(path), (0.0,)))
    item = resolve_stac(earth_search_item(), ["swir16", "swir22"], "https://x/item.json")
    sources = ResolvedSources(files, item.bands, item.overrides, item.described)
    manifest = swir_manifest
    scene, _, reader = opened_scene(JobRequest(), sources, [manifest], 10**9)
    with scene:
        values, reasons = reader.read(Window(0, 0, 64, 64))
        assert np.allclose(values[:, 4:], reflectance[:, 4:].astype(np.float32), atol=1e-4)
        assert (reasons[:4] != 0).all() and (reasons[4:] == 0).all()
        steps = " ".join(scene.band("B11").conversion.steps)
        assert "0.0001" in steps and "-0.1" in steps
    scene, _, reader = opened_scene(JobRequest(offset="0"), sources, [manifest], 10**9)
    with scene:
        values, _ = reader.read(Window(0, 0, 64, 64))
        assert np.allclose(values[:, 4:], reflectance[:, 4:] + 0.1, atol=1e-4), "the caller's offset= wins"



def write_band(path, data: np.ndarray, pixel: float = 20, nodata: float | None = None) -> None:
    with rasterio.open(path, "w", driver="GTiff", count=1, height=data.shape[0], width=data.shape[1], dtype=data.dtype,
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(500000, 5000000, pixel, pixel),
                       nodata=nodata) as dst:
        dst.write(data[None])


def test_an_earth_search_items_scl_masks_its_clouds(tmp_path, swir_manifest):
    """Before, an item's scl asset was left out, chosen or not (its name is no model band), and a job by an item read
    its clouds as land where the same bands uploaded with their SCL were masked."""
    dn = np.random.default_rng(2).integers(1100, 5000, (2, 64, 64)).astype(np.uint16)
    scl = np.full((64, 64), 4, np.uint8)  # vegetation
    scl[:8], scl[8:12] = 9, 3  # cloud (high probability), cloud shadow
    item = resolve_stac(earth_search_item(), None, "https://x/item.json")
    for name, data in zip([f.name for f in item.files], [dn[0], dn[1], scl], strict=True):
        write_band(tmp_path / name, data, nodata=0)
    files = [SourceFile(f.name, str(tmp_path / f.name), f.nodata) for f in item.files]
    scene, _, reader = opened_scene(JobRequest(), ResolvedSources(files, item.bands, item.overrides, item.described),
                                    [swir_manifest], 10**9)
    with scene:
        reader.read(Window(0, 0, 64, 64))
        assert reader.masked() == {"SCL cloud (high probability)": 8 * 64, "SCL cloud shadow": 4 * 64}


def test_a_jobs_mask_threshold_moves_the_cut_of_its_cloud_score(tmp_path, swir_manifest):
    """Earth Engine band files with Cloud Score+ linked, as a job: Google's 0.6 by default, the request's cut if it
    says one; one that names no cloud layer is refused when the job is submitted."""
    dn = np.random.default_rng(3).integers(1100, 5000, (2, 64, 64)).astype(np.uint16)
    cs_cdf = np.full((64, 64), 0.9, np.float32)
    cs_cdf[:8], cs_cdf[8:12] = 0.2, 0.55
    for name, data in (("download.B11.tif", dn[0]), ("download.B12.tif", dn[1]), ("download.cs_cdf.tif", cs_cdf)):
        write_band(tmp_path / name, data)
    sources = ResolvedSources([SourceFile(p.name, str(p)) for p in sorted(tmp_path.glob("download.*.tif"))])
    below_05 = {"Cloud Score+ clear likelihood below 0.5": 8 * 64}
    for request, masked in ((JobRequest(), {"Cloud Score+ clear likelihood below 0.6": 12 * 64}),
                            (JobRequest(mask_threshold="cs_cdf:0.5"), below_05),
                            (JobRequest.model_validate_json('{"mask_threshold": 0.5}'), below_05)):  # a JSON number
        scene, _, reader = opened_scene(request, sources, [swir_manifest], 10**9)
        with scene:
            reader.read(Window(0, 0, 64, 64))
            assert reader.masked() == masked
    with pytest.raises(ValueError, match="'SCL' is no cloud probability or clear score layer"):
        JobRequest(url="https://x/y.tif", mask_threshold="SCL:4")


def test_a_jobs_aoi_reads_the_box_around_its_polygon_and_masks_the_rest(tmp_path, swir_manifest):
    """A job's ``aoi`` (a GeoJSON object in its JSON body) crops as a box would and masks outside the polygon."""
    dn = np.random.default_rng(4).integers(1100, 5000, (2, 64, 64)).astype(np.uint16)
    for name, data in (("download.B11.tif", dn[0]), ("download.B12.tif", dn[1])):
        write_band(tmp_path / name, data)
    sources = ResolvedSources([SourceFile(p.name, str(p)) for p in sorted(tmp_path.glob("download.*.tif"))])
    with rasterio.open(tmp_path / "download.B11.tif") as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    triangle = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
        [[west, south], [east, south], [west, north], [west, south]]]}}
    scene, _, reader = opened_scene(JobRequest.model_validate({"aoi": triangle}), sources, [swir_manifest], 10**9)
    with scene:
        _, reasons = reader.read(Window(0, 0, reader.width, reader.height))
        outside = reader.masked()["outside the area of interest (aoi=)"]
    assert (reader.width, reader.height) == (64, 64) and abs(outside / 64**2 - 0.5) < 0.05
    assert reasons[0, -1] != 0 and reasons[-1, 0] == 0  # the north-east corner cut off, the south-west kept


def test_of_two_copies_of_a_band_the_cog_is_read_whichever_comes_first():
    item = earth_search_item()
    assets = item["assets"]
    item["assets"] = {"swir16-jp2": assets.pop("swir16-jp2"), **assets}
    resolved = resolve_stac(item, None, "https://x/item.json")
    assert [f.name for f in resolved.files] == ["B11.tif", "B12.tif", "SCL.tif"]
    assert {"asset": "swir16-jp2", "left_out": "the same bands as asset 'swir16'"} in resolved.described


def test_a_copernicus_data_space_item_reads_each_band_once_at_its_finest():
    """The Copernicus Data Space's items key each band of the SAFE by band and resolution (B04_10m, B04_20m,
    B04_60m), which named no band the service knew: an item was refused, and each band was there thrice."""
    safe = ("s3://eodata/Sentinel-2/MSI/L2A/2025/05/20/S2B_MSIL2A_20250520T100559_N0511_R022_T33UUP_20250520T120000.SAFE/"
            "GRANULE/L2A_T33UUP_A042000_20250520T100559/IMG_DATA")

    def asset(band: str, res: int) -> dict:
        return {"href": f"{safe}/R{res}m/T33UUP_20250520T100559_{band}_{res}m.jp2", "type": "image/jp2",
                "roles": ["data"], "gsd": res}
    keys = [("B04", 60), ("B04", 20), ("B04", 10), ("SCL", 60), ("SCL", 20), ("B11", 20), ("B11", 60), ("TCI", 10),
            ("AOT", 10)]
    item = {"type": "Feature", "stac_version": "1.1.0", "collection": "sentinel-2-l2a", "properties": {},
            "assets": {f"{band}_{res}m": asset(band, res) for band, res in keys}}
    resolved = resolve_stac(item, None, None)
    assert resolved.bands == ["B04", "SCL_20m", "B11"]
    assert [f.name for f in resolved.files] == ["T33UUP_20250520T100559_B04_10m.jp2",
                                                "T33UUP_20250520T100559_SCL_20m.jp2", "T33UUP_20250520T100559_B11_20m.jp2"]
    assert {"asset": "B04_60m", "left_out": "the same bands as asset 'B04_10m'"} in resolved.described


def test_a_dem_item_whose_asset_is_called_data_is_read_by_its_files_name():
    """The Planetary Computer's and Earth Search's cop-dem-glo-30 items give their one asset the key "data" and no band
    name: the item named no band the service knew, where the same file uploaded is read as the DEM by its name."""
    href = ("https://elevationeuwest.blob.core.windows.net/copernicus-dem/COP30_hh/"
            "Copernicus_DSM_COG_10_N51_00_W001_00_DEM.tif")
    item = {"type": "Feature", "stac_version": "1.0.0", "collection": "cop-dem-glo-30", "properties": {},
            "assets": {"data": {"href": href, "roles": ["data"], "type": "image/tiff; application=geotiff; "
                                "profile=cloud-optimized", "raster:bands": [{"unit": "meter", "data_type": "float32"}]},
                       "rendered_preview": {"href": "https://x/preview.png", "roles": ["overview"]}}}
    resolved = resolve_stac(item, None, None)
    assert resolved.bands == ["DEM"] and resolved.overrides.get("units", "DEM") == "m"
    assert [f.name for f in resolved.files] == ["Copernicus_DSM_COG_10_N51_00_W001_00_DEM.tif"]


def test_an_hls_l30_item_reads_its_band_numbers_as_landsats(tmp_path, swir_manifest):
    """NASA's CMR-STAC names an HLS L30 item's assets by OLI's band numbers: B06 and B07 are SWIR (B11, B12), B11 is
    thermal. Before, the asset keys arrived as bands= and were read as Sentinel-2's: the thermal band as B11 and
    no B12 at all, and B05 (near infrared) as red edge."""
    granule = "HLS.L30.T10TEK.2021183T185121.v2.0"
    href = f"https://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-protected/HLSL30.020/{granule}/{granule}"
    item = {"type": "Feature", "stac_version": "1.0.0", "collection": "HLSL30_2.0", "properties": {},
            "assets": {key: {"href": f"{href}.{key}.tif", "title": f"Download {granule}.{key}.tif"}
                       for key in ("B05", "B06", "B07", "B11", "Fmask")}}
    resolved = resolve_stac(item, None, None)
    dn = np.random.default_rng(4).integers(300, 4000, (4, 64, 64)).astype(np.int16)
    fmask = np.full((64, 64), 64, np.uint8)  # low aerosol, clear
    fmask[:2] = 64 | 1 << 1  # cloud
    files = []
    for f, data in zip(resolved.files, [*dn, fmask], strict=True):
        write_band(tmp_path / f.name, data)
        files.append(SourceFile(f.name, str(tmp_path / f.name), f.nodata))
    scene, _, reader = opened_scene(JobRequest(scale="0.0001"), ResolvedSources(
        files, resolved.bands, resolved.overrides, resolved.described), [swir_manifest], 10**9)
    with scene:
        assert [(b.identity.found, b.identity.canonical) for b in scene.bands] == [
            ("B05", "B8A"), ("B06", "B11"), ("B07", "B12"), ("B11", None), ("Fmask", None)]
        values, _ = reader.read(Window(0, 0, 64, 64))
        np.testing.assert_allclose(values, dn[1:3] / 10000, rtol=1e-6)
        assert reader.masked() == {"Fmask cloud": 2 * 64}


def test_a_dea_item_reads_its_measurements_on_their_sensor_and_masks_by_its_fmask(tmp_path, swir_manifest):
    """Digital Earth Australia's Sentinel-2 items name their assets after DEA's measurements, nbart_swir_2 being
    B11 there; before, none was a band the service knew and the item was refused."""
    base = ("https://dea-public-data.s3.ap-southeast-2.amazonaws.com/baseline/ga_s2am_ard_3/53/JQJ/2020/10/31/"
            "20201031T022859")
    label = "3-2-1_53JQJ_2020-10-31_final"

    def asset(kind: str, file: str, name: str, nodata: int) -> dict:
        return {"href": f"{base}/ga_s2am_{kind}_{label}_{file}.tif", "roles": ["data"], "type": "image/tiff",
                "eo:bands": [{"name": name}], "raster:bands": [{"nodata": nodata}]}
    item = {"type": "Feature", "stac_version": "1.0.0", "collection": "ga_s2am_ard_3", "properties": {},
            "assets": {"nbar_swir_2": asset("nbar", "band11", "nbar_swir_2", -999),  # without terrain correction
                       "nbart_swir_2": asset("nbart", "band11", "nbart_swir_2", -999),
                       "nbart_swir_3": asset("nbart", "band12", "nbart_swir_3", -999),
                       "oa_fmask": asset("oa", "fmask", "oa_fmask", 0),
                       "oa_satellite_view": asset("oa", "satellite-view", "oa_satellite_view", 0)}}
    resolved = resolve_stac(item, None, None)
    assert resolved.bands == ["nbart_swir_2", "nbart_swir_3", "oa_fmask"]
    dn = np.random.default_rng(3).integers(300, 4000, (2, 64, 64)).astype(np.int16)
    fmask = np.ones((64, 64), np.uint8)
    fmask[:4] = 2  # cloud
    files = []
    for f, data in zip(resolved.files, [dn[0], dn[1], fmask], strict=True):
        write_band(tmp_path / f.name, data, nodata=float(f.nodata[0]))
        files.append(SourceFile(f.name, str(tmp_path / f.name), f.nodata))
    scene, _, reader = opened_scene(JobRequest(), ResolvedSources(files, resolved.bands, resolved.overrides,
                                                                  resolved.described), [swir_manifest], 10**9)
    with scene:
        values, _ = reader.read(Window(0, 0, 64, 64))
        np.testing.assert_allclose(values, dn / 10000, rtol=1e-6)  # B11 the model's first band: nbart_swir_2
        assert reader.masked() == {"DEA Fmask cloud": 4 * 64}


def test_a_planetary_computer_sentinel1_rtc_item_reads_its_assets_as_the_linear_gamma0_their_names_state(
        tmp_path, sar_manifest):
    """The item names its assets vv and vh and gives no unit; the asset keys arrive as bands= and made the file's
    name, which states linear gamma0 (measurement/iw-vv.rtc.tiff), unheard: a 422 asked for units=linear. A model
    that learned sigma0 refuses it unless the job says backscatter=as-is."""
    from mapex_serve.backscatter import BackscatterError

    db = np.random.default_rng(1).uniform(-25, -5, size=(2, 64, 64)).astype(np.float32)
    files, assets = [], {}
    for i, pol in enumerate(("vv", "vh")):
        path = tmp_path / f"iw-{pol}.rtc.tiff"
        with rasterio.open(path, "w", driver="GTiff", count=1, height=64, width=64, dtype="float32", nodata=-32768,
                           crs="EPSG:32633", transform=rasterio.transform.from_origin(500000, 5000000, 10, 10)) as dst:
            dst.write((10 ** (db[i] / 10))[None])
        files.append(SourceFile(path.name, str(path)))
        assets[pol] = {"href": f"https://sentinel1euwestrtc.blob.core.windows.net/sentinel1-grd-rtc/GRD/2023/9/14/IW/DV/"
                               f"S1A_IW_GRDH_1SDV_20230914T052201/measurement/iw-{pol}.rtc.tiff", "roles": ["data"],
                       "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "raster:bands": [{"nodata": -32768, "data_type": "float32"}]}
    item = resolve_stac({"type": "Feature", "stac_version": "1.0.0", "id": "S1A_IW_GRDH_1SDV_20230914T052201_rtc",
                         "properties": {"sar:polarizations": ["VV", "VH"]}, "assets": assets}, None, None)
    assert item.bands == ["vv", "vh"]
    sources = ResolvedSources(files, item.bands, item.overrides)
    with pytest.raises(BackscatterError, match=r"holds gamma0, by its bands= parameter \(.*\), Planetary Computer "
                                               r"sentinel-1-rtc file name"):
        opened_scene(JobRequest(), sources, [sar_manifest.model_copy(update={"backscatter": "sigma0"})], 10**9)
    scene, _, reader = opened_scene(JobRequest(backscatter="as-is"), sources,
                                    [sar_manifest.model_copy(update={"backscatter": "sigma0"})], 10**9)
    with scene:
        values, _ = reader.read(Window(0, 0, 64, 64))
        np.testing.assert_allclose(values, db, atol=1e-4)
        assert any("10·log10" in step for step in scene.band("VV").conversion.steps)


def test_an_archive_at_a_url_is_fetched_within_the_limit_and_a_raster_is_left_to_gdal(range_server, tmp_path):
    """The first bytes decide (a link like Earth Engine's has no file name): an archive is fetched whole, at most
    the job upload limit (by the size its server states, then by its bytes), and stops when its job is cancelled;
    anything else is left for GDAL to read in place by ranges."""
    import io
    import zipfile

    from mapex_serve.archives import ArchiveTooLargeError
    from mapex_serve.jobs.sources import archive_at, fetch_archive

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("download.B4.tif", bytes(50_000))
    (range_server.root / "link:getPixels").write_bytes(out.getvalue())
    (range_server.root / "scene.tif").write_bytes(b"II*\x00" + bytes(50_000))
    link = f"{range_server.url}/link:getPixels"
    assert archive_at(link, 10**6) and not archive_at(f"{range_server.url}/scene.tif", 10**6)
    assert not archive_at(f"{range_server.url}/missing.zip", 10**6)  # left to GDAL, which says why
    told: list[int] = []
    saved = fetch_archive(link, tmp_path / "in" / "url00", 10**6, fetching=lambda size: told.append(size) or True)
    assert saved.read_bytes() == out.getvalue() and told == [len(out.getvalue())]  # after each MiB: one here
    with pytest.raises(ArchiveTooLargeError, match="MAPEX_JOB_MAX_UPLOAD_MB"):  # its stated size, before fetching
        archive_at(link, 20_000)
    with pytest.raises(ArchiveTooLargeError, match="MAPEX_JOB_MAX_UPLOAD_MB"):  # its bytes, as they come
        fetch_archive(link, tmp_path / "url02", 20_000)
    with pytest.raises(JobSourceError, match="cancelled"):
        fetch_archive(link, tmp_path / "url03", 10**6, fetching=lambda _size: False)
    with pytest.raises(JobSourceError, match="presigned https"):
        archive_at("s3://scenes/product.zip", 10**6)
    assert not archive_at("s3://scenes/scene.tif", 10**6)


def test_a_url_whose_server_stops_serving_it_between_reads_fails_naming_the_server_not_the_file(range_server):
    """A signed URL expires during a long job, or its server goes: GDAL's "Read failed" became "the upload is not a
    readable raster", which blamed the file. A block that comes but does not decode is still the file's fault."""
    from rasterio.errors import RasterioIOError

    from mapex_serve.inputs import RequestScene
    from mapex_serve.remote import RemoteFileUnavailableError, read_failure
    from mapex_serve.units import UnitOverrides

    db = np.random.default_rng(0).uniform(-25, -5, (2, 512, 512)).astype(np.float32)
    path = range_server.root / "expiring.tif"
    with rasterio.open(path, "w", driver="GTiff", count=2, width=512, height=512, dtype="float32", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(500000, 5000000, 10, 10), tiled=True,
                       blockxsize=256, blockysize=256) as dst:
        dst.write(db)
        dst.descriptions = ("VV", "VH")
    with RequestScene([SourceFile("expiring.tif", f"/vsicurl/{range_server.url}/expiring.tif")]) as scene:
        path.rename(path.with_name("expired.tif"))  # from now on the server answers 404
        with pytest.raises(RemoteFileUnavailableError, match="expiring.tif: its server stopped serving it"):
            scene.reader(["VV", "VH"], UnitOverrides())
    assert read_failure("a.tif", RasterioIOError("TIFFReadEncodedTile() failed: Decoding error")) is None


def test_a_gs_url_is_read_in_place_through_gdals_google_cloud_storage_client(range_server):
    """Earth Engine's Export.image.toCloudStorage leaves a GeoTIFF in a bucket: a job took no gs:// URL. GDAL's
    /vsigs/ reads it by ranges; here from a local server standing in for storage.googleapis.com (CPL_GS_ENDPOINT),
    as a public bucket (GS_NO_SIGN_REQUEST=YES), and without credentials the 422 says which ones to give."""
    from mapex_serve.inputs import RequestScene
    from mapex_serve.remote import RemoteFileError
    from mapex_serve.units import UnitOverrides

    db = np.random.default_rng(5).uniform(-25, -5, (2, 64, 64)).astype(np.float32)
    (range_server.root / "ee-exports").mkdir(exist_ok=True)
    with rasterio.open(range_server.root / "ee-exports" / "flood.tif", "w", driver="GTiff", count=2, width=64,
                       height=64, dtype="float32", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(db)
        dst.descriptions = ("VV", "VH")
    (source,) = resolve_urls(["gs://ee-exports/flood.tif"]).files
    with rasterio.Env(CPL_GS_ENDPOINT=f"{range_server.url}/", GS_NO_SIGN_REQUEST="YES"):
        with RequestScene([source]) as scene:
            reader = scene.reader(["VV", "VH"], UnitOverrides())
            values, _ = reader.read(Window(0, 0, 64, 64))
    np.testing.assert_array_equal(values, db)
    assert any(path == "ee-exports/flood.tif" for path, *_ in range_server.ranges)  # by ranges, from the bucket
    with rasterio.Env(CPL_GS_ENDPOINT=f"{range_server.url}/", GS_NO_SIGN_REQUEST="NO"), \
            pytest.raises(RemoteFileError, match="no Google Cloud Storage credentials.*GOOGLE_APPLICATION_CREDENTIALS"):
        RequestScene([source])


def test_a_planetary_computer_item_is_signed_with_a_token_of_each_container(range_server):
    """The Planetary Computer's items point at Azure Blob Storage, which refuses an unsigned read: a job by such an
    item was a 422 until its sender signed it. Its SAS service (here a local stand-in) gives a token a container,
    fetched once and appended as planetary_computer.sign does; an href already signed, or elsewhere, is left alone."""
    from mapex_serve.jobs.models import JobRequest
    from mapex_serve.jobs.runner import resolve_sources
    from mapex_serve.remote import RemoteFileUnavailableError

    token = "st=2026-12-06T08%3A00%3A00Z&se=2026-12-06T09%3A00%3A00Z&sp=rl&sv=2024-05-04&sr=c&sig=abc%3D"
    sas = range_server.root / "sas" / "sentinel2l2a01"
    sas.mkdir(parents=True, exist_ok=True)
    (sas / "sentinel2-l2").write_text(json.dumps({"msft:expiry": "2999-01-01T00:00:00Z", "token": token}))
    blob = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/33/U/UP/2026/06/01/S2B_MSIL2A_x.SAFE"
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S2B_MSIL2A_x", "properties": {},
            "links": [{"rel": "self", "href": "https://planetarycomputer.microsoft.com/api/stac/v1/collections/"
                                              "sentinel-2-l2a/items/S2B_MSIL2A_x"}],
            "assets": {"B11": {"href": f"{blob}/GRANULE/x/IMG_DATA/R20m/T33UUP_B11_20m.tif", "roles": ["data"],
                               "eo:bands": [{"name": "B11"}]},
                       "B12": {"href": f"{blob}/GRANULE/x/IMG_DATA/R20m/T33UUP_B12_20m.tif?se=signed&sig=x",
                               "roles": ["data"], "eo:bands": [{"name": "B12"}]},
                       "SCL": {"href": f"{blob}/GRANULE/x/IMG_DATA/R20m/T33UUP_SCL_20m.tif", "roles": ["data"],
                               "eo:bands": [{"name": "SCL"}]}}}
    endpoint = f"{range_server.url}/sas"
    resolved = resolve_sources(JobRequest(stac_item=item), [], [], 10**6, endpoint)
    paths = [f.path for f in resolved.files]
    assert paths[0].endswith(f"T33UUP_B11_20m.tif?{token}") and paths[2].endswith(f"T33UUP_SCL_20m.tif?{token}")
    assert paths[1].endswith("T33UUP_B12_20m.tif?se=signed&sig=x")  # signed by its sender already
    assert [f.name for f in resolved.files] == ["T33UUP_B11_20m.tif", "T33UUP_B12_20m.tif", "T33UUP_SCL_20m.tif"]
    assert sum(path == "sas/sentinel2l2a01/sentinel2-l2" for path, *_ in range_server.ranges) == 1  # one token
    elsewhere = {**item, "links": []}
    assert resolve_sources(JobRequest(stac_item=elsewhere), [], [], 10**6, endpoint).files[0].path.endswith(".tif")
    assert resolved.planetary_computer and not resolve_sources(JobRequest(stac_item=elsewhere), [], [], 10**6,
                                                               endpoint).planetary_computer
    item["assets"]["B11"]["href"] = item["assets"]["B11"]["href"].replace("sentinel2l2a01", "landsateuwest")
    with pytest.raises(RemoteFileUnavailableError, match="SAS service gave no token for landsateuwest/sentinel2-l2 "
                                                          r"\(HTTP 404\).*planetary_computer.sign"):
        resolve_sources(JobRequest(stac_item=item), [], [], 10**6, endpoint)


def test_a_planetary_computer_job_is_signed_afresh_when_it_starts(range_server):
    """A job waits in the queue, or for the service to restart, longer than a token lasts (about an hour): it started
    with the token it was submitted with, expired, and failed. When it starts its files get a token fetched then, one
    a container, in place of whatever signed them (the service's token, or its sender's); other files are left."""
    from mapex_serve.jobs.runner import _sources_from_json, _sources_to_json
    from mapex_serve.jobs.signing import resigned
    from mapex_serve.jobs.sources import ResolvedSources

    sas = range_server.root / "sas" / "sentinel2l2a01"
    sas.mkdir(parents=True, exist_ok=True)
    blob = "/vsicurl/https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/33/U/UP/x.SAFE/GRANULE/x/IMG_DATA/R20m"
    submitted = ResolvedSources([SourceFile("T33UUP_B11_20m.tif", f"{blob}/T33UUP_B11_20m.tif?se=then&sig=a"),
                                 SourceFile("T33UUP_B12_20m.tif", f"{blob}/T33UUP_B12_20m.tif?se=sender&sig=b"),
                                 SourceFile("dem.tif", "/vsicurl/https://example.com/dem.tif?se=then&sig=c")],
                                planetary_computer=True)
    recorded = _sources_from_json(json.loads(json.dumps(_sources_to_json(submitted))))  # as the job store keeps it
    assert recorded.planetary_computer
    asked = len([path for path, *_ in range_server.ranges if path == "sas/sentinel2l2a01/sentinel2-l2"])
    for token in ("se=now&sig=d", "se=later&sig=e"):  # the service's cached token is not reused
        (sas / "sentinel2-l2").write_text(json.dumps({"msft:expiry": "2999-01-01T00:00:00Z", "token": token}))
        started = resigned(recorded, f"{range_server.url}/sas")
        assert [f.path for f in started.files] == [f"{blob}/T33UUP_B11_20m.tif?{token}",
                                                   f"{blob}/T33UUP_B12_20m.tif?{token}",
                                                   "/vsicurl/https://example.com/dem.tif?se=then&sig=c"]
    assert sum(path == "sas/sentinel2l2a01/sentinel2-l2" for path, *_ in range_server.ranges) == asked + 2  # a start


def test_the_items_of_one_acquisition_are_read_as_one_scene_band_by_band(range_server, swir_manifest):
    """A flood across two Sentinel-2 tiles of one overpass: a job by the list of their items reads each band's files
    as one raster. The tiles overlap (adjacent MGRS tiles share 9.8 km), the second painted over the first where it
    has data; where it has none (its swath edge) the first shows; the items' scl masks across both."""
    from mapex_serve.jobs.models import JobRequest
    from mapex_serve.jobs.runner import resolve_sources

    rng = np.random.default_rng(6)
    dn = {tile: rng.integers(1100, 5000, (2, 64, 64)).astype(np.uint16) for tile in ("33UUP", "33UVP")}
    dn["33UVP"][:, :, :8] = 0  # the second tile's swath edge, inside the overlap: no data
    scl = {"33UUP": np.full((64, 64), 4, np.uint8), "33UVP": np.full((64, 64), 4, np.uint8)}
    scl["33UVP"][:4] = 9  # cloud
    items = []
    for tile, x0 in (("33UUP", 500000), ("33UVP", 500000 + 40 * 20)):
        assets = {}
        for key, name, data in (("swir16", "B11", dn[tile][0]), ("swir22", "B12", dn[tile][1]), ("scl", "SCL",
                                                                                                 scl[tile])):
            path = range_server.root / "items" / tile / f"{name}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", driver="GTiff", count=1, height=64, width=64, dtype=data.dtype, nodata=0,
                               crs="EPSG:32633", transform=rasterio.transform.from_origin(x0, 5000000, 20, 20)) as dst:
                dst.write(data[None])
            storage = [{"nodata": 0, "scale": 0.0001, "offset": -0.1}] if key != "scl" else [{"nodata": 0}]
            assets[key] = {"href": f"{range_server.url}/items/{tile}/{name}.tif", "roles": ["data"],
                           "type": "image/tiff; application=geotiff; profile=cloud-optimized", "raster:bands": storage,
                           **({"eo:bands": [{"name": key, "common_name": key}]} if key != "scl" else {})}
        items.append({"type": "Feature", "stac_version": "1.0.0", "id": f"S2B_{tile}_20260601_0_L2A",
                      "properties": {"s2:processing_baseline": "05.10"}, "assets": assets})
    items[1]["assets"]["swir16"]["eo:bands"] = [{"name": "B11"}]  # another catalogue's name for the same band
    resolved = resolve_sources(JobRequest(stac_item=items), [], [], 10**6)
    assert resolved.items and resolved.bands == ["swir16", "swir22", "scl", "B11", "swir22", "scl"]
    scene, _, reader = opened_scene(JobRequest(), resolved, [swir_manifest], 10**9)
    with scene:
        values, reasons = reader.read(Window(0, 0, reader.width, reader.height))
        assert (reader.height, reader.width) == (64, 104) and len(scene.mosaicked) == 6
        expected = np.zeros((2, 64, 104), np.float32)
        expected[:, :, :64] = dn["33UUP"]
        expected[:, :, 48:] = dn["33UVP"][:, :, 8:]  # the second tile over the first, but where it has no data
        np.testing.assert_allclose(values[:, 4:], expected[:, 4:] * 1e-4 - 0.1, atol=1e-6)
        assert reader.masked() == {"SCL cloud (high probability)": 4 * 64}  # the second tile's cloud, over both
        assert (reasons[:4, 40:] != 0).all() and (reasons[:4, :40] == 0).all()
    with pytest.raises(JobSourceError, match="different bands"):
        one_acquisition([resolve_stac(items[0], ["swir16"], None), resolve_stac(items[1], ["swir22"], None)])


def test_a_search_result_gives_its_items_and_items_of_two_dates_are_refused(range_server):
    """pystac-client's item_collection().to_dict(), or a STAC API search's URL, is what a user has: its features are
    the items of the scene, as a list of them would be. A result with a next page would leave items out unseen, and
    items of two dates read as one scene would paint one date over the other: both are refused, saying so."""
    from mapex_serve.jobs.runner import resolve_sources

    def item(tile, when):
        url = f"{range_server.url}/search/{tile}"
        return {"type": "Feature", "stac_version": "1.0.0", "id": tile, "properties": {"datetime": when},
                "links": [{"rel": "self", "href": f"{url}.json"}],
                "assets": {k: {"href": f"{url}/{k}.tif", "roles": ["data"], "eo:bands": [{"name": k}]}
                           for k in ("swir16", "swir22")}}

    overpass = [item("33UUP", "2026-06-01T10:15:59.024Z"), item("33UVP", "2026-06-01T10:16:02.881Z")]
    listed = resolve_sources(JobRequest(stac_item=overpass), [], [], 10**6)
    collection = {"type": "FeatureCollection", "features": overpass, "numberMatched": 2, "numberReturned": 2,
                  "links": [{"rel": "self", "href": f"{range_server.url}/search?ids=33UUP,33UVP"}]}
    (range_server.root / "search").mkdir(exist_ok=True)
    (range_server.root / "search" / "result.json").write_text(json.dumps(collection))
    for given in (collection, f"{range_server.url}/search/result.json"):
        found = resolve_sources(JobRequest(stac_item=given), [], [], 10**6)
        assert found.items and [f.path for f in found.files] == [f.path for f in listed.files]
        assert found.bands == listed.bands == ["swir16", "swir22"] * 2 and found.acquired == overpass[0]["properties"][
            "datetime"]
    paged = {**collection, "numberMatched": 5, "links": [{"rel": "next", "href": f"{range_server.url}/search?page=2"}]}
    with pytest.raises(JobSourceError, match=r"lists 2 of the 5 items it matched \(the rest on its next pages\); narrow"):
        resolve_sources(JobRequest(stac_item=paged), [], [], 10**6)
    two_dates = [overpass[0], item("33UVP", "2026-06-04T10:06:01Z")]
    with pytest.raises(JobSourceError, match=r"acquired at different times \(2026-06-01T10:15:59.024Z, "
                                             r"2026-06-04T10:06:01Z\).*send those of one date"):
        resolve_sources(JobRequest(stac_item={**collection, "features": two_dates}), [], [], 10**6)
    with pytest.raises(JobSourceError, match="stac_item gives 9 items; give 1 to 8"):
        resolve_sources(JobRequest(stac_item={**collection, "features": overpass * 4 + overpass[:1]}), [], [], 10**6)


def test_items_in_two_utm_zones_are_read_on_the_first_ones_grid(range_server, swir_manifest):
    """A flood across a UTM zone's edge (12 E): Sentinel-2's tiles west of it are in zone 32, east of it in zone 33.
    A job by their items was refused (not one grid). Now the second item's files are warped onto the first's grid:
    its values where it reaches, west of the first tile, are the field both tiles sample (bilinear), its cloud lies
    where it was (nearest), and the answer lists its files as resampled."""
    from rasterio.warp import transform

    from mapex_serve.jobs.models import JobRequest
    from mapex_serve.jobs.runner import resolve_sources

    size, pixel = 64, 20
    east = rasterio.transform.from_origin(265540, 4998380, pixel, pixel)  # zone 33, at 12.02 E 45.1 N
    x32, y32 = transform("EPSG:32633", "EPSG:32632", [265540.0], [4998380.0])
    west = rasterio.transform.from_origin(round(x32[0] / pixel) * pixel - 640, round(y32[0] / pixel) * pixel - 200,
                                          pixel, pixel)  # zone 32: 640 m further west, 200 m further south

    def field(xs, ys):  # one smooth field on the ground, in zone 33's metres: what both tiles sample
        return 1500 + (np.asarray(xs) - 265540) * 1.0 + (4998380 - np.asarray(ys)) * 0.5

    def sampled(crs, t):
        cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
        xs, ys = t @ (cols.ravel(), rows.ravel())
        if crs != "EPSG:32633":
            xs, ys = transform(crs, "EPSG:32633", xs, ys)
        return np.rint(field(xs, ys)).reshape(size, size).astype(np.uint16)

    cloud = np.full((size, size), 4, np.uint8)
    cloud[20:30, 2:12] = 9  # a cloud on the zone 32 tile, west of the zone 33 tile
    items = []
    for tile, crs, t in (("33TUL", "EPSG:32633", east), ("32TQR", "EPSG:32632", west)):
        assets = {}
        for key, data in (("swir16", sampled(crs, t)), ("swir22", sampled(crs, t)),
                          ("scl", cloud if tile == "32TQR" else np.full((size, size), 4, np.uint8))):
            path = range_server.root / "zones" / tile / f"{key}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", driver="GTiff", count=1, height=size, width=size, dtype=data.dtype,
                               crs=crs, transform=t) as dst:  # no no-data in the files: the items give it
                dst.write(data[None])
            assets[key] = {"href": f"{range_server.url}/zones/{tile}/{key}.tif", "roles": ["data"],
                           "raster:bands": [{"nodata": 0, **({"scale": 0.0001} if key != "scl" else {})}],
                           **({"eo:bands": [{"name": key, "common_name": key}]} if key != "scl" else {})}
        items.append({"type": "Feature", "stac_version": "1.0.0", "id": f"S2B_{tile}_20260601_0_L2A",
                      "properties": {"s2:processing_baseline": "03.01"}, "assets": assets})
    resolved = resolve_sources(JobRequest(stac_item=items), [], [], 10**6)
    scene, _, reader = opened_scene(JobRequest(), resolved, [swir_manifest], 10**9)
    with scene:
        assert reader.grid.crs == "EPSG:32633" and (reader.grid.transform.a, reader.grid.transform.e) == (20, -20)
        assert reader.resampled == ["32TQR/swir16.tif", "32TQR/swir22.tif", "32TQR/scl.tif"]  # told apart by folder
        assert scene.mosaicked == [f"{tile}/{key}.tif" for key in ("swir16", "swir22", "scl") for tile in ("33TUL",
                                                                                                         "32TQR")]
        values, reasons = reader.read(Window(0, 0, reader.width, reader.height))
        cols, rows = np.meshgrid(np.arange(reader.width) + 0.5, np.arange(reader.height) + 0.5)
        xs, ys = reader.grid.transform @ (cols, rows)
        truth = field(xs, ys) * 1e-4
        valid = reasons == 0
        beyond = valid & (xs < 265540)  # west of the zone 33 tile
        assert beyond.sum() > 20 * size  # the zone 32 tile's own part: read, no longer refused
        in_west = np.stack(~west @ tuple(map(np.asarray, transform("EPSG:32633", "EPSG:32632", xs.ravel(),
                                                                    ys.ravel())))).reshape(2, *xs.shape)
        inner = ((in_west >= 1) & (in_west <= size - 1)).all(axis=0)  # a pixel from its edge, where bilinear has
        outside = ((in_west < -1) | (in_west > size + 1)).any(axis=0)  # all 4 neighbours; or not near it at all
        checked = valid & (inner | outside)
        assert checked.sum() > 0.9 * valid.sum()
        for band in values:
            np.testing.assert_allclose(band[checked], truth[checked], atol=1.5e-4)  # 1.5 DN: rounding, bilinear
        assert 80 <= reader.masked()["SCL cloud (high probability)"] <= 120  # its 100 pixels, nearest
        clouded = np.argwhere(reasons == reasons.max())
        assert (clouded[:, 1] < (265540 - reader.grid.transform.c) / pixel).all()  # where the cloud was: west

    for asset in items[1]["assets"].values():
        del asset["raster:bands"][0]["nodata"]
    with pytest.raises(GridMismatchError, match=r"32TQR/swir16.tif \(B11\) is on another grid than the first item's "
                                                r"\(EPSG:32632 against EPSG:32633\) and declares no no-data value"):
        opened_scene(JobRequest(), resolve_sources(JobRequest(stac_item=items), [], [], 10**6), [swir_manifest],
                     10**9)

"""Whole scenes as jobs, end to end against real parts: a uvicorn server, GDAL reading a COG by HTTP ranges
from a local range-capable server and from moto's S3 server, a STAC item pointing at those assets, SQLite state
that survives a SIGKILL of the service, COGs checked by rio-cogeo, GeoJSON rasterised back onto the mask."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pystac
import pytest
import rasterio
import shapely
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from rasterio.features import rasterize
from rasterio.shutil import copy as gdal_copy
from rasterio.warp import transform_bounds, transform_geom

from mapex_serve.client import JobsClient
from mapex_serve.local import decode_workers

pytestmark = pytest.mark.slow


def write_cog(path: Path, data: np.ndarray, descriptions: list[str] | None, *, crs: str = "EPSG:32633",
              origin: tuple[float, float] = (500000, 5000000), pixel: float = 10, nodata: float | None = None) -> Path:
    """A Cloud-Optimised GeoTIFF as gdal_translate -of COG writes one (tiles, overviews)."""
    tmp = path.with_suffix(".plain.tif")
    count, height, width = data.shape
    with rasterio.open(tmp, "w", driver="GTiff", count=count, height=height, width=width, dtype=data.dtype, crs=crs,
                       transform=rasterio.transform.from_origin(*origin, pixel, pixel), nodata=nodata) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    gdal_copy(str(tmp), str(path), driver="COG", blocksize=256, compress="deflate")
    tmp.unlink()
    return path


@pytest.fixture(scope="module")
def sar(tmp_path_factory) -> np.ndarray:
    """A 320 x 288 synthetic Sentinel-1 scene (VV, VH in dB): a mosaic of the generator's flood scenes."""
    from training.data import SceneConfig, generate_scene, mosaic

    scenes = [generate_scene(np.random.default_rng(seed), SceneConfig(size=32, flood_prob=0.7)) for seed in range(90)]
    big = mosaic(scenes, columns=9)
    return np.stack([big.bands["VV"], big.bands["VH"]]).astype(np.float32)


@pytest.fixture(scope="module")
def scene_cog(sar, tmp_path_factory) -> Path:
    return write_cog(tmp_path_factory.mktemp("scene") / "s1_scene.tif", sar, ["VV", "VH"])


NOTIFY_SECRET = "jobs-notify-secret"


@pytest.fixture(scope="module")
def jobs_server(built_repo, server_type, s3_server, tmp_path_factory):
    """The service with a jobs folder of its own, GDAL pointed at the moto S3 server."""
    folder = tmp_path_factory.mktemp("jobs-server")
    s = server_type(built_repo, folder / "server.log", MAPEX_JOBS_DIR=str(folder / "jobs"),
                    MAPEX_JOB_NOTIFY_SECRET=NOTIFY_SECRET, **s3_server.env)
    yield s
    s.stop()


#: One client for the helpers' polls: a new httpx client costs 23 ms of CPU (it loads the CA bundle), 10% of a core
#: at five polls a second.
HTTP = httpx.Client(timeout=60)


def wait_done(url: str, job_id: str, timeout: float = 180, **kw) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = HTTP.get(f"{url}/jobs/{job_id}", timeout=10, **kw).json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {status}")


def submit_upload(url: str, path: Path, **params) -> httpx.Response:
    with path.open("rb") as f:
        return HTTP.post(f"{url}/jobs/flood", files={"file": (path.name, f)}, params=params)


def result(url: str, job_id: str, fmt: str) -> httpx.Response:
    return HTTP.get(f"{url}/jobs/{job_id}/result", params={"format": fmt})


def cog_array(server_type, content: bytes) -> np.ndarray:
    """Every band of a GeoTIFF answer, after rio-cogeo has accepted it as a Cloud-Optimised GeoTIFF."""
    server_type.cog_band(content)
    with rasterio.io.MemoryFile(content) as mem, mem.open() as src:
        return src.read()


@pytest.fixture(scope="module")
def uploaded(jobs_server, scene_cog):
    """One job of the scene uploaded, with every output; its status."""
    r = submit_upload(jobs_server.url, scene_cog, probabilities="true")
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    status = wait_done(jobs_server.url, r.json()["id"])
    assert status["state"] == "done", status
    return status


def test_an_uploaded_scene_gives_the_predict_mask_as_a_cog_with_areas(jobs_server, uploaded, scene_cog, server_type):
    job = uploaded
    assert job["route"]["specialist"] == "flood-sar" and job["route"]["bands"] == ["VV", "VH"]
    assert job["progress"]["tiles_done"] == job["progress"]["tiles_total"] > 100
    assert set(job["results"]) == {"geotiff", "json", "geojson", "probabilities", "stac"}
    listed = httpx.get(f"{jobs_server.url}/jobs", params={"limit": 1000}).json()
    assert job["id"] in [j["id"] for j in listed] and listed == sorted(listed, key=lambda j: -j["created"])
    labels = cog_array(server_type, result(jobs_server.url, job["id"], "geotiff").content)[0]
    served = server_type.cog_band(jobs_server.post("flood", scene_cog).content)
    agree = float((labels == served).mean())
    print(f"job vs /predict on the same scene: {agree:.4f} of pixels agree")
    assert agree >= 0.999  # batch composition may flip a near-tie pixel, nothing else
    summary = result(jobs_server.url, job["id"], "json").json()
    flooded = summary["classes"]["flooded"]
    assert flooded["pixels"] == int((labels == 1).sum()) > 0
    assert flooded["area_m2"] == pytest.approx(flooded["pixels"] * 100) and flooded["area_km2"] == pytest.approx(
        flooded["area_m2"] / 1e6)
    assert summary["valid_pixels"] == labels.size


def test_a_tar_gz_of_band_files_is_unpacked_onto_the_volume_and_gives_the_stacked_scenes_mask(
        jobs_server, uploaded, sar, tmp_path, server_type):
    """A job's upload may be an archive: a .tar.gz of one COG a band, one of them named by its PAM sidecar only
    (GDAL reads ``band1.tif.aux.xml`` beside it), and a README left out; the same mask as the stacked COG's."""
    import io
    import tarfile

    vv = write_cog(tmp_path / "band1.tif", sar[:1], None).read_bytes()
    vh = write_cog(tmp_path / "S1_VH.tif", sar[1:], None).read_bytes()
    pam = (b'<PAMDataset><PAMRasterBand band="1"><Description>VV</Description></PAMRasterBand></PAMDataset>')
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, data in (("s1/band1.tif", vv), ("s1/band1.tif.aux.xml", pam), ("s1/S1_VH.tif", vh),
                           ("s1/README.txt", b"VV and VH in dB")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    r = httpx.post(f"{jobs_server.url}/jobs/flood", content=out.getvalue(), timeout=60,
                   headers={"content-type": "application/gzip"})
    assert r.status_code == 202, r.text
    status = wait_done(jobs_server.url, r.json()["id"])
    assert status["state"] == "done", status
    summary = result(jobs_server.url, status["id"], "json").json()
    assert summary["archives"] == [{"name": "upload.gz", "kind": "tar archive (gzip-compressed)",
                                    "read": ["band1.tif", "band1.tif.aux.xml", "S1_VH.tif"],
                                    "skipped": ["s1/README.txt"]}]
    assert {i["found"]: i["mapped_to"] for i in summary["inputs"]} == {"VV": "VV", "S1_VH": "VH"}
    labels = cog_array(server_type, result(jobs_server.url, status["id"], "geotiff").content)[0]
    stacked = cog_array(server_type, result(jobs_server.url, uploaded["id"], "geotiff").content)[0]
    assert (labels == stacked).mean() >= 0.999


def test_a_zip_of_earth_engine_export_tiles_is_read_as_the_one_scene(jobs_server, uploaded, sar, tmp_path,
                                                                      server_type):
    """A large Earth Engine export comes as ``<prefix>-<row>-<col>.tif`` files without band names; zipped and sent
    as a job, they are unpacked onto the volume and read as the one scene they are (one VRT over them, its rows
    split across the decode workers like any scene's): the mask of the stacked COG."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for r0, r1 in ((0, 160), (160, sar.shape[1])):
            for c0, c1 in ((0, 96), (96, sar.shape[2])):
                tile = write_cog(tmp_path / "tile.tif", sar[:, r0:r1, c0:c1], None,
                                 origin=(500000 + 10 * c0, 5000000 - 10 * r0))
                z.writestr(f"s1_flood-{r0:010d}-{c0:010d}.tif", tile.read_bytes())
    r = httpx.post(f"{jobs_server.url}/jobs/flood", content=out.getvalue(), params={"bands": "VV,VH"}, timeout=60,
                   headers={"content-type": "application/zip"})
    assert r.status_code == 202, r.text
    status = wait_done(jobs_server.url, r.json()["id"])
    assert status["state"] == "done", status
    summary = result(jobs_server.url, status["id"], "json").json()
    assert len(summary["grid"]["mosaicked"]) == 4
    assert (summary["grid"]["width"], summary["grid"]["height"]) == (sar.shape[2], sar.shape[1])
    labels = cog_array(server_type, result(jobs_server.url, status["id"], "geotiff").content)[0]
    stacked = cog_array(server_type, result(jobs_server.url, uploaded["id"], "geotiff").content)[0]
    assert (labels == stacked).mean() >= 0.999


def test_metrics_count_the_jobs_in_the_store_by_task_and_state(jobs_server, uploaded):
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{jobs_server.url}/metrics", timeout=10).text
    jobs = {(s.labels["task"], s.labels["state"]): s.value
            for family in text_string_to_metric_families(text) if family.name == "mapex_jobs" for s in family.samples}
    assert jobs[("flood", "done")] >= 1, jobs
    assert {state for task, state in jobs if task == "flood"} == {"queued", "running", "done", "failed", "cancelled"}
    listed = httpx.get(f"{jobs_server.url}/jobs", params={"limit": 1000}, timeout=10).json()
    assert sum(jobs.values()) == len(listed)


def test_the_probability_cog_is_scaled_uint8_and_agrees_with_the_labels(jobs_server, uploaded, server_type):
    content = result(jobs_server.url, uploaded["id"], "probabilities").content
    probs = cog_array(server_type, content)
    labels = cog_array(server_type, result(jobs_server.url, uploaded["id"], "geotiff").content)[0]
    with rasterio.io.MemoryFile(content) as mem, mem.open() as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255 and src.scales[0] == pytest.approx(1 / 254)
    p = probs.astype(np.float32) / 254
    assert np.allclose(p.sum(axis=0), 1, atol=0.01)
    assert (p.argmax(axis=0) == labels).mean() >= 0.995  # rounding to 1/254 can flip only near-ties


def test_geojson_polygons_rasterise_back_to_the_mask(jobs_server, uploaded, server_type):
    collection = result(jobs_server.url, uploaded["id"], "geojson").json()
    labels = cog_array(server_type, result(jobs_server.url, uploaded["id"], "geotiff").content)[0]
    with rasterio.io.MemoryFile(result(jobs_server.url, uploaded["id"], "geotiff").content) as mem, mem.open() as src:
        crs, transform = src.crs, src.transform
    assert collection["type"] == "FeatureCollection" and collection["features"]
    for f in collection["features"]:
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid and f["properties"]["class"] == "flooded"
        lon, lat = np.asarray(geom.exterior.coords if geom.geom_type == "Polygon" else geom.geoms[0].exterior.coords).T
        assert (np.abs(lon) <= 180).all() and (np.abs(lat) <= 90).all(), "RFC 7946: WGS84 longitude, latitude"
    shapes = [(transform_geom("EPSG:4326", crs, f["geometry"]), 1) for f in collection["features"]]
    back = rasterize(shapes, out_shape=labels.shape, transform=transform, fill=0, dtype="uint8")
    truth = labels == 1
    iou = (truth & (back == 1)).sum() / (truth | (back == 1)).sum()
    print(f"GeoJSON rasterised back: IoU {iou:.4f} with the flooded mask ({len(shapes)} polygons)")
    assert iou >= 0.99


def test_a_cog_by_url_is_read_by_http_ranges(jobs_server, range_server, scene_cog, uploaded, server_type):
    (range_server.root / "scene.tif").write_bytes(scene_cog.read_bytes())
    range_server.ranges.clear()
    r = httpx.post(f"{jobs_server.url}/jobs/flood", json={"url": f"{range_server.url}/scene.tif"}, timeout=60)
    assert r.status_code == 202, r.text
    status = wait_done(jobs_server.url, r.json()["id"])
    assert status["state"] == "done", status
    assert range_server.ranges, "GDAL read the COG with HTTP range requests"
    size = scene_cog.stat().st_size
    assert max(end - start + 1 for _, start, end in range_server.ranges) < size, "by ranges, not whole"
    by_url = cog_array(server_type, result(jobs_server.url, r.json()["id"], "geotiff").content)[0]
    uploaded_labels = cog_array(server_type, result(jobs_server.url, uploaded["id"], "geotiff").content)[0]
    assert (by_url == uploaded_labels).mean() >= 0.999


def test_an_archive_by_url_is_fetched_and_unpacked_as_an_earth_engine_download_link_needs(
        jobs_server, range_server, sar, uploaded, server_type, tmp_path):
    """getDownloadURL gives a link to a ZIP of one GeoTIFF a band: a job given that link fetches it (its first
    bytes say it is an archive) once it starts, not while its POST waits, unpacks it onto the volume and gives the
    stacked COG's mask; what the archive turns out to hold fails the job, as it would have failed the POST; a COG
    by URL is still read in place (the test above); an archive on S3 is refused saying what to give instead."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i, pol in enumerate(("VV", "VH")):
            z.writestr(f"download.{pol}.tif", write_cog(tmp_path / f"{pol}.tif", sar[i:i + 1], None).read_bytes())
    (range_server.root / "thumbnails:getPixels").write_bytes(out.getvalue())
    r = httpx.post(f"{jobs_server.url}/jobs/flood", json={"url": f"{range_server.url}/thumbnails:getPixels"},
                   timeout=60)
    assert r.status_code == 202 and r.json()["route"] is None, r.text  # routed once fetched
    status = wait_done(jobs_server.url, r.json()["id"])
    assert status["state"] == "done" and status["route"]["bands"] == ["VV", "VH"], status
    summary = result(jobs_server.url, status["id"], "json").json()
    assert summary["archives"][0]["read"] == ["download.VV.tif", "download.VH.tif"]
    labels = cog_array(server_type, result(jobs_server.url, status["id"], "geotiff").content)[0]
    stacked = cog_array(server_type, result(jobs_server.url, uploaded["id"], "geotiff").content)[0]
    assert (labels == stacked).mean() >= 0.999
    refused = httpx.post(f"{jobs_server.url}/jobs/flood", json={"url": "s3://scenes/S2B_MSIL2A.zip"}, timeout=60)
    assert refused.status_code == 422 and "presigned https:// URL" in refused.json()["detail"], refused.text
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("userdata.json", "{}")
    (range_server.root / "empty:getPixels").write_bytes(out.getvalue())
    r = httpx.post(f"{jobs_server.url}/jobs/flood", json={"url": f"{range_server.url}/empty:getPixels"}, timeout=60)
    failed = wait_done(jobs_server.url, r.json()["id"])
    assert failed["state"] == "failed" and failed["error"]["error"] == "UnreadableArchiveError", failed
    assert "no raster file in it" in failed["error"]["detail"]


def test_a_job_fetching_its_archive_says_how_far_it_is(jobs_server, range_server):
    """``progress.fetched_bytes`` while a slow server sends a 3 MiB archive, with no route yet; what the archive
    holds (no raster) then fails the job."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("noise.txt", np.random.default_rng(0).bytes(3 * 2**20))
    (range_server.root / "slow:getPixels").write_bytes(out.getvalue())
    range_server.seconds_per_mib = 0.5
    try:
        r = httpx.post(f"{jobs_server.url}/jobs/flood", json={"url": f"{range_server.url}/slow:getPixels"}, timeout=60)
        assert r.status_code == 202, r.text
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while (status := httpx.get(f"{jobs_server.url}/jobs/{r.json()['id']}", timeout=10).json())["state"] in (
                "queued", "running") and time.monotonic() < deadline:
            if status["progress"]["fetched_bytes"] is not None:
                assert status["route"] is None and status["state"] == "running", status
                seen.add(status["progress"]["fetched_bytes"])
            time.sleep(0.05)
    finally:
        range_server.seconds_per_mib = 0.0
    assert seen and min(seen) >= 2**20 and max(seen) <= len(out.getvalue()), seen  # told after each MiB
    assert status["state"] == "failed" and status["progress"]["fetched_bytes"] is None, status
    assert status["error"]["error"] == "UnreadableArchiveError", status


def test_a_stac_item_with_s3_assets_names_the_bands_and_their_nodata(jobs_server, range_server, s3_server, sar,
                                                                      uploaded, server_type, tmp_path):
    """Band files without descriptions (as many COGs are): the item's eo:bands say which is VV and VH, its
    raster:bands say the nodata value the files do not declare."""
    s3 = s3_server.client()
    s3.create_bucket(Bucket="scenes")
    with_nodata = sar.copy()
    with_nodata[:, :, :16] = -9999  # a no-data margin known only to the catalogue
    for name, band in (("a.tif", with_nodata[0]), ("b.tif", with_nodata[1])):
        s3.upload_file(str(write_cog(tmp_path / name, band[None], None)), "scenes", f"s1/{name}")
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "S1A_IW_GRDH_test", "geometry": None,
            "properties": {"datetime": "2026-11-30T05:00:00Z"}, "links": [],
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
            "assets": {
                "vh": {"href": "s3://scenes/s1/b.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["data"], "eo:bands": [{"name": "VH"}],
                       "raster:bands": [{"nodata": -9999, "data_type": "float32", "unit": "dB"}]},
                "vv": {"href": "s3://scenes/s1/a.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "roles": ["data"], "eo:bands": [{"name": "VV"}],
                       "raster:bands": [{"nodata": -9999, "data_type": "float32", "unit": "dB"}]},
                "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]}}}
    (range_server.root / "item.json").write_text(json.dumps(item))
    r = httpx.post(f"{jobs_server.url}/jobs/flood", json={"stac_item": f"{range_server.url}/item.json",
                                                          "assets": ["vv", "vh"]}, timeout=60)
    assert r.status_code == 202, r.text
    status = wait_done(jobs_server.url, r.json()["id"])
    assert status["state"] == "done", status
    summary = result(jobs_server.url, r.json()["id"], "json").json()
    assert [i["mapped_to"] for i in summary["inputs"]] == ["VV", "VH"]
    assert summary["masked_pixels"]["by_reason"] == {"nodata, mask or alpha band": 16 * sar.shape[1]}
    labels = cog_array(server_type, result(jobs_server.url, r.json()["id"], "geotiff").content)[0]
    assert (labels[:, :16] == 255).all(), "the catalogue's nodata is nodata in the answer"
    reference = cog_array(server_type, result(jobs_server.url, uploaded["id"], "geotiff").content)[0]
    assert (labels[:, 40:] == reference[:, 40:]).mean() >= 0.999  # away from the margin, the same scene


def test_the_results_as_a_stac_item_are_read_by_gdal_as_the_files_they_describe(jobs_server, range_server, scene_cog,
                                                                                uploaded, server_type, tmp_path):
    """A flood map goes into a STAC catalogue, or to the tools that read STAC. The job's results as an Item: GDAL's
    STACIT driver reads its labels and probabilities from this service, by its projection fields and hrefs alone,
    as the COGs themselves; its classes are the labels' (names, colours, no data); its footprint the scene's; its
    datetime the source item's acquisition, which it links; a job of an upload dates from its finish. The job goes
    in as the README shows: a search's ItemCollection through the jobs client."""
    (range_server.root / "stac-result").mkdir(exist_ok=True)
    shutil.copy(scene_cog, range_server.root / "stac-result" / "s1.tif")
    item_url = f"{range_server.url}/stac-result/S1A_IW_GRDH_x.json"
    search = {"type": "FeatureCollection", "features": [{  # as pystac-client's item_collection().to_dict() writes it
        "type": "Feature", "stac_version": "1.0.0", "id": "S1A_IW_GRDH_x", "geometry": None,
        "properties": {"datetime": "2026-11-30T05:00:00Z"}, "links": [{"rel": "self", "href": item_url}],
        "assets": {"data": {"href": f"{range_server.url}/stac-result/s1.tif", "roles": ["data"],
                            "eo:bands": [{"name": "VV"}, {"name": "VH"}]}}}]}
    with JobsClient(jobs_server.url) as client:  # the README's way
        status = client.wait(client.submit("flood", None, stac_item=search, probabilities=True)["id"], poll_s=0.2)
    assert status["state"] == "done" and status["results"]["stac"].endswith("?format=stac"), status
    item = result(jobs_server.url, status["id"], "stac").json()
    assert result(jobs_server.url, status["id"], "stac").headers["content-type"] == "application/geo+json"
    assert item["properties"]["datetime"] == "2026-11-30T05:00:00Z" and item["properties"]["proj:code"] == "EPSG:32633"
    assert {link["rel"]: link["href"] for link in item["links"]}["derived_from"] == item_url
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item))
    for asset in ("labels", "probabilities"):
        stored = cog_array(server_type, result(jobs_server.url, status["id"], {"labels": "geotiff"}.get(asset, asset))
                           .content)
        with rasterio.open(f'STACIT:"{path}":asset={asset}') as read:  # by the item's fields, the files by HTTP
            np.testing.assert_array_equal(read.read(), stored)
            read_transform = read.transform
            with rasterio.open(scene_cog) as scene:
                assert (read.crs, read.transform) == (scene.crs, scene.transform)
                corners = transform_geom(scene.crs, "EPSG:4326", shapely.geometry.mapping(shapely.box(*scene.bounds)))
                assert item["bbox"] == pytest.approx(transform_bounds(scene.crs, "EPSG:4326", *scene.bounds,
                                                                      densify_pts=21), abs=1e-6)
    outline = shapely.geometry.shape(item["geometry"])
    assert all(outline.distance(shapely.Point(xy)) < 1e-6 for xy in corners["coordinates"][0])  # the scene's corners
    assert shapely.box(*item["bbox"]).buffer(1e-6).contains(outline)
    summary = result(jobs_server.url, status["id"], "json").json()
    assert summary["acquired"] == "2026-11-30T05:00:00Z"  # the summary says it too
    with rasterio.io.MemoryFile(result(jobs_server.url, status["id"], "geotiff").content) as mem, mem.open() as cog:
        colours = cog.colormap(1)
    classes = item["assets"]["labels"]["classification:classes"]
    assert [c["description"] for c in classes[:-1]] == list(summary["classes"])
    assert [c["color_hint"] for c in classes[:-1]] == ["{:02X}{:02X}{:02X}".format(*colours[i][:3])
                                                      for i in range(len(classes) - 1)]
    assert classes[-1] == {"value": 255, "name": "no_data", "nodata": True, "description": classes[-1]["description"]}
    assert item["assets"]["probabilities"]["raster:bands"][0]["scale"] == pytest.approx(1 / 254)
    read = pystac.Item.from_dict(item)  # as pystac reads it, through its extensions' own versions
    assert read.datetime.isoformat() == "2026-11-30T05:00:00+00:00"
    grid = ProjectionExtension.ext(read.assets["labels"])
    assert (grid.code, grid.shape, grid.transform) == ("EPSG:32633", list(stored.shape[1:]), list(read_transform)[:6])
    assert [(c.value, c.name, c.color_hint) for c in ClassificationExtension.ext(read.assets["labels"]).classes] == [
        (c["value"], c["name"], c.get("color_hint")) for c in classes]
    assert [b.scale for b in RasterExtension.ext(read.assets["probabilities"]).bands] == pytest.approx(
        [1 / 254] * len(classes[:-1]))
    upload = result(jobs_server.url, uploaded["id"], "stac").json()
    assert upload["properties"]["datetime"] == upload["properties"]["created"] and [
        link["rel"] for link in upload["links"]] == ["self"]
    listed = httpx.get(f"{jobs_server.url}/jobs", params={"format": "stac", "task": "flood", "limit": 1000}, timeout=60)
    assert listed.headers["content-type"] == "application/geo+json" and listed.json()["type"] == "FeatureCollection"
    features = {f["id"]: f for f in listed.json()["features"]}
    assert features[item["id"]] == item and features[upload["id"]] == upload
    done = [j for j in httpx.get(f"{jobs_server.url}/jobs", params={"task": "flood", "limit": 1000}).json()
            if j["state"] == "done"]
    assert sorted(features) == sorted(f"flood-{j['id']}" for j in done)  # every done flood job, nothing else
    with rasterio.open(f'STACIT:"{jobs_server.url}/jobs?format=stac&task=flood&limit=1000":asset=labels') as mosaic:
        assert mosaic.crs == "EPSG:32633"  # GDAL opens the service's results as one mosaic, by their URL


def test_the_stac_items_of_one_overpass_give_the_mask_of_the_scene_they_tile(jobs_server, range_server, sar,
                                                                            uploaded, server_type, tmp_path):
    """A scene across two items of one overpass, sent as the list of both: the job reads each band's two COGs as one
    raster, overlap and all, and answers the mask of the whole scene uploaded at once."""
    width = sar.shape[2]
    items = []
    for part, (c0, c1) in enumerate(((0, 180), (120, width))):
        assets = {}
        for i, pol in enumerate(("vv", "vh")):
            name = f"tile{part}_{pol}.tif"
            write_cog(range_server.root / name, sar[i:i + 1, :, c0:c1].copy(), None, origin=(500000 + 10 * c0, 5000000))
            assets[pol] = {"href": f"{range_server.url}/{name}", "roles": ["data"], "eo:bands": [{"name": pol.upper()}],
                           "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                           "raster:bands": [{"data_type": "float32", "unit": "dB"}]}
        items.append({"type": "Feature", "stac_version": "1.0.0", "id": f"S1A_IW_tile{part}", "properties": {},
                      "assets": assets})
    r = httpx.post(f"{jobs_server.url}/jobs/flood", json={"stac_item": items}, timeout=60)
    assert r.status_code == 202, r.text
    assert r.json()["route"]["width"] == width
    status = wait_done(jobs_server.url, r.json()["id"])
    assert status["state"] == "done", status
    labels = cog_array(server_type, result(jobs_server.url, r.json()["id"], "geotiff").content)[0]
    reference = cog_array(server_type, result(jobs_server.url, uploaded["id"], "geotiff").content)[0]
    assert labels.shape == reference.shape and (labels == reference).mean() >= 0.999


def zarr_chunks_fetched(ranges: list, store: str) -> dict[str, set[str]]:
    """The chunk files of a Zarr store that GDAL fetched, by array (coordinate arrays left out), from the range
    server's log: ``{"measurements/reflectance/r10m/b08": {"1.1"}}``."""
    fetched: dict[str, set[str]] = {}
    for path, _, _ in ranges:
        if path.startswith(f"{store}/") and not path.rsplit("/", 1)[-1].startswith("."):
            array, chunk = path.removeprefix(f"{store}/").rsplit("/", 1)
            if not array.endswith(("/x", "/y")):
                fetched.setdefault(array, set()).add(chunk)
    return fetched


def test_an_eopf_stac_item_reads_its_zarr_product_as_its_bands_sent_as_cogs_are_read(jobs_server, range_server,
                                                                                    eopf_product, server_type):
    """ESA's Zarr Sentinel-2 product, by its STAC item as the EOPF STAC serves one: read where it lies (GDAL's Zarr
    driver), each band once, in the CRS its arrays state, with its scale, offset and fill; the answer is that of the
    same counts sent as one COG a band with scale= and offset=. With a bbox, only the chunks under it are fetched,
    and of the bands the route reads only."""
    name = "S2B_MSIL2A_20250522T125039_N0511_R095_T33TML_20250522T133252.zarr"
    product = eopf_product(range_server.root, name, size=96, chunk=32)  # 3 x 3 chunks, 320 m a side
    base = f"{range_server.url}/{name}"
    item = {"type": "Feature", "stac_version": "1.1.0", "id": name.removesuffix(".zarr"), "geometry": None,
            "properties": {"datetime": "2025-05-22T12:50:39Z"}, "links": [], "assets": {
                "B04_10m": {"href": f"{base}/measurements/reflectance/r10m/b04", "type": "application/vnd+zarr",
                            "roles": ["data"], "bands": [{"name": "B04", "eo:common_name": "red"}]},
                "product": {"href": base, "type": "application/vnd+zarr", "roles": ["data", "metadata"]}}}
    (range_server.root / "eopf_item.json").write_text(json.dumps(item))

    # An area of interest inside the middle chunk, first (so that no process has fetched a chunk yet).
    box = transform_bounds("EPSG:32633", "EPSG:4326", 400_320, 4_599_420, 400_560, 4_599_660)
    range_server.ranges.clear()
    aoi_job = httpx.post(f"{jobs_server.url}/jobs/landcover", timeout=60, json={
        "stac_item": f"{range_server.url}/eopf_item.json", "bbox": ",".join(map(str, box))})
    assert aoi_job.status_code == 202, aoi_job.text
    aoi_done = wait_done(jobs_server.url, aoi_job.json()["id"])
    assert aoi_done["state"] == "done", aoi_done
    routed = {f"measurements/reflectance/r{product.pixel_m[b.lower()]}m/{b.lower()}"
              for b in aoi_done["route"]["bands"]}
    scl = "conditions/mask/l2a_classification/r20m/scl"  # one chunk
    assert zarr_chunks_fetched(range_server.ranges, name) == {**{array: {"1.1"} for array in routed}, scl: {"0.0"}}
    with rasterio.io.MemoryFile(result(jobs_server.url, aoi_done["id"], "geotiff").content) as mem, mem.open() as src:
        west, south, east, north = src.bounds
        assert (west - 399960) % 10 == 0 and (4600020 - north) % 10 == 0  # the product's pixel lines
        assert west <= 400_320 < west + 20 and east - 20 < 400_560 <= east and north - 20 < 4_599_660 <= north

    range_server.ranges.clear()
    zarr_job = httpx.post(f"{jobs_server.url}/jobs/landcover", json={"stac_item": f"{range_server.url}/eopf_item.json"},
                          timeout=60)
    assert zarr_job.status_code == 202, zarr_job.text
    urls = []
    for band, counts in product.counts.items():
        write_cog(range_server.root / f"{band.upper()}.tif", counts[None], None, origin=(399960, 4600020),
                  pixel=product.pixel_m[band])
        urls.append(f"{range_server.url}/{band.upper()}.tif")
    cog_job = httpx.post(f"{jobs_server.url}/jobs/landcover", json={"url": urls, "scale": "0.0001", "offset": "-0.1"},
                         timeout=60)
    assert cog_job.status_code == 202, cog_job.text
    zarr_done, cog_done = wait_done(jobs_server.url, zarr_job.json()["id"]), wait_done(jobs_server.url,
                                                                                        cog_job.json()["id"])
    assert zarr_done["state"] == cog_done["state"] == "done", (zarr_done, cog_done)
    assert zarr_done["route"] == cog_done["route"]
    assert set(zarr_chunks_fetched(range_server.ranges, name)) <= routed | {scl}  # no other band's chunks
    summary = result(jobs_server.url, zarr_done["id"], "json").json()
    used = [i for i in summary["inputs"] if i["used"] and i["mapped_to"] in summary["bands"]]  # not the SCL
    assert used and all("x 0.0001 + -0.1 (the file's scale/offset)" in i["conversions"] for i in used)
    assert summary["catalogue"][0]["asset"] == "product"
    from_zarr = cog_array(server_type, result(jobs_server.url, zarr_done["id"], "geotiff").content)
    from_cogs = cog_array(server_type, result(jobs_server.url, cog_done["id"], "geotiff").content)
    np.testing.assert_array_equal(from_zarr, from_cogs)
    with rasterio.io.MemoryFile(result(jobs_server.url, zarr_done["id"], "geotiff").content) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 32633 and src.transform.c == 399960 and src.transform.f == 4600020
        item = result(jobs_server.url, zarr_done["id"], "stac").json()  # as the result's own grid says
        labels = item["assets"]["labels"]
        assert (labels["proj:transform"], labels["proj:shape"]) == (list(src.transform)[:6], [src.height, src.width])
    names = list(summary.get("classes") or summary["probabilities"])
    assert [c["description"] for c in labels["classification:classes"]] == [*names, labels[
        "classification:classes"][-1]["description"]] and item["properties"]["datetime"] == "2025-05-22T12:50:39Z"


def test_an_s3_url_is_read_through_gdal(jobs_server, s3_server, scene_cog):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="plain")
    s3.upload_file(str(scene_cog), "plain", "scene.tif")
    r = httpx.post(f"{jobs_server.url}/jobs/flood", json={"url": "s3://plain/scene.tif", "geojson": False}, timeout=60)
    assert r.status_code == 202, r.text
    status = wait_done(jobs_server.url, r.json()["id"])
    assert status["state"] == "done" and "geojson" not in status["results"], status


def test_a_job_tells_its_notify_url_when_it_ends_and_tries_again_while_the_receiver_fails(jobs_server, scene_cog,
                                                                                          webhook):
    """A pipeline learns its map is ready without polling: the job's status, its result URLs absolute, is POSTed to
    the notify URL it gave; a receiver that fails (503) is tried again, and its answer does not change the job."""
    hook = webhook([503])
    r = submit_upload(jobs_server.url, scene_cog, notify=f"{hook.url}/mapex?flood=1")
    assert r.status_code == 202, r.text
    assert wait_done(jobs_server.url, r.json()["id"])["state"] == "done"
    (path, first), (again, told) = hook.wait(2)
    assert path == again == "/mapex?flood=1" and first == told and told["id"] == r.json()["id"]
    assert told["state"] == "done" and set(told["results"]) == {"geotiff", "json", "geojson", "stac"}
    summary = httpx.get(told["results"]["json"], timeout=30)  # absolute: the service as the sender reached it
    assert told["results"]["json"].startswith(jobs_server.url) and summary.json()["classes"]
    time.sleep(1.5)
    assert len(hook.posts) == 2  # taken: not sent again
    for headers, raw in hook.received:  # signed with the deployment's secret (MAPEX_JOB_NOTIFY_SECRET)
        signature = "sha256=" + hmac.new(NOTIFY_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        assert headers["X-Mapex-Signature-256"] == signature
    refused = submit_upload(jobs_server.url, scene_cog, notify="ftp://example.org/hook")
    assert refused.status_code == 422 and "notify='ftp://example.org/hook' is not an http(s) URL" in refused.text


def test_cancel_and_the_errors_a_user_can_make(jobs_server, sar, tmp_path, webhook):
    big = write_cog(tmp_path / "big.tif", np.tile(sar, (1, 4, 4)), ["VV", "VH"])
    hook = webhook([])
    job = submit_upload(jobs_server.url, big, notify=hook.url).json()
    r = httpx.delete(f"{jobs_server.url}/jobs/{job['id']}", timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert [(b["id"], b["state"], b["results"]) for _, b in hook.wait(1)] == [(job["id"], "cancelled", {})]
    time.sleep(0.5)
    assert httpx.get(f"{jobs_server.url}/jobs/{job['id']}").json()["state"] == "cancelled"
    assert httpx.delete(f"{jobs_server.url}/jobs/{job['id']}").status_code == 409
    r = result(jobs_server.url, job["id"], "geotiff")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]
    post = lambda body: httpx.post(f"{jobs_server.url}/jobs/flood", json=body, timeout=60)  # noqa: E731
    cases = [
        (post({}), 422, "names no scene"),
        (post({"url": "file:///etc/passwd"}), 422, "http(s)://"),
        (post({"url": "/vsicurl/http://x/y.tif"}), 422, "http(s)://"),
        (post({"url": "https://x/y.tif", "stac_item": "https://x/i.json"}), 422, "one source"),
        (post({"uri": "https://x/y.tif"}), 422, "not valid"),
        (post({"url": "http://127.0.0.1:9/missing.tif"}), 502, "could not be reached"),
        (post({"stac_item": {"type": "FeatureCollection", "features": []}}), 422, "holds no items"),
        (post({"stac_item": {"type": "Collection", "id": "sentinel-2-l2a", "links": []}}), 422, "not a STAC item"),
        (post({"stac_item": {"type": "Feature", "assets": {"thumb": {"href": "t.png"}}}}), 422, "no asset"),
        (post({"url": "https://x/y.tif", "mask_threshold": "SCL:4"}), 422, "no cloud probability or clear score"),
        (post({"url": "https://x/y.tif", "aoi": {"type": "Point", "coordinates": [1, 2]}}), 422, "not a polygon"),
        (post({"url": "https://x/y.tif", "bbox": "1,2,3,4", "aoi": {"type": "Polygon", "coordinates": [
            [[1, 2], [3, 2], [3, 4], [1, 2]]]}}), 422, "give bbox or aoi, not both"),
        (httpx.post(f"{jobs_server.url}/jobs/flood", params={"mask_threshold": "cs_cdf:60"},
                    files={"file": ("s1.tif", b"II*\0")}), 422, "its values run 0-1"),
        (httpx.post(f"{jobs_server.url}/jobs/no-such-task", json={"url": "https://x/y.tif"}), 404, "tasks served"),
        (httpx.get(f"{jobs_server.url}/jobs/0123abc"), 404, "no job"),
        (httpx.get(f"{jobs_server.url}/jobs/..%2f..%2fetc"), 404, ""),  # never a path on the server
    ]
    r = httpx.post(f"{jobs_server.url}/jobs/flood", files={"file": ("garbage.tif", b"not a tiff" * 100)})
    cases.append((r, 400, "garbage.tif"))
    assert "/input/" not in r.text, "no server path in the message"
    for r, status, hint in cases:
        assert r.status_code == status and hint in r.json()["detail"], (status, hint, r.status_code, r.text)
    assert not list((Path(jobs_server.log_path).parent / "jobs").glob(f"{job['id']}*")), "a cancelled job's files go"


def test_a_url_its_server_refuses_or_lacks_is_refused_saying_what_would_be_served(jobs_server, range_server, s3_server):
    """A login-protected URL (NASA Earthdata's HLS and OPERA) answered 401 and the job was refused with "the upload
    is not a readable raster"; now the answer names the server's refusal and the ways round it, and a missing file
    says so, by http(s):// and by s3://. The URL, which may carry a signature, is never in the answer."""
    s3_server.client().create_bucket(Bucket="empty")
    cases = [(f"{range_server.url}/private/HLS.S30.T33UUP.2021180T100031.v2.0.B04.tif?token=s3cret", 422,
              "refused it (HTTP 401)", "urs.earthdata.nasa.gov"),
             (f"{range_server.url}/nowhere/scene.tif", 422, "no file at that URL (HTTP 404)", "check the URL"),
             ("s3://empty/scene.tif", 422, "no file at that URL (The specified key does not exist)", "check the URL")]
    for url, status, said, remedy in cases:
        r = httpx.post(f"{jobs_server.url}/jobs/flood", json={"url": url}, timeout=60)
        assert r.status_code == status and r.json()["error"] == "RemoteFileError", r.text
        assert said in r.json()["detail"] and remedy in r.json()["detail"] and "s3cret" not in r.text, r.text


def test_replicas_that_run_no_jobs_pass_them_to_the_one_that_does(built_repo, start_server, scene_cog, tmp_path):
    """Kubernetes' layout (docs/deploy.md): a replica with MAPEX_JOBS_URL in front of the jobs server, one API key.
    The replica runs two service processes (``UVICORN_WORKERS=2``), which could not run jobs themselves: each passes
    them on."""
    key = {"MAPEX_API_KEY": "one-key-for-both"}
    auth = {"Authorization": "Bearer one-key-for-both"}
    runner = start_server(built_repo, MAPEX_JOBS_DIR=str(tmp_path / "jobs"), **key)
    replica = start_server(built_repo, MAPEX_JOBS_URL=runner.url, MAPEX_JOBS_DIR=str(tmp_path / "no-jobs-here"),
                           UVICORN_WORKERS="2", **key)
    with scene_cog.open("rb") as f:
        r = httpx.post(f"{replica.url}/jobs/flood", files={"file": (scene_cog.name, f)}, headers=auth, timeout=60)
    assert r.status_code == 202 and r.headers["location"] == f"/jobs/{r.json()['id']}", r.text
    job_id = r.json()["id"]
    status = wait_done(replica.url, job_id, headers=auth)
    assert status["state"] == "done", status
    assert httpx.get(f"{runner.url}/jobs/{job_id}", headers=auth).json() == status
    assert [j["id"] for j in httpx.get(f"{replica.url}/jobs", headers=auth).json()] == [job_id]
    url = f"{replica.url}/jobs/{job_id}/result"
    whole = httpx.get(url, params={"format": "geotiff"}, headers=auth, timeout=60)
    assert whole.status_code == 200 and whole.headers["content-type"] == "image/tiff"
    assert whole.content == httpx.get(f"{runner.url}/jobs/{job_id}/result", params={"format": "geotiff"},
                                      headers=auth, timeout=60).content
    part = httpx.get(url, params={"format": "geotiff"}, headers={**auth, "Range": "bytes=100-199"}, timeout=60)
    assert part.status_code == 206 and part.content == whole.content[100:200]
    # the jobs server's answers come back as it gave them; a job id stays a job id, never a path
    for r, status_code, hint in [
        (httpx.delete(f"{replica.url}/jobs/{job_id}", headers=auth), 409, "done"),
        (httpx.get(f"{replica.url}/jobs/0123abc", headers=auth), 404, "no job"),
        (httpx.get(f"{replica.url}/jobs/..%2fmodels", headers=auth), 404, ""),
        (httpx.get(f"{replica.url}/jobs/{job_id}"), 401, "API key"),
    ]:
        assert r.status_code == status_code and hint in r.json()["detail"], (status_code, r.status_code, r.text)
    assert not (tmp_path / "no-jobs-here").exists(), "the replica opened a jobs store of its own"
    deadline = time.monotonic() + 120  # /readyz answers once one process is up; the other may still be loading
    while replica.log.count("Application startup complete") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert replica.log.count("Application startup complete") == 2, "the replica runs two service processes"
    assert "jobs disabled" not in replica.log, "a replica that passes jobs on has no reason to refuse them"
    assert "mapex_jobs{" in httpx.get(f"{runner.url}/metrics").text, "the jobs server reports its store"
    assert "mapex_jobs{" not in httpx.get(f"{replica.url}/metrics").text, "the replica has no store to report"
    # a client that leaves mid-upload: the replica drops the request, and no job comes of it
    with socket.create_connection(("127.0.0.1", replica.port), timeout=10) as sock:
        sock.sendall(b"POST /jobs/flood HTTP/1.1\r\nHost: replica\r\nAuthorization: Bearer one-key-for-both\r\n"
                     b"Content-Type: image/tiff\r\nContent-Length: 10000000\r\n\r\n" + scene_cog.read_bytes()[:65536])
    time.sleep(1)
    assert [j["id"] for j in httpx.get(f"{replica.url}/jobs", headers=auth).json()] == [job_id]
    assert "Traceback" not in replica.log, replica.log[-3000:]
    with scene_cog.open("rb") as f:  # and it still answers /predict itself
        assert httpx.post(f"{replica.url}/predict/flood", files={"file": f}, headers=auth, timeout=60).status_code == 200


def test_predict_answers_geojson_too(jobs_server, scene_cog):
    with scene_cog.open("rb") as f:
        r = httpx.post(f"{jobs_server.url}/predict/flood", params={"format": "geojson"}, files={"file": f}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    body = r.json()
    assert body["type"] == "FeatureCollection" and {f["properties"]["class"] for f in body["features"]} == {"flooded"}


def test_the_cli_submits_follows_and_downloads(jobs_server, scene_cog, uploaded, server_type, tmp_path):
    out, polygons = tmp_path / "flood.tif", tmp_path / "flood.geojson"
    cmd = [sys.executable, "-m", "mapex_serve", "predict", str(scene_cog), "--task", "flood", "--out", str(out),
           "--geojson", str(polygons), "--server", jobs_server.url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tile" in done.stderr, "a progress bar on stderr"
    labels = cog_array(server_type, out.read_bytes())[0]
    reference = cog_array(server_type, result(jobs_server.url, uploaded["id"], "geotiff").content)[0]
    assert (labels == reference).mean() >= 0.999
    assert json.loads(polygons.read_text())["features"]
    bad = subprocess.run([*cmd[:5], "--task", "no-such-task", "--out", str(out), "--server", jobs_server.url],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "tasks served" in bad.stderr
    # The reading options the service's 422s name reach it: a unit VV cannot be in is refused by the service.
    stated = subprocess.run([*cmd[:7], "--out", str(out), "--server", jobs_server.url, "--units", "VV:reflectance",
                             "--pixel-size", "native", "--reflectance", "as-is", "--backscatter", "as-is"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert stated.returncode == 1 and "units=reflectance cannot apply to VV" in stated.stderr, stated.stderr[-2000:]
    gamma0 = shutil.copy(scene_cog, tmp_path / "flood_gamma0.tif")  # says gamma0; the demo learned sigma0
    refused = subprocess.run([*cmd[:4], str(gamma0), *cmd[5:7], "--out", str(out), "--server", jobs_server.url],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "backscatter=as-is" in refused.stderr, refused.stderr[-2000:]


def test_a_result_cog_is_read_in_place_by_gdal_over_http_ranges(jobs_server, uploaded, server_type):
    """A user can open the result where it is served (``/vsicurl/``), GDAL fetching the blocks it reads; HEAD
    gives the size, as download managers ask."""
    url = f"/vsicurl/{jobs_server.url}/jobs/{uploaded['id']}/result?format=probabilities"
    content = result(jobs_server.url, uploaded["id"], "probabilities").content
    head = httpx.head(url.removeprefix("/vsicurl/"), timeout=10)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(content), head.headers
    assert head.headers["accept-ranges"] == "bytes" and not head.content
    whole = cog_array(server_type, content)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(url) as src:
        window = rasterio.windows.Window(0, 0, 100, 50)
        assert (src.read(window=window) == whole[:, :50, :100]).all()


def test_a_result_removed_while_it_downloads_is_sent_whole_and_by_ranges(tmp_path):
    """Expiry may remove a result after the route opened it (CI once saw a download cut off at 0 of 82,628 bytes):
    the held file still goes out whole, and by ranges, as GDAL's /vsicurl/ reads a COG."""
    from mapex_serve.routes.jobs import HeldFileResponse

    body = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()

    def download_after_removal(headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes], bytes]:
        path = tmp_path / "result.tif"
        path.write_bytes(body)
        response = HeldFileResponse(path.open("rb"), media_type="image/tiff", filename="flood-x.tif")
        path.unlink()  # what expiry does between the route and the body
        sent: list[dict] = []

        async def receive() -> dict:  # the client stays until the body is sent
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "query_string": b""}
        asyncio.run(response(scope, receive, send))
        return (sent[0]["status"], dict(sent[0]["headers"]),
                b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))

    status, headers, got = download_after_removal([])
    assert status == 200 and got == body and headers[b"content-length"] == str(len(body)).encode()
    assert b'filename="flood-x.tif"' in headers[b"content-disposition"]
    status, headers, got = download_after_removal([(b"range", b"bytes=1000-1999")])
    assert status == 206 and got == body[1000:2000] and headers[b"content-range"] == f"bytes 1000-1999/{len(body)}".encode()


def test_a_job_in_the_service_process_gives_the_files_a_decode_worker_gives(uploaded, jobs_server, scene_cog,
                                                                           start_server, built_repo, tmp_path):
    """Jobs run in the decode workers by default; with MAPEX_DECODE_WORKERS=0 the same scene, read and written in
    the service's threads, gives the same label, probability and GeoJSON files and the same summary."""
    assert decode_workers(jobs_server.pid), "the default service has decode workers"
    here = start_server(built_repo, MAPEX_DECODE_WORKERS="0", MAPEX_JOBS_DIR=str(tmp_path / "jobs"))
    assert decode_workers(here.pid) == []
    job = submit_upload(here.url, scene_cog, probabilities="true").json()
    assert wait_done(here.url, job["id"])["state"] == "done"
    for fmt in ("geotiff", "probabilities"):
        with rasterio.io.MemoryFile(result(here.url, job["id"], fmt).content) as a, \
                rasterio.io.MemoryFile(result(jobs_server.url, uploaded["id"], fmt).content) as b, \
                a.open() as mine, b.open() as theirs:
            np.testing.assert_array_equal(mine.read(), theirs.read())
            assert mine.profile == theirs.profile and mine.tags() == theirs.tags()
    assert result(here.url, job["id"], "geojson").json() == result(jobs_server.url, uploaded["id"], "geojson").json()
    assert result(here.url, job["id"], "json").json() == result(jobs_server.url, uploaded["id"], "json").json()


def _strips(jobs: Path, job_id: str) -> int:
    with sqlite3.connect(f"file:{jobs / 'jobs.sqlite3'}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM strips WHERE job = ?", (job_id,)).fetchone()[0]


def _wait(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _kill_every_worker(server) -> None:
    """SIGKILL every decode worker (the OOM killer, a crash in GDAL) and wait for the replacements."""
    victims = decode_workers(server.pid)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _wait(lambda: len(now := decode_workers(server.pid)) == len(victims) and not set(now) & set(victims),
          "no replacement workers came up")


def test_a_job_split_across_the_decode_workers_resumes_when_they_die_and_fails_when_they_die_again(
        built_repo, start_server, sar, tmp_path, server_type):
    """Two workers, two parts (the default on a GPU engine): a lone scene's rows run one part on each. Killed under
    the job, the workers are replaced and the job resumes after its recorded strips, its mask /predict's; killed
    twice, the job fails with DecodeUnavailableError and its files go; the pool recovers and runs the next job."""
    jobs = tmp_path / "jobs"
    s = start_server(built_repo, MAPEX_JOBS_DIR=str(jobs), MAPEX_DECODE_WORKERS="2", MAPEX_JOB_PARTS="2")
    scene = write_cog(tmp_path / "big.tif", np.tile(sar, (1, 6, 6)), ["VV", "VH"])  # 1920 x 1728: 4 strips
    job = submit_upload(s.url, scene).json()
    _wait(lambda: _strips(jobs, job["id"]) > 0, "no strip was written in time")
    _kill_every_worker(s)
    status = wait_done(s.url, job["id"])
    assert status["state"] == "done" and status["attempts"] == 1, status
    assert status["progress"]["tiles_done"] == status["progress"]["tiles_total"] > 5000
    assert "runs in 2 parts on the decode workers: rows 0-1024, 1024-1920" in s.log
    assert "it resumes on a fresh worker" in s.log and "of its strips are done" in s.log
    labels = cog_array(server_type, result(s.url, job["id"], "geotiff").content)[0]
    with scene.open("rb") as f:
        whole = server_type.cog_band(httpx.post(f"{s.url}/predict/flood", files={"file": f}, timeout=120).content)
    assert float((labels == whole).mean()) >= 0.999  # batch composition may flip a near-tie pixel, nothing else

    bigger = write_cog(tmp_path / "bigger.tif", np.tile(sar, (1, 12, 12)), ["VV", "VH"])  # 3840 x 3456: 8 strips
    doomed = submit_upload(s.url, bigger).json()
    recorded = 0
    for kill in (1, 2):  # the second once the resumed run has written a strip of its own
        _wait(lambda n=recorded: _strips(jobs, doomed["id"]) > n, f"no strip was written before kill {kill}")
        recorded = _strips(jobs, doomed["id"])
        _kill_every_worker(s)
    status = wait_done(s.url, doomed["id"])
    assert status["state"] == "failed" and status["error"]["error"] == "DecodeUnavailableError", status
    assert "submit it again" in status["error"]["detail"]
    assert not (jobs / doomed["id"]).exists(), "a failed job keeps its state, not its files"
    _wait(lambda: httpx.get(f"{s.url}/readyz").status_code == 200, "the pool did not recover")
    again = submit_upload(s.url, write_cog(tmp_path / "small.tif", sar[:, :128, :128], ["VV", "VH"])).json()
    assert wait_done(s.url, again["id"])["state"] == "done"
    assert 'mapex_decode_worker_restarts_total 6.0' in httpx.get(f"{s.url}/metrics").text


def test_a_result_gone_from_disk_answers_410_not_500(jobs_server, sar, tmp_path):
    """Expiry removes the files, then records it: a request between the two finds no file and is told it expired."""
    job = submit_upload(jobs_server.url, write_cog(tmp_path / "small.tif", sar[:, :128, :128], ["VV", "VH"])).json()
    assert wait_done(jobs_server.url, job["id"])["state"] == "done"
    (Path(jobs_server.log_path).parent / "jobs" / job["id"] / "result.tif").unlink()
    r = result(jobs_server.url, job["id"], "geotiff")
    assert r.status_code == 410 and "MAPEX_JOB_TTL_H" in r.json()["detail"], r.text


def test_a_job_killed_mid_way_resumes_after_its_last_strip_and_its_results_expire(built_repo, start_server, sar,
                                                                                    tmp_path, server_type):
    """SIGKILL while it runs: the restarted service resumes the job from its recorded strips, its answer is the
    one an uninterrupted run gives; past MAPEX_JOB_TTL_H the results are removed and GET answers 410."""
    jobs = tmp_path / "jobs"
    scene = write_cog(tmp_path / "big.tif", np.tile(sar, (1, 6, 6)), ["VV", "VH"])  # 1920 x 1728
    first = start_server(built_repo, MAPEX_JOBS_DIR=str(jobs))
    with scene.open("rb") as f:  # the uninterrupted answer, taken first so the results' short life below is theirs
        whole = server_type.cog_band(httpx.post(f"{first.url}/predict/flood", files={"file": f}, timeout=120).content)
    job = submit_upload(first.url, scene).json()
    db = sqlite3.connect(f"file:{jobs / 'jobs.sqlite3'}?mode=ro", uri=True)
    deadline = time.monotonic() + 120
    while not db.execute("SELECT count(*) FROM strips WHERE job = ?", (job["id"],)).fetchone()[0]:
        assert time.monotonic() < deadline, "no strip was written in time"
        time.sleep(0.05)
    first.proc.kill()
    first.proc.wait()
    db.close()
    killed = httpx.Client()  # nothing answers now
    with pytest.raises(httpx.HTTPError):
        killed.get(f"{first.url}/jobs/{job['id']}", timeout=2)
    ttl_h = 6 / 3600  # from the job's end: the status and result calls below need well under that, even loaded
    second = start_server(built_repo, MAPEX_JOBS_DIR=str(jobs), MAPEX_JOB_TTL_H=str(ttl_h))
    status = wait_done(second.url, job["id"])
    assert status["state"] == "done" and status["attempts"] == 2, status
    assert "resumes at row" in second.log
    content = result(second.url, job["id"], "geotiff").content
    resumed = cog_array(server_type, content)[0]
    with rasterio.io.MemoryFile(content) as mem, mem.open() as src:
        assert src.block_shapes[0] == (512, 512) and src.overviews(1) == [2, 4], "internal tiles and overviews"
    agree = float((resumed == whole).mean())
    print(f"resumed job vs /predict on the same scene: {agree:.4f} of pixels agree")
    assert agree >= 0.999
    deadline = time.monotonic() + 60
    while (r := result(second.url, job["id"], "geotiff")).status_code == 200:
        assert time.monotonic() < deadline, "the results did not expire"
        time.sleep(0.5)
    assert r.status_code == 410 and "MAPEX_JOB_TTL_H" in r.json()["detail"]
    assert httpx.get(f"{second.url}/jobs/{job['id']}").json()["expired"] is True
    assert not (jobs / job["id"]).exists()

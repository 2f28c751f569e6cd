"""The service end to end: a real uvicorn process on loopback over a repository built by export.build."""

import asyncio
import gzip
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile

from mapex_serve.cores import service_cores, usable_cores
from mapex_serve.local import LocalService, decode_workers
from mapex_serve.tiling import tile_grid

DATA = Path(__file__).parents[1] / "data"
S2 = DATA / "sentinel2_6band_10m_epsg32719.tif"  # the same files as conftest's; test modules cannot import it


def test_real_sentinel2_crop_routes_to_rgb_swir_for_wildfire_and_rgb_for_segmentation(server):
    r = server.post("wildfire", S2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["specialist"] == "wildfire-rgb+swir" and body["bands"] == ["B04", "B03", "B02", "B11", "B12"]
    forced = server.post("wildfire", S2, params={"modality": "SWIR"}).json()
    assert forced["specialist"] == "wildfire-swir" and forced["bands"] == ["B11", "B12"]
    assert body["label"] in ("unburned", "burned") and abs(sum(body["probabilities"].values()) - 1) < 1e-4

    r = server.post("landcover-seg", S2)
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
    assert r.headers["x-mapex-specialist"] == "landcover-seg-rgb" and r.headers["x-mapex-bands"] == "B04,B03,B02"
    with rasterio.open(S2) as src, MemoryFile(r.content) as mem, mem.open() as out:
        assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        labels = out.read(1)
    assert set(np.unique(labels)) <= set(range(7)), "every valid pixel gets a class"


def test_segmentation_of_a_scene_with_several_classes_finds_several(server):
    """Four synthetic scenes (the head's training distribution), whose land-cover maps hold several classes."""
    from training.data import SceneConfig, generate_scene, mosaic

    scenes = [generate_scene(np.random.default_rng(seed), SceneConfig(size=32)) for seed in range(4)]
    big = mosaic(scenes, columns=2)
    truth = big.landcover
    rgb = np.stack([np.rint(big.bands[b] / 1e-4) for b in ("B04", "B03", "B02")]).clip(0, 65535).astype(np.uint16)
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=3, width=64, height=64, dtype="uint16", crs="EPSG:32633",
                      transform=rasterio.Affine(10, 0, 500000, 0, -10, 5000000)) as dst:
            dst.write(rgb)
            dst.descriptions = ("B04", "B03", "B02")
        r = server.post("landcover-seg", mem.read())
    labels = server.cog_band(r.content)
    found, present = set(np.unique(labels)), set(np.unique(truth))
    print(f"classes present {sorted(present)}, found {sorted(found)}, pixel accuracy {(labels == truth).mean():.3f}")
    assert len(present) > 1 and len(found) > 1


def test_shuffling_the_band_order_of_the_input_gives_the_same_result(server, tmp_path):
    shuffled = tmp_path / "shuffled.tif"
    with rasterio.open(S2) as src:
        order = [6, 3, 1, 5, 2, 4]
        profile = src.profile
        with rasterio.open(shuffled, "w", **profile) as dst:
            for i, b in enumerate(order, start=1):
                dst.write(src.read(b), i)
                dst.set_band_description(i, src.descriptions[b - 1])
    a, b = server.post("landcover-seg", S2), server.post("landcover-seg", shuffled)
    assert a.status_code == b.status_code == 200
    assert (server.cog_band(a.content) == server.cog_band(b.content)).all()  # the inputs tag differs: band numbers
    assert server.post("wildfire", S2).json()["probabilities"] == server.post("wildfire", shuffled).json()["probabilities"]


def test_rgb_without_band_descriptions_needs_bands_and_the_dem_routes_to_elevation(server):
    r = server.post("landcover", DATA / "rmnp-rgb.tif")
    assert r.status_code == 422 and "bands=red,green,blue" in r.json()["detail"]
    # Named, the 8-bit display RGB is still not reflectance: a 422 that says so, until the caller states a scale.
    r = server.post("landcover", DATA / "rmnp-rgb.tif", params={"bands": "red,green,blue"})
    assert r.status_code == 422 and "8-bit values" in r.json()["detail"] and "scale=" in r.json()["detail"]
    r = server.post("landcover", DATA / "rmnp-rgb.tif", params={"bands": "red,green,blue", "scale": "0.0004"})
    assert r.status_code == 200 and r.json()["specialist"] == "landcover-rgb"
    assert "scale=/offset= parameters" in r.json()["inputs"][0]["conversions"][0]
    r = server.post("landcover", DATA / "rmnp-dem.tif", params={"bands": "elevation"})
    assert r.status_code == 200 and r.json()["specialist"] == "landcover-ele"


def test_raw_body_and_json_for_masks(server):
    r = httpx.post(f"{server.url}/predict/landcover-seg", content=S2.read_bytes(), timeout=60,
                   headers={"Content-Type": "image/tiff", "Accept": "application/json"})
    assert r.status_code == 200
    classes = r.json()["classes"]
    assert abs(sum(c["fraction"] for c in classes.values()) - 1) < 1e-6
    assert sum(c["pixels"] for c in classes.values()) == 200 * 300
    assert all(c["area_m2"] == c["pixels"] * 100.0 for c in classes.values()), "10 m pixels in a projected CRS"


@pytest.mark.parametrize(
    ("task", "content", "headers", "params", "status", "message"),
    [
        ("wildfire", b"not a tiff at all", {}, {}, 400, "not a readable raster"),
        ("cloud", S2.read_bytes(), {}, {}, 404, "tasks served: flood, landcover, landcover-seg, wildfire"),
        ("flood", S2.read_bytes(), {}, {}, 422, "band sets accepted: flood-sar: VV, VH"),
        ("wildfire", S2.read_bytes(), {}, {"modality": "SAR"}, 422, "with modality=SAR"),
        ("wildfire", S2.read_bytes(), {}, {"bands": "red,green"}, 422, "names given"),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what_would_be_accepted(server, task, content, headers, params, status, message):
    r = server.post(task, content, headers=headers, params=params)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def _large_rgb() -> bytes:
    """A 6 MiB uncompressed RGB GeoTIFF: a multipart body this large is read by its worker while it arrives."""
    bands = np.random.default_rng(0).integers(200, 3000, (3, 1024, 1024), dtype=np.uint16)
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=3, width=1024, height=1024, dtype="uint16", crs="EPSG:32633",
                      transform=rasterio.Affine(10, 0, 500000, 0, -10, 5000000)) as dst:
            dst.write(bands)
            dst.descriptions = ("B04", "B03", "B02")
        return mem.read()


def test_options_sent_as_form_fields_are_taken_as_the_query_is(server):
    """They were read past: a user who sent ``-F modality=SWIR`` or ``-F aoi=@basin.geojson`` got an answer without
    it. A small body may give them anywhere; a large one, read as it arrives, before its file; a job upload too."""
    s2 = ("s.tif", S2.read_bytes())
    r = server.http.post("/predict/wildfire", files=[("file", s2), ("modality", (None, b"SWIR"))])
    assert r.status_code == 200 and r.json()["specialist"] == "wildfire-swir", r.text[:300]
    large = ("rgb.tif", _large_rgb())  # 6 MiB: read while it arrives
    r = server.http.post("/predict/landcover-seg", files=[("format", (None, b"json")), ("file", large)])
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text[:300]
    r = server.http.post("/predict/landcover-seg", files=[("file", large), ("format", (None, b"json"))])
    assert r.status_code == 422 and "'format' comes after the file" in r.json()["detail"], r.text[:300]
    r = server.http.post("/predict/wildfire", files=[("file", s2), ("format", (None, b"png"))])
    assert r.status_code == 422 and "format='png' is not one of json, geotiff, geojson" in r.json()["detail"]
    r = server.http.post("/predict/wildfire", params={"modality": "RGB"},
                         files=[("file", s2), ("modality", (None, b"SWIR"))])
    assert r.status_code == 422 and "modality is given twice" in r.json()["detail"]
    r = server.http.post("/jobs/wildfire", files=[("modality", (None, b"SWIR")), ("file", s2)])
    assert r.status_code == 202 and r.json()["route"]["specialist"] == "wildfire-swir", r.text[:300]
    r = server.http.post("/jobs/wildfire", files=[("file", s2), ("simplify", (None, b"-1"))])
    assert r.status_code == 422 and "simplify" in r.json()["detail"], r.text[:300]
    paths = server.http.get("/openapi.json").json()["paths"]  # declared, for generated clients
    for path in ("/predict/{task}", "/jobs/{task}"):
        schema = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert {"file", "aoi", "bands", "units", "modality"} <= set(schema["properties"])
    assert paths["/predict/{task}"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"][
        "properties"]["format"]["enum"] == ["json", "geotiff", "geojson"]


@pytest.mark.parametrize(("path", "params", "message"), [
    ("/predict/wildfire", {"unit": "reflectance"}, "takes no query parameter 'unit'; did you mean units=?"),
    ("/predict/wildfire", {"format": "json", "mask_treshold": "0.3"}, "did you mean mask_threshold=?"),
    ("/jobs/wildfire", {"pixelsize": "native"}, "takes no query parameter 'pixelsize'; did you mean pixel_size=?"),
])
def test_a_misspelt_option_is_a_422_not_ignored(server, path, params, message):
    """FastAPI reads past query parameters a route does not declare: ``?unit=dB`` ran as if no unit were given."""
    r = server.http.post(path, params=params, files={"file": ("s.tif", S2.read_bytes())})
    assert r.status_code == 422 and r.json()["error"] == "UnknownOptionError", r.text
    assert message in r.json()["detail"] and "bbox" in r.json()["detail"]


def test_a_job_uploads_aoi_that_does_not_parse_is_a_422_not_a_500(server):
    """Found by the schema-driven fuzzing: the job request built from the query raised pydantic's error unhandled."""
    r = server.http.post("/jobs/wildfire", params={"aoi": "n\u00a7"}, files={"file": ("s.tif", S2.read_bytes())})
    assert r.status_code == 422 and "aoi= is not JSON" in r.json()["detail"], r.text[:300]


def test_a_json_job_request_with_options_in_its_query_is_a_422(server):
    """The JSON is the request: options in the query string were read past."""
    r = server.http.post("/jobs/wildfire", params={"units": "reflectance"}, json={"url": "https://host/scene.tif"})
    assert r.status_code == 422 and "takes its options in the JSON" in r.json()["detail"], r.text
    assert "units=reflectance" in r.json()["detail"]


@pytest.mark.parametrize("media", ["image/jp2", "application/x-netcdf"])
def test_a_raw_body_of_another_raster_format_is_taken_by_its_media_type(server, media, tmp_path, to_netcdf,
                                                                        to_geotiff):
    """A STAC asset's bytes posted with its media type (a SAFE's bands are ``image/jp2``) got a 415 asking for
    image/tiff, a format the service reads anyway; the answer is the one of the same values as a GeoTIFF."""
    with rasterio.open(S2) as src:
        rgb = src.read([3, 2, 1])  # B04, B03, B02
        profile = src.profile
    if media == "image/jp2":
        path = tmp_path / "rgb.jp2"
        with rasterio.open(path, "w", driver="JP2OpenJPEG", count=3, width=rgb.shape[2], height=rgb.shape[1],
                           dtype=rgb.dtype, crs=profile["crs"], transform=profile["transform"], QUALITY=100,
                           REVERSIBLE=True) as dst:
            dst.write(rgb)
        body = path.read_bytes()
    else:
        body = to_netcdf(tmp_path, {"B04": rgb[0], "B03": rgb[1], "B02": rgb[2]})
    params = {"bands": "B04,B03,B02"} if media == "image/jp2" else {}
    r = server.http.post("/predict/landcover", content=body, headers={"Content-Type": media}, params=params)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["inputs"][0]["file"].startswith("upload.") and r.json()["specialist"] == "landcover-rgb"
    as_geotiff = server.post("landcover", to_geotiff(rgb, ["B04", "B03", "B02"]))
    assert r.json()["probabilities"] == pytest.approx(as_geotiff.json()["probabilities"], abs=1e-5)


def test_made_up_task_names_are_counted_as_one_series(server):
    """A scanner's paths must not each become a time series of their own: the service would grow with them."""
    for task in ("cloud-x1", "cloud-x2"):
        assert server.post(task, S2.read_bytes()).status_code == 404
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "cloud-x" not in metrics
    assert _sample(metrics, 'mapex_requests_total{specialist="-",status="404",task="unknown"}') >= 2


def test_unsupported_media_type(server):
    r = httpx.post(f"{server.url}/predict/wildfire", content=S2.read_bytes(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "image/tiff" in r.json()["detail"]


@pytest.mark.parametrize("sent_as", ["raw gzip", "raw gzip, 4 MiB or more, chunked", "raw br, chunked",
                                     "multipart gzip", "job upload gzip"])
def test_an_upload_with_a_content_encoding_is_decoded_if_gzip_or_refused_with_415(server, to_multipart, sent_as):
    """A raw body sent gzip-encoded is a gzip file: inflated in the decode worker as archives are, the answer of the
    file sent as it is. A coding the service does not decode (br), or a gzip-encoded multipart body (its parts
    cannot be found in the stream), gets 415 with Accept-Encoding: identity (RFC 9110) before anything is received:
    before, a gzip stream was taken for the file (400) and br was read as if its bytes were the file."""
    data = S2.read_bytes()
    body = gzip.compress(data * (10 if "4 MiB" in sent_as else 1), compresslevel=1)  # 10 copies: 4.4 MiB
    encoding = "br" if "br" in sent_as else "gzip"
    headers = {"Content-Type": "image/tiff", "Content-Encoding": encoding}
    path = "/jobs/flood" if sent_as.startswith("job") else "/predict/wildfire"
    if "multipart" in sent_as or sent_as.startswith("job"):
        body, content_type = to_multipart("s.tif", body)
        headers["Content-Type"] = content_type
    content = iter([body[i:i + 2**20] for i in range(0, len(body), 2**20)]) if "chunked" in sent_as else body
    params = {} if sent_as.startswith("job") else {"format": "json"}  # a job takes no format (a 422 that names it)
    r = httpx.post(f"{server.url}{path}", content=content, headers=headers, params=params, timeout=60)
    if sent_as.startswith("raw gzip"):  # of 10 copies end to end, GDAL reads the first: the same scene
        plain = httpx.post(f"{server.url}{path}", content=data, headers={"Content-Type": "image/tiff",
                                                                          "Content-Encoding": "identity"},
                           params={"format": "json"}, timeout=60)
        assert r.status_code == plain.status_code == 200, r.text[:300]
        body = r.json()
        assert body.pop("archives")[0]["kind"] == "gzip file" and body == plain.json()
    else:
        assert r.status_code == 415, r.text[:300]
        assert r.headers["accept-encoding"] == "identity" and f"Content-Encoding {encoding!r}" in r.json()["detail"]


def test_64_concurrent_requests_succeed_and_share_batches(server):
    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            content = S2.read_bytes()
            return await asyncio.gather(*(
                client.post(f"{server.url}/predict/wildfire", files={"file": ("s.tif", content)}) for _ in range(64)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 64
    metrics = httpx.get(f"{server.url}/metrics").text
    count = _sample(metrics, 'mapex_batch_size_count{specialist="wildfire-rgb+swir"}')
    total = _sample(metrics, 'mapex_batch_size_sum{specialist="wildfire-rgb+swir"}')
    print(f"wildfire-rgb+swir: {total:.0f} tiles in {count:.0f} batches, {total / count:.1f} tiles a batch")
    assert total / count > 1
    assert _sample(metrics, 'mapex_requests_total{specialist="wildfire-rgb+swir",status="200",task="wildfire"}') >= 64


def _sample(text: str, name: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_health_models_and_open_inference_protocol(server):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "live"}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    models = httpx.get(f"{server.url}/models").json()
    assert "wildfire-swir" in models["specialists"] and models["specialists"]["wildfire-swir"]["provider"]
    # On the CPU every core runs a batch of its own, one ONNX Runtime thread each (MAPEX_ENGINE_RUNNERS unset).
    assert {k: models["specialists"]["flood-sar"][k] for k in ("runners", "intra_op_threads")} == {
        "runners": service_cores(), "intra_op_threads": 1}
    meta = httpx.get(f"{server.url}/v2/models/flood-sar").json()
    assert meta["inputs"][0]["shape"] == [-1, 2, 32, 32]
    assert httpx.get(f"{server.url}/v2/models/flood-sar/ready").json()["ready"] is True
    x = np.random.default_rng(0).normal(-12, 4, (2, 2, 32, 32)).astype(np.float32)
    r = httpx.post(f"{server.url}/v2/models/flood-sar/infer",
                   json={"inputs": [{"name": "input", "shape": [2, 2, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]})
    out = r.json()["outputs"][0]
    assert r.status_code == 200 and out["shape"] == [2, 2, 32, 32]
    assert np.allclose(np.asarray(out["data"]).reshape(out["shape"]).sum(axis=1), 1, atol=1e-5)
    assert httpx.get(f"{server.url}/v2/models/nothing").status_code == 404


def test_limits_api_key_and_a_tampered_artefact(built_repo, start_server, tmp_path):
    repo = tmp_path / "repo"
    for name in ("wildfire-swir", "flood-sar"):
        shutil.copytree(built_repo / name, repo / name)
    with open(repo / "flood-sar" / "1" / "model.onnx", "ab") as f:
        f.write(b"tampered")
    s = start_server(repo, MAPEX_API_KEY="secret", MAPEX_MAX_UPLOAD_MB="0.1", MAPEX_MAX_PIXELS="10000")
    try:
        models = httpx.get(f"{s.url}/models").json()
        assert list(models["specialists"]) == ["wildfire-swir"]
        assert "sha256" in models["refused"][0]["reason"] and models["refused"][0]["entry"] == "flood-sar/1"
        assert str(repo) not in json.dumps(models) and str(repo.resolve()) not in json.dumps(models), "no server paths"
        assert s.post("wildfire", S2).status_code == 401
        tensor = {"inputs": [{"name": "input", "shape": [1, 2, 32, 32], "datatype": "FP32", "data": [0.5] * 2048}]}
        r = httpx.post(f"{s.url}/v2/models/wildfire-swir/infer", json=tensor)
        assert (r.status_code, r.headers.get("www-authenticate")) == (401, "Bearer"), "infer asks for the key too"
        auth = {"Authorization": "Bearer secret"}
        assert httpx.post(f"{s.url}/v2/models/wildfire-swir/infer", json=tensor, headers=auth).status_code == 200
        big = {"inputs": [{"name": "input", "shape": [16, 2, 32, 32], "datatype": "FP32", "data": [0.5] * 32768}]}
        r = httpx.post(f"{s.url}/v2/models/wildfire-swir/infer", json=big, headers=auth)
        assert r.status_code == 413 and "MAPEX_MAX_UPLOAD_MB" in r.json()["detail"], "infer bodies are limited too"
        r = s.post("wildfire", S2, headers=auth)
        assert r.status_code == 413 and "MAPEX_MAX_UPLOAD_MB" in r.json()["detail"]
        with rasterio.open(S2) as src:
            small = MemoryFile()
            with small.open(**{**src.profile, "width": 120, "height": 100}) as dst:
                dst.write(src.read(window=((0, 100), (0, 120))))
                dst.descriptions = src.descriptions
            content = small.read()
        r = s.post("wildfire", content, headers=auth)
        assert r.status_code == 413 and "MAPEX_MAX_PIXELS" in r.json()["detail"]
        assert httpx.get(f"{s.url}/healthz").status_code == 200, "health routes stay open"
    finally:
        s.stop()


def test_a_request_whose_work_outlasts_the_time_limit_gets_504(built_repo, start_server, tmp_path):
    """Its upload is in at once (loopback); its 3,700 tiles are not done within a quarter of a second."""
    shutil.copytree(built_repo / "wildfire-swir", tmp_path / "repo" / "wildfire-swir")
    s = start_server(tmp_path / "repo", MAPEX_REQUEST_TIMEOUT_S="0.25")
    with rasterio.open(S2) as src:  # the crop six times larger each way, nearest: the same values
        profile = dict(src.profile, height=src.height * 6, width=src.width * 6,
                       transform=src.transform * src.transform.scale(1 / 6))
        with rasterio.open(tmp_path / "large.tif", "w", **profile) as dst:
            dst.write(src.read(out_shape=(src.count, src.height * 6, src.width * 6)))
            dst.descriptions, tags = src.descriptions, src.tags()
            dst.update_tags(**tags)
    r = s.post("wildfire", tmp_path / "large.tif")
    assert r.status_code == 504 and "MAPEX_REQUEST_TIMEOUT_S" in r.json()["detail"], r.text[:300]
    assert httpx.get(f"{s.url}/healthz").status_code == 200


def test_an_upload_slower_than_the_time_limit_gets_408_with_its_speed_and_what_would_do(built_repo, start_server,
                                                                                          tmp_path):
    """A slow link, not a slow service: the answer says how fast the body came, how long it would need, and the way
    round (a job's upload has no time limit), and closes the connection (the rest of the body is never read)."""
    shutil.copytree(built_repo / "wildfire-swir", tmp_path / "repo" / "wildfire-swir")
    s = start_server(tmp_path / "repo", MAPEX_REQUEST_TIMEOUT_S="1")
    body = S2.read_bytes()  # 459 KiB at about 1 Mbit/s: some 3.7 s

    def slowly() -> Iterator[bytes]:
        for at in range(0, len(body), 16 * 1024):
            time.sleep(0.125)
            yield body[at: at + 16 * 1024]

    r = httpx.post(f"{s.url}/predict/wildfire", content=slowly(), timeout=30,
                   headers={"Content-Type": "image/tiff", "Content-Length": str(len(body))})
    detail = r.json()["detail"]
    assert (r.status_code, r.json()["error"], r.headers["connection"]) == (408, "UploadTimeoutError", "close"), r.text
    assert "MiB in" in detail and "Mbit/s" in detail and "POST /jobs" in detail and "MAPEX_REQUEST_TIMEOUT_S" in detail
    need = float(detail.split("need about ")[1].split(" s")[0])
    assert 2 <= need <= 8, detail  # about 3.7 s at the speed it came
    assert 'status="408"' in httpx.get(f"{s.url}/metrics").text
    r = httpx.post(f"{s.url}/v2/models/wildfire-swir/infer", content=slowly(), timeout=30,  # the same for tensors
                   headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body)),
                            "Inference-Header-Content-Length": "2"})
    assert (r.status_code, r.headers["connection"]) == (408, "close"), r.text
    assert "Mbit/s" in r.json()["detail"] and "send fewer tiles" in r.json()["detail"]
    assert httpx.get(f"{s.url}/healthz").status_code == 200


def test_the_hot_routes_skip_fastapis_routing_yet_answer_as_it_would(server):
    """/predict and /v2 infer go through ``routes/lane.py``; FastAPI's 422s, the app's error bodies and OpenAPI stay."""
    tiff = {"Content-Type": "image/tiff"}
    r = httpx.post(f"{server.url}/predict/wildfire", params={"format": "png"}, content=S2.read_bytes(), headers=tiff)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "format"], r.text  # left to FastAPI
    r = httpx.post(f"{server.url}/predict/nothing", content=S2.read_bytes(), headers=tiff)
    assert (r.status_code, r.json()["error"]) == (404, "UnknownTaskError") and "wildfire" in r.json()["detail"]
    tensor = {"inputs": [{"name": "input", "shape": [1, 2, 32, 32], "datatype": "FP32", "data": [0.5] * 2048}]}
    r = httpx.post(f"{server.url}/v2/models/nothing/infer", json=tensor)
    assert r.status_code == 404 and "no model 'nothing'" in r.json()["error"]
    r = httpx.post(f"{server.url}/predict/wildfire", params={"format": "json", "modality": "SWIR"}, content=S2.read_bytes(),
                   headers=tiff)
    assert r.status_code == 200 and r.headers["x-mapex-specialist"] == "wildfire-swir", "the query reaches the endpoint"
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert "/predict/{task}" in paths and "/v2/models/{name}/infer" in paths


def test_a_lane_answers_before_fastapis_stack_and_an_unexpected_error_there_is_a_plain_500_raised_on(built_repo):
    """``FastLane.take`` runs ahead of FastAPI's middleware, so it stands in for ``ServerErrorMiddleware`` itself:
    a bug in a lane's endpoint is answered 500 (the response not yet started) and raised on for the server to log."""
    import re

    from mapex_serve.app import create_app
    from mapex_serve.registry import Registry
    from mapex_serve.routes.lane import FastLane, Lane
    from mapex_serve.settings import Settings

    app = create_app(Settings(model_repo=built_repo, decode_workers=0))
    app.state.mapex.registry = Registry.load(app.state.mapex.settings)  # real engines, warm: the state is ready

    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    app.lane = FastLane([Lane(re.compile(r"/broken"), broken)])

    def call(path: str) -> tuple[bool, list[dict], BaseException | None]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": [], "query_string": b""}
        try:
            return asyncio.run(app.lane.take(app, scope, receive, send)), sent, None
        except RuntimeError as e:
            return True, sent, e

    taken, sent, error = call("/broken")
    assert taken and str(error) == "a bug"
    assert sent[0]["status"] == 500 and sent[1]["body"] == b"Internal Server Error"
    taken, sent, error = call("/predict/wildfire")  # not a lane of this app: left to FastAPI, nothing sent
    assert (taken, sent, error) == (False, [], None)


def test_each_malformed_upload_gets_its_4xx_and_a_message(server, malformed):
    for kind, m in malformed.items():
        r = httpx.post(f"{server.url}/predict/{m.task}", content=m.content, headers={"Content-Type": m.content_type})
        assert (r.status_code, m.hint in r.json()["detail"]) == (m.status, True), (kind, r.text)


@pytest.mark.parametrize("env", [{}, {"MAPEX_MAX_BATCH": "8", "MAPEX_MAX_QUEUE": "16"},
                                 {"MAPEX_ENGINE_RUNNERS": "1"}],
                         ids=["default", "full queue", "one engine runner"])
def test_sigterm_under_load_completes_every_accepted_request(built_repo, start_server, env):
    """Every request the server accepted before SIGTERM gets an answer: its result, or a 503 it can retry
    (a full queue refuses new requests at once); none is left to hang or reset."""
    s = start_server(built_repo, **env)
    content = S2.read_bytes()

    async def load():
        async with httpx.AsyncClient(timeout=120) as client:
            tasks = [asyncio.create_task(client.post(f"{s.url}/predict/wildfire", files={"file": ("s.tif", content)}))
                     for _ in range(16)]
            await asyncio.sleep(0.3)
            s.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(load())
    code = s.proc.wait(60)
    s.stop()
    accepted = [r for r in results if isinstance(r, httpx.Response)]
    assert any(r.status_code == 200 for r in accepted), "some requests were served before the signal"
    allowed = {200, 503} if "MAPEX_MAX_QUEUE" in env else {200}  # only a full queue may refuse, with Retry-After
    assert all(r.status_code in allowed and (r.status_code == 200 or r.headers.get("retry-after")) for r in accepted), \
        [(r.status_code, r.text[:200]) for r in accepted]
    refused = [r for r in results if not isinstance(r, httpx.Response)]
    assert all(isinstance(e, httpx.ConnectError) for e in refused), refused
    # uvicorn drains, runs the lifespan exit, then re-raises the signal: a graceful exit by SIGTERM.
    assert code in (0, -signal.SIGTERM) and "Finished server process" in s.log, s.log[-2000:]


def test_a_synthetic_flood_scene_gets_the_mask_its_engine_computes_and_that_its_labels_show(server, built_repo, tmp_path):
    """End to end on a 96 x 96 mosaic of nine tile-sized SAR scenes (the heads' training distribution).

    The served mask must be what the engine computes on the same overlapping tiles, blended (read
    from the file as written, so a shift, flip or band swap would show); beside it, the engine on
    each mosaic cell alone and the labels, printed with an all-flooded baseline.
    """
    import onnxruntime as ort

    from mapex_serve.predict import overlap_for
    from mapex_serve.tiling import DatasetWindows, MaskBlender, batched, read_tiles
    from training.data import SceneConfig, generate_scene, mosaic, write_scene_geotiff

    scenes = [generate_scene(np.random.default_rng(seed), SceneConfig(size=32, flood_prob=1.0)) for seed in range(9)]
    path = write_scene_geotiff(mosaic(scenes, columns=3), tmp_path / "flood.tif", ["VH", "VV"])  # not the manifest's order
    r = server.post("flood", path)
    assert r.status_code == 200 and r.headers["x-mapex-specialist"] == "flood-sar"
    served = server.cog_band(r.content) == 1
    entry = next((built_repo / "flood-sar").iterdir())
    bands = [b["name"] for b in json.loads((entry / "manifest.json").read_text())["bands"]]
    session = ort.InferenceSession(entry / "model.onnx", providers=["CPUExecutionProvider"])
    run = lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]  # noqa: E731
    with rasterio.open(path) as src:
        order = [list(src.descriptions).index(b) + 1 for b in bands]
        blender = MaskBlender(src.height, src.width, 2, 32, overlap_for(32))
        tiles = tile_grid(src.height, src.width, 32, overlap_for(32))
        for batch in batched(read_tiles(DatasetWindows(src, order), tiles), 16):
            for t, p in zip(batch, run(np.stack([t.data for t in batch])), strict=True):
                blender.add(t.tile, p, t.valid)
    blended = blender.result().labels == 1
    cells = run(np.stack([np.stack([s.bands[b] for b in bands]) for s in scenes]).astype(np.float32)).argmax(1) == 1
    direct = np.block([list(cells[r : r + 3]) for r in range(0, 9, 3)])
    truth = np.block([[s.flood for s in scenes[r : r + 3]] for r in range(0, 9, 3)])
    same, cellwise = (served == blended).mean(), (served == direct).mean()
    iou_served, iou_direct = ((m & truth).sum() / (m | truth).sum() for m in (served, direct))
    print(f"flood on a 96 x 96 synthetic SAR mosaic: {same:.4f} of pixels as the engine on the same tiles, "
          f"{cellwise:.3f} as the engine on each cell alone (tiles straddling the seams see two scenes); IoU served "
          f"{iou_served:.3f}, engine per cell {iou_direct:.3f}, an all-flooded mask {truth.mean():.3f}")
    assert same >= 0.999  # batch composition may flip a near-tie pixel, nothing else
    assert iou_served > iou_direct - 0.1  # tiling across the seams costs the answer little


def test_a_client_that_leaves_stops_its_tiles(built_repo, start_server, to_geotiff, tmp_path):
    """Closing the connection mid-request cancels it: its remaining tiles never reach the engine (status 499)."""
    import socket
    from urllib.parse import urlsplit

    shutil.copytree(built_repo / "flood-sar", tmp_path / "repo" / "flood-sar")
    s = start_server(tmp_path / "repo", MAPEX_MAX_BATCH="8")
    sar = np.random.default_rng(0).normal(-12, 2, (2, 1024, 2048)).astype(np.float32)
    body = to_geotiff(sar, ["VV", "VH"])
    total = len(tile_grid(1024, 2048, 32, 8))
    url = urlsplit(s.url)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(f"POST /predict/flood HTTP/1.1\r\nHost: x\r\nContent-Type: image/tiff\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.5)  # the request is tiling and running batches now
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{s.url}/metrics").text
        if 'status="499"' in metrics:
            break
        time.sleep(0.2)
    ran = _sample(metrics, 'mapex_batch_size_sum{specialist="flood-sar"}')
    print(f"client left: {ran:.0f} of {total} tiles ran")
    assert 'mapex_requests_total{specialist="-",status="499",task="flood"} 1.0' in metrics, metrics[-3000:]
    assert ran < total / 2


def test_several_service_processes_share_the_cores_serve_predict_and_refuse_jobs_with_the_reason(built_repo, tmp_path):
    """``--workers 2`` (``UVICORN_WORKERS=2``, as the Docker image takes it): two processes, each with half the cores
    for its engines; /predict answers from both; jobs, which one process must run, are refused with a 503 that
    says why."""
    with LocalService(built_repo, tmp_path / "server.log", {"OMP_NUM_THREADS": "1"}, ready_timeout=180,
                      args=["--workers", "2"]) as s:
        deadline = time.monotonic() + 120
        while len(decode_workers(s.pid)) < 2 and time.monotonic() < deadline:  # uvicorn's two (spawned) processes
            time.sleep(0.2)
        assert len(decode_workers(s.pid)) == 2
        for _ in range(8):  # connections land on either process
            models = httpx.get(f"{s.url}/models", timeout=30).json()
            assert models["specialists"]["flood-sar"]["runners"] == max(usable_cores() // 2, 1)
            r = httpx.post(f"{s.url}/predict/wildfire", files={"file": ("s.tif", S2.read_bytes())}, timeout=60)
            assert r.status_code == 200, r.text[:300]
        r = httpx.post(f"{s.url}/jobs/wildfire", files={"file": ("s.tif", S2.read_bytes())}, timeout=60)
        assert r.status_code == 503, r.text[:300]
        assert "UVICORN_WORKERS=2" in r.json()["detail"] and "one service process" in r.json()["detail"]


def test_the_cli_refuses_fewer_than_one_service_process():
    r = subprocess.run([sys.executable, "-m", "mapex_serve", "--workers", "0"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2 and "--workers must be at least 1, not 0" in r.stderr

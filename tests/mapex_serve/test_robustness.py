"""Load, overload, fuzz and schema-driven tests against a real server: nothing is lost, nothing 5xx."""

import asyncio
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile

from mapex_serve.routes.predict import READ_WHILE_ARRIVING

S2 = Path(__file__).parents[1] / "data" / "sentinel2_6band_10m_epsg32719.tif"

pytestmark = pytest.mark.slow


def s2_crop(rows: int, cols: int) -> bytes:
    """The top-left corner of the real Sentinel-2 crop, with its band descriptions and georeference."""
    with rasterio.open(S2) as src, MemoryFile() as mem:
        window = ((0, rows), (0, cols))
        with mem.open(**{**src.profile, "height": rows, "width": cols,
                         "transform": src.window_transform(window)}) as dst:
            dst.write(src.read(window=window))
            dst.descriptions = src.descriptions
        return mem.read()


# ---------------------------------------------------------------------------------------------- load


def test_2000_requests_at_concurrency_32_with_one_in_five_malformed(server, malformed, to_geotiff):
    from training.data import SceneConfig, generate_scene

    scene = generate_scene(np.random.default_rng(7), SceneConfig(size=56, flood_prob=1.0))
    sar = to_geotiff(np.stack([scene.bands["VV"], scene.bands["VH"]]).astype(np.float32), ["VV", "VH"])
    good = [("wildfire", s2_crop(56, 56)), ("landcover-seg", s2_crop(48, 64)), ("flood", sar)]
    reference = [server.post(task, content) for task, content in good]  # alone, before the load
    assert [r.status_code for r in reference] == [200, 200, 200]
    bad = list(malformed.values())

    def request(i: int) -> tuple[str, bytes, str]:
        if i % 5 == 4:
            m = bad[(i // 5) % len(bad)]
            return m.task, m.content, m.content_type
        task, content = good[i % len(good)]
        return task, content, "image/tiff"

    async def load() -> list[httpx.Response]:
        gate = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=32)) as client:
            async def one(i: int) -> httpx.Response:
                task, content, media = request(i)
                async with gate:
                    return await client.post(f"{server.url}/predict/{task}", content=content,
                                             headers={"Content-Type": media})
            return await asyncio.gather(*(one(i) for i in range(2000)))

    responses = asyncio.run(load())
    statuses = Counter(r.status_code for r in responses)
    print(f"2,000 requests at concurrency 32: {dict(sorted(statuses.items()))}")
    assert not [s for s in statuses if s >= 500], statuses
    for i, r in enumerate(responses):
        if i % 5 == 4:
            m = bad[(i // 5) % len(bad)]
            assert r.status_code == m.status and m.hint in r.json()["detail"], (i, r.text)
            continue
        ref = reference[i % len(good)]
        assert r.status_code == 200, (i, r.text)
        if r.headers["content-type"] == "image/tiff":  # masks: batch composition may flip a near-tie pixel
            assert (server.cog_band(r.content) != server.cog_band(ref.content)).mean() < 0.001, i
        else:
            body, expected = r.json(), ref.json()
            assert body["label"] == expected["label"], i
            assert np.allclose(list(body["probabilities"].values()), list(expected["probabilities"].values()), atol=1e-4)


# ------------------------------------------------------------------------------------------ overload


def _burst(url: str, content: bytes, n: int) -> list[httpx.Response]:
    """``n`` concurrent raw uploads of ``content`` to /predict/wildfire (bounded in time: never hangs)."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            posts = (client.post(f"{url}/predict/wildfire", content=content, headers={"Content-Type": "image/tiff"})
                     for _ in range(n))
            return await asyncio.wait_for(asyncio.gather(*posts), 300)

    return asyncio.run(burst())


@pytest.mark.parametrize(("where", "env", "setting"), [
    # In the service process every upload reaches the engine's queue at once.
    ("the engine's queue", {"MAPEX_DECODE_WORKERS": "0", "MAPEX_MAX_QUEUE": "8"}, "MAPEX_MAX_QUEUE"),
    # With decode workers a burst waits in front of them (one worker on 2 cores): bounded there.
    ("the decode workers", {"MAPEX_DECODE_WORKERS": "1", "MAPEX_MAX_DECODING": "4"}, "MAPEX_MAX_DECODING"),
])
def test_a_full_queue_answers_503_with_retry_after_and_then_serves_again(built_repo, start_server, tmp_path, where,
                                                                        env, setting):
    shutil.copytree(built_repo / "wildfire-swir", tmp_path / "repo" / "wildfire-swir")
    s = start_server(tmp_path / "repo", MAPEX_MAX_BATCH="8", **env)
    content = S2.read_bytes()  # 117 tiles: 15 batches of 8, so a queue of 8 tiles overflows at once
    responses = _burst(s.url, content, 48)
    statuses = Counter(r.status_code for r in responses)
    print(f"48 concurrent requests, {where} full: {dict(statuses)}")
    assert set(statuses) == {200, 503}, statuses
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and setting in r.json()["detail"], r.text
    after = s.post("wildfire", S2)
    served = responses[[r.status_code for r in responses].index(200)].json()
    # The same answer: probabilities equal up to float rounding (batch composition may flip a near-tie label).
    assert after.status_code == 200
    assert np.allclose(list(after.json()["probabilities"].values()), list(served["probabilities"].values()), atol=1e-4)
    if setting == "MAPEX_MAX_DECODING":
        assert httpx.get(f"{s.url}/readyz").json()["decode_workers"]["holding"] == 0, "every upload let go of its slab"
        assert not list(Path(f"/dev/shm/mapex-{s.pid}").glob("slab-*")), "every refused or answered upload's slab is gone"


# ---------------------------------------------------------------------------------------------- fuzz


def tiff_with_header(width: int, height: int, samples: int, bits: int, compression: int) -> bytes:
    """A classic little-endian TIFF whose header declares anything, followed by 64 bytes of data."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, compression), (262, 3, 1),
               (273, 4, 8 + 2 + 12 * 10 + 4), (277, 3, samples), (278, 4, height), (279, 4, 64), (284, 3, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(range(64))


def compression_bomb(width: int, height: int, nodata: float | None) -> bytes:
    """A deflate-compressed raster of zeros: tiny on the wire, ``width * height * 8`` bytes decoded."""
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=2, width=width, height=height, dtype="float32", compress="deflate",
                      tiled=True, blockxsize=512, blockysize=512, nodata=nodata, crs="EPSG:32633",
                      transform=rasterio.Affine(10, 0, 500000, 0, -10, 5000000)) as dst:
            dst.descriptions = ("VV", "VH")
            for _, window in dst.block_windows(1):
                dst.write(np.zeros((2, window.height, window.width), np.float32), window=window)
        return mem.read()


@pytest.fixture(scope="module")
def fuzz_server(built_repo, server_type, tmp_path_factory):
    """Flood and wildfire specialists under tight limits, so that bombs and huge rasters meet them."""
    repo = tmp_path_factory.mktemp("fuzz-repo")
    for name in ("flood-sar", "wildfire-swir"):
        shutil.copytree(built_repo / name, repo / name)
    s = server_type(repo, repo.parent / "fuzz-server.log", MAPEX_MAX_PIXELS="1000000", MAPEX_MAX_UPLOAD_MB="2")
    yield s
    assert s.stop() in (0, -15), "the server survived the fuzzing and exits cleanly"


VALID = [s2_crop(40, 40), compression_bomb(64, 64, None)]

#: Band metadata as real tools write it, and as they get it wrong: names, units, scales, wavelengths.
NAMES = st.one_of(st.sampled_from(["B11", "B12", "VV", "VH", "Sigma0_VV", "Sigma0_VH_db", "Amplitude_VV", "swir16",
                                   "B11, central wavelength 1610 nm", "SCL", "Fmask", "dataMask", "HH", "-", ""]),
                  st.text(max_size=40))
TAGS = st.dictionaries(st.sampled_from(["units", "unit", "scale_factor", "add_offset", "wavelength", "wavelength_units",
                                        "BANDNAME", "NETCDF_VARNAME", "long_name", "BOA_ADD_OFFSET"]),
                       st.one_of(st.sampled_from(["dB", "linear", "amplitude", "1", "ft", "nan", "inf", "-1e308", "0",
                                                  "Micrometers", "0.865", "B8A"]), st.text(max_size=20)), max_size=4)


@st.composite
def relabelled_geotiffs(draw: st.DrawFn) -> bytes:
    """A valid raster whose band descriptions and tags are drawn: identity and units from anything a file can say."""
    count = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32"]))
    values = np.random.default_rng(draw(st.integers(0, 9))).uniform(0, 250, (count, 24, 24)).astype(dtype)
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=count, width=24, height=24, dtype=dtype, crs="EPSG:32633",
                      transform=rasterio.Affine(10, 0, 500000, 0, -10, 5000000)) as dst:
            dst.write(values)
            for i in range(1, count + 1):
                if name := draw(NAMES):
                    dst.set_band_description(i, name)
                dst.update_tags(i, **draw(TAGS))
                if draw(st.booleans()):
                    dst.update_tags(i, ns="IMAGERY", CENTRAL_WAVELENGTH_UM=draw(st.sampled_from(["1.61", "x", "-3"])))
            dst.update_tags(**draw(st.dictionaries(st.sampled_from(["SENSOR", "BOA_QUANTIFICATION_VALUE"]),
                                                   st.sampled_from(["OLI_TIRS", "0", "10000", "abc"]), max_size=2)))
        return mem.read()
BOMBS = [compression_bomb(4000, 4000, None), compression_bomb(1000, 1000, 0.0)]  # over MAPEX_MAX_PIXELS; all nodata


@st.composite
def corrupt_geotiffs(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """(kind, bytes, must_fail): mutated valid files may still be valid; crafted ones never are."""
    kind = draw(st.sampled_from(["flipped bytes", "truncated", "spliced", "huge header", "bomb", "band metadata"]))
    if kind == "band metadata":
        return kind, draw(relabelled_geotiffs()), False
    if kind == "huge header":
        dims = st.integers(min_value=1, max_value=2**32 - 1)
        return kind, tiff_with_header(draw(dims), draw(dims), draw(st.integers(1, 65535)),
                                      draw(st.sampled_from([1, 8, 16, 32, 64, 12345])),
                                      draw(st.sampled_from([1, 5, 7, 8, 32946, 50000, 9999]))), True
    if kind == "bomb":
        return kind, draw(st.sampled_from(BOMBS)), True
    data = bytearray(draw(st.sampled_from(VALID)))
    if kind == "flipped bytes":
        for _ in range(draw(st.integers(1, 16))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "truncated":
        del data[draw(st.integers(0, len(data) - 1)):]
    else:
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=256))
    return kind, bytes(data), False


_rss: list[int] = []
_peaks: list[int] = []


@settings(max_examples=1000, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(example=corrupt_geotiffs(), task=st.sampled_from(["flood", "wildfire"]))
def test_corrupt_and_adversarial_geotiffs_get_4xx_and_memory_stays_bounded(fuzz_server, example, task):
    kind, content, must_fail = example
    before = fuzz_server.reset_peak_rss()
    r = fuzz_server.http.post(f"/predict/{task}", content=content, headers={"Content-Type": "image/tiff"})
    during = fuzz_server.peak_rss_bytes() - before  # the kernel's high-water mark while the request ran
    _peaks.append(during)
    if len(_peaks) % 250 == 0:
        print(f"fuzz: {len(_peaks)} requests; server RSS rise during one request: max {max(_peaks) / 2**20:.0f} MiB, "
              f"median {sorted(_peaks)[len(_peaks) // 2] / 2**20:.1f} MiB")
    assert during < 256 * 2**20, f"{kind}: the server's RSS rose by {during / 2**20:.0f} MiB during one request"
    assert r.status_code < 500, (kind, r.status_code, r.text, fuzz_server.log[-3000:])
    if must_fail or r.status_code != 200:
        assert 400 <= r.status_code < 500 and r.json()["detail"], (kind, r.status_code, r.text)
    _rss.append(fuzz_server.rss_bytes())
    if len(_rss) > 100:  # after the first hundred (allocator and caches warm), growth stays bounded
        grown = _rss[-1] - _rss[100]
        assert grown < 200 * 2**20, f"server RSS grew by {grown / 2**20:.0f} MiB over {len(_rss) - 100} requests"


# ----------------------------------------------------------------------------------------- schemathesis


def test_the_openapi_schema_driven_checks_find_no_server_error(server, tmp_path):
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "25", "--seed", "0", "--generation-database", "none",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)  # its state stays there
    print(result.stdout[-1500:])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


# --------------------------------------------------------------------------------------------- memory


def constant_rgb(width: int, height: int, **layout) -> bytes:
    """Three uint16 bands of plausible reflectance (0.1), deflate-compressed: a few hundred KB for any size."""
    compress = layout.pop("compress", "deflate")
    layout = layout or {"tiled": True, "blockxsize": 512, "blockysize": 512}
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", count=3, width=width, height=height, dtype="uint16", compress=compress,
                      crs="EPSG:32633", transform=rasterio.Affine(10, 0, 500000, 0, -10, 5000000), **layout) as dst:
            dst.descriptions = ("B04", "B03", "B02")
            for _, window in dst.block_windows(1):
                dst.write(np.full((3, window.height, window.width), 1000, np.uint16), window=window)
        return mem.read()


def _budget_used(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("mapex_memory_budget_used_bytes "))


@pytest.mark.parametrize("sent_as", ["multipart without a Content-Length", "raw, no decode workers",
                                     "binary /v2 infer"])
def test_bodies_received_into_memory_hold_the_budget_as_they_arrive(built_repo, start_server, to_multipart,
                                                                    sent_as):
    """A body the service collects in its own memory (a multipart one sent chunked under READ_WHILE_ARRIVING, any
    without decode workers, an inference request's) holds MAPEX_MEMORY_BUDGET_MB as it arrives: two 3.5 MiB bodies
    still arriving hold 7 of 8 MiB, a third is refused with 503 and Retry-After once it passes the rest (before: as
    many copies of up to MAPEX_MAX_UPLOAD_MB as clients sent), the two are answered once in, and the budget is free
    again after them."""
    env = {"MAPEX_DECODE_WORKERS": "0"} if sent_as.startswith("raw") else {}
    s = start_server(built_repo, MAPEX_MEMORY_BUDGET_MB="8", MAPEX_MAX_UPLOAD_MB="12", **env)
    mib, go_on, path = 2**20, threading.Event(), "/predict/flood"
    data = np.random.default_rng(0).bytes(7 * mib // 2)  # neither a raster nor tensors: each body read gets a 400
    if env:
        body, headers = data, {"Content-Type": "image/tiff", "Content-Length": str(len(data))}
    elif sent_as.startswith("binary"):
        body, path = data, "/v2/models/flood-sar/infer"
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "16",
                   "Content-Length": str(len(data))}
    else:
        body, content_type = to_multipart("s.tif", data)
        headers = {"Content-Type": content_type}  # no length: sent chunked
    assert len(body) < READ_WHILE_ARRIVING  # a larger one streams into shared memory (test_read_while_arriving.py)

    def post(hold_last: int) -> httpx.Response:
        """The body in pieces (a generator: no Content-Length unless ``headers`` has one), its last ``hold_last``
        bytes once ``go_on`` is set."""
        def pieces():
            for at in range(0, len(body) - hold_last, mib):
                yield body[at:min(at + mib, len(body) - hold_last)]
            if hold_last:
                go_on.wait(30)
                yield body[len(body) - hold_last:]
        return httpx.post(f"{s.url}{path}", content=pieces(), headers=headers, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post, 64) for _ in range(2)]
        deadline = time.monotonic() + 30
        while _budget_used(s.url) < 6.5 * mib and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _budget_used(s.url) >= 6.5 * mib  # all but the last bytes of each
        third = post(0)
        go_on.set()
        answers = [h.result() for h in held]
    assert third.status_code == 503 and third.headers["retry-after"] == "1", third.text[:300]
    detail = third.json()["detail"]
    assert "MAPEX_MEMORY_BUDGET_MB" in detail and ("inference" if sent_as.startswith("binary") else "upload") in detail
    # Read whole, each is answered: not a raster (400), or tensors that would need more than the budget (413).
    answered = 413 if sent_as.startswith("binary") else 400
    assert [a.status_code for a in answers] == [answered] * 2, [a.text[:200] for a in answers]
    assert _budget_used(s.url) == 0
    assert post(0).status_code == answered  # room again


def test_an_archives_unpacked_files_hold_the_memory_budget(built_repo, start_server):
    """What a ZIP unpacks to lives in the decode worker's memory until the answer: before, a few KB of ZIP could
    unpack to MAPEX_MAX_UPLOAD_MB outside the budget, once in each worker. Now a member past the budget the request
    found is not unpacked (413 when that was the whole budget), and what was unpacked is reserved with the outputs."""
    import io
    import zipfile

    s = start_server(built_repo, MAPEX_MEMORY_BUDGET_MB="8", MAPEX_MAX_UPLOAD_MB="64")

    def zipped_rgb(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("scene.tif", constant_rgb(width, height, tiled=False, compress="none"))
        return buffer.getvalue()

    def post(content: bytes) -> httpx.Response:
        return httpx.post(f"{s.url}/predict/landcover", content=content, headers={"Content-Type": "application/zip"},
                          timeout=60)

    past_the_budget = post(zipped_rgb(2000, 1500))  # 18 MB unpacked from a ZIP of a few KB
    assert past_the_budget.status_code == 413, past_the_budget.text
    assert "unpacking" in past_the_budget.json()["detail"] and "MAPEX_MEMORY_BUDGET_MB" in past_the_budget.json()["detail"]
    with_its_outputs = post(zipped_rgb(1000, 900))  # 5.4 MB unpacked, about 4.7 MB of outputs: 10 MB of 8 (200 before)
    assert with_its_outputs.status_code == 413, with_its_outputs.text
    assert "MiB of unpacked or copied files" in with_its_outputs.json()["detail"]
    small = post(zipped_rgb(300, 300))
    assert small.status_code == 200, small.text
    assert _budget_used(s.url) == 0


def test_memory_is_budgeted_before_it_is_allocated_at_the_default_pixel_limit(built_repo, start_server, tmp_path):
    """A ~1 MB upload declaring 64 Mpx for the 7-class segmentation head needs ~2.4 GB: refused before allocating.

    Peak RSS is the kernel's high-water mark (VmHWM) of the server, reset before each request, so it is
    the peak *during* the request, not the RSS after it.
    """
    shutil.copytree(built_repo / "landcover-seg-rgb", tmp_path / "repo" / "landcover-seg-rgb")
    s = start_server(tmp_path / "repo", MAPEX_MEMORY_BUDGET_MB="128")  # MAPEX_MAX_PIXELS stays at its default
    mib = 2**20
    cases = {"64 Mpx, tiled": constant_rgb(8000, 8000), "1500 x 1500": constant_rgb(1500, 1500),
             "64 Mpx in one strip": constant_rgb(8000, 8000, tiled=False, blockysize=8000)}
    peaks = {}
    for name, content in cases.items():
        base = s.reset_peak_rss()
        r = httpx.post(f"{s.url}/predict/landcover-seg", content=content, headers={"Content-Type": "image/tiff"},
                       timeout=120)
        peaks[name] = (r.status_code, len(content) / mib, (s.peak_rss_bytes() - base) / mib)
        if name == "64 Mpx, tiled":
            assert r.status_code == 413 and "MAPEX_MEMORY_BUDGET_MB" in r.json()["detail"], r.text
        elif name == "1500 x 1500":
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 413 and "-of COG" in r.json()["detail"], r.text
    print("status, upload MiB, server peak RSS growth during the request (MiB):", peaks)
    # Refused before any output is allocated: what grows is GDAL's block cache from the unit check's sample reads.
    assert peaks["64 Mpx, tiled"][2] < 128 and peaks["64 Mpx in one strip"][2] < 128
    assert peaks["1500 x 1500"][2] < 256  # outputs within the 128 MiB budget; batches and GDAL's cache on top

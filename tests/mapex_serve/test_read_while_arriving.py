"""A large raw upload read by its decode worker while it still arrives (``decode.arriving``), through a real server."""

import asyncio
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.shutil import copy
from rasterio.transform import from_origin
from rasterio.windows import Window

from mapex_serve.decode.arriving import ArrivalGate, UploadEndedError
from mapex_serve.decode.incoming import Upload
from mapex_serve.decode.slab import Layout, Slab
from mapex_serve.local import decode_workers
from mapex_serve.predict import overlap_for
from mapex_serve.routes.predict import READ_WHILE_ARRIVING
from mapex_serve.tiling import tile_grid

SIZE = 1200  # a two-band float32 scene of 11 MiB, 2,500 tiles of 32 px in 50 rows
SPLIT_SIZE = 1500  # 2.25 million pixels: a scene a server told to split runs in two parts


def _sar_bands(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """VV/VH in dB: open water (dark in both) on the left half, land on the right, with speckle."""
    rng = np.random.default_rng(seed)
    land, water = np.array([-8.0, -15.0])[:, None, None], np.array([-21.0, -28.0])[:, None, None]
    return (np.where(np.arange(size) < size // 2, water, land) + rng.normal(0, 1.5, (2, size, size))).astype(np.float32)


def _profile(size: int = SIZE) -> dict:
    return dict(driver="GTiff", count=2, height=size, width=size, dtype="float32", crs="EPSG:32633",
                transform=from_origin(500000, 5000000, 10, 10), tiled=True, blockxsize=256, blockysize=256,
                compress="deflate")


def _cog(bands: np.ndarray, names: tuple[str, ...] = ("VV", "VH")) -> bytes:
    """A Cloud-Optimised GeoTIFF (directories first, blocks in row order, overviews) as GDAL's COG driver writes it."""
    with MemoryFile() as src_mem, MemoryFile() as out:
        with src_mem.open(**dict(_profile(bands.shape[-1]), count=len(bands))) as dst:
            dst.write(bands)
            dst.descriptions = names
        copy(src_mem.name, out.name, driver="COG", compress="deflate", blocksize=256)
        return out.read()


def _directory_last(bands: np.ndarray, tmp_path) -> bytes:
    """The same scene written a window at a time, its band names set last: GDAL then rewrites its directory after
    the blocks, at the end of the file (as ``bench.scene``'s file has it)."""
    path = tmp_path / "last.tif"
    with rasterio.open(path, "w", **_profile()) as dst:
        for row in range(0, SIZE, 256):
            window = Window(0, row, SIZE, min(256, SIZE - row))
            dst.write(bands[:, row: row + 256], window=window)
        dst.descriptions = ("VV", "VH")
    return path.read_bytes()


def _first_directory(body: bytes) -> int:
    assert body[:4] == b"II*\x00", "classic little-endian TIFF"
    return struct.unpack("<I", body[4:8])[0]


def _large_uploads(url: str) -> dict[str, float]:
    """``mapex_large_uploads_total`` by how they were read."""
    text = httpx.get(f"{url}/metrics").text
    return {line.split('read="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("mapex_large_uploads_total{")}


class _Batches:
    """The engine batches a server runs from now on, polled while a test holds an upload's last bytes back."""

    def __init__(self, url: str) -> None:
        self.url, self._before, self.seen = url, _batches_run(url), []

    def stalled(self) -> bool:
        """Batches ran, and no more for 1 s (polled every 0.05 s): the rows that have arrived are done. (0.5 s was
        once too short in the full suite on 2 cores: a part paused that long with 3 of its 64 batches to go.)"""
        self.seen.append(self.ran)
        return self.seen[-1] > 0 and len(self.seen) > 20 and self.seen[-20] == self.seen[-1]

    @property
    def ran(self) -> float:
        """Batches run so far, read now."""
        return _batches_run(self.url) - self._before


def _batches_run(url: str) -> float:
    """Engine batches the service has run so far (every specialist)."""
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("mapex_compute_duration_seconds_count"))


def _multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body of ``fields`` then ``files`` (each a part named ``file``), and its content type."""
    boundary = "mapex-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in (fields or {}).items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
              f"Content-Type: image/tiff\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post_holding_back(url: str, body: bytes, until: Callable[[], bool], hold: int,
                       content_type: str = "image/tiff", chunked: bool = False) -> httpx.Response:
    """``body`` (raw by default), its last ``hold`` bytes sent only once ``until()`` is true (polled for at most 30 s);
    ``chunked``: without a Content-Length."""

    def pieces() -> Iterator[bytes]:
        for at in range(0, len(body) - hold, 256 * 1024):
            yield body[at: min(at + 256 * 1024, len(body) - hold)]
        deadline = time.monotonic() + 30
        while not until() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield body[len(body) - hold:]

    length = {} if chunked else {"Content-Length": str(len(body))}
    return httpx.post(f"{url}/predict/flood", content=pieces(), timeout=120,
                      headers={"Content-Type": content_type, **length})


@pytest.fixture(scope="module")
def one_worker(built_repo, server_type, tmp_path_factory):
    s = server_type(built_repo, tmp_path_factory.mktemp("arriving") / "server.log", MAPEX_DECODE_WORKERS="1")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, bytes]:
    bands = _sar_bands()
    scenes = {"cog": _cog(bands), "directory last": _directory_last(bands, tmp_path_factory.mktemp("scenes"))}
    assert all(len(b) >= READ_WHILE_ARRIVING for b in scenes.values()), "large enough to be read while arriving"
    assert _first_directory(scenes["cog"]) < 1024 < len(scenes["directory last"]) - 100_000 \
        < _first_directory(scenes["directory last"])
    return scenes


def _reference(server, body: bytes) -> np.ndarray:
    """The answer to ``body`` sent at once as a multipart field (loopback speed), as most clients send it."""
    r = server.post("flood", body)
    assert r.status_code == 200, r.text[:300]
    return server.cog_band(r.content)


@pytest.mark.parametrize("sent_as", ["raw", "multipart", "chunked", "multipart, chunked"])
def test_the_engine_runs_a_cogs_first_rows_before_its_last_bytes_arrive_and_waits_for_the_rest(
        one_worker, scenes, sent_as):
    """The last fifth of a COG is held back until the scene's batches stop (its worker waits for those rows): by
    then some batches ran, not all of them, and the answer is the one of the upload sent whole. Raw, as a multipart
    field, or either without a Content-Length (chunked: its size learnt at its end)."""
    cog = scenes["cog"]
    body, content_type = (_multipart([("scene.tif", cog)], {"note": "x"}) if sent_as.startswith("multipart")
                          else (cog, "image/tiff"))
    chunked = sent_as.endswith("chunked")
    whole = _Batches(one_worker.url)
    reference = _reference(one_worker, cog)
    batches = whole.ran
    watch, counted = _Batches(one_worker.url), _large_uploads(one_worker.url)
    r = _post_holding_back(one_worker.url, body, watch.stalled, hold=len(cog) // 5, content_type=content_type,
                           chunked=chunked)
    assert r.status_code == 200, r.text[:300]
    assert ("content-length" in r.request.headers) == (not chunked)
    held = watch.seen[-1]
    assert 0 < held < batches, f"{held} of the scene's {batches} batches ran while its last fifth was held back"
    np.testing.assert_array_equal(one_worker.cog_band(r.content), reference)
    assert _large_uploads(one_worker.url)["while_arriving"] == counted["while_arriving"] + 1


@pytest.fixture(scope="module")
def split_in_two(built_repo, server_type, tmp_path_factory):
    """Two decode workers and every /predict mask scene large enough split in two (a GPU node's default; on a CPU
    engine, told to)."""
    s = server_type(built_repo, tmp_path_factory.mktemp("split") / "server.log", MAPEX_DECODE_WORKERS="2",
                    MAPEX_PREDICT_PARTS="2")
    yield s
    s.stop()


def test_a_cog_split_in_parts_runs_each_part_as_its_own_rows_arrive(split_in_two, one_worker):
    """A lone scene still arriving is split as one that arrived first (on a GPU node's fast link one worker would
    bind it): its last fifth held back, both parts ran batches and the lower one waits for its last rows; the
    answer is the scene's, run whole."""
    cog = _cog(_sar_bands(2, SPLIT_SIZE))
    assert len(cog) >= READ_WHILE_ARRIVING
    reference = _reference(one_worker, cog)
    count = _Batches(split_in_two.url)
    whole = httpx.post(f"{split_in_two.url}/predict/flood", content=cog, timeout=120,
                       headers={"Content-Type": "image/tiff"})
    assert whole.status_code == 200, whole.text[:300]
    np.testing.assert_array_equal(split_in_two.cog_band(whole.content), reference)
    batches = count.ran
    split = "runs in 2 parts on the decode workers: rows 0-748, 748-1500"
    splits = split_in_two.log.count(split)
    assert splits >= 1
    watch, split_meanwhile = _Batches(split_in_two.url), []

    def stalled() -> bool:
        split_meanwhile.append(split_in_two.log.count(split))
        return watch.stalled()

    r = _post_holding_back(split_in_two.url, cog, stalled, hold=len(cog) // 5)
    assert r.status_code == 200, r.text[:300]
    assert split_meanwhile[-1] == splits + 1, "the scene was not split while its last fifth was held back"
    # the upper part (rows 0-748: half the tile rows) is all in: more than its batches ran; not the lower part's all
    held = watch.seen[-1]
    assert batches / 2 < held < batches, f"{held} of the scene's {batches} batches ran while held back"
    np.testing.assert_array_equal(split_in_two.cog_band(r.content), reference)
    assert _holding(split_in_two.url) == 0


def test_a_split_cog_whose_values_do_not_fit_their_units_is_refused_as_one_run_whole(split_in_two, one_worker):
    linear = np.abs(_sar_bands(3, SPLIT_SIZE) / 40)  # linear power 0.2..0.7 taken as dB
    body = _cog(linear)
    splits = split_in_two.log.count("runs in 2 parts")
    whole = httpx.post(f"{one_worker.url}/predict/flood", content=body, timeout=120,
                       headers={"Content-Type": "image/tiff"})
    # its last fifth sent once the scene is split: the first part checks the values at the end, then refuses it
    r = _post_holding_back(split_in_two.url, body, lambda: split_in_two.log.count("runs in 2 parts") > splits,
                           hold=len(body) // 5)
    assert whole.status_code == r.status_code == 422, (whole.text[:300], r.text[:300])
    assert r.json()["detail"] == whole.json()["detail"]
    assert split_in_two.log.count("runs in 2 parts") == splits + 1, "split while it arrived"
    assert _holding(split_in_two.url) == 0


def _written_by_gdal(bands: np.ndarray, folder, internal_mask: bool = False, **options) -> bytes:
    """The scene as ``gdal_translate`` (or GDAL's COG driver) would copy it with ``options``."""
    source, out = folder / "source.tif", folder / "copy.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(source, "w", **_profile()) as dst:
            dst.write(bands)
            dst.descriptions = ("VV", "VH")
            if internal_mask:
                mask = np.full(bands.shape[1:], 255, np.uint8)
                mask[600:800, 100:900] = 0
                dst.write_mask(mask)
        copy(source, out, **options)
    return out.read_bytes()


LAYOUTS = {
    "COG, zstd, 512 px blocks": dict(driver="COG", compress="zstd", blocksize=512),
    "COG, BigTIFF": dict(driver="COG", compress="deflate", BIGTIFF="YES"),
    "COG with an internal mask": dict(driver="COG", compress="deflate", internal_mask=True),
    "gdal_translate, strips": dict(driver="GTiff", compress="deflate"),
    "gdal_translate, tiles band after band": dict(driver="GTiff", tiled=True, interleave="band", compress="lzw"),
    "gdal_translate, big-endian tiles": dict(driver="GTiff", tiled=True, ENDIANNESS="BIG"),
}


@pytest.fixture(scope="module")
def in_process(built_repo, server_type, tmp_path_factory):
    """No decode workers: every upload read in the service process once it is all in (the reference)."""
    s = server_type(built_repo, tmp_path_factory.mktemp("in-process") / "server.log", MAPEX_DECODE_WORKERS="0")
    yield s
    s.stop()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_tiffs_laid_out_as_gdal_writes_them_are_read_as_they_arrive_and_answer_as_read_after(
        one_worker, in_process, tmp_path, layout):
    """Each layout's first rows ran while its last fifth was held back; the answer is the one of the same file read
    in the service process once it is all in."""
    body = _written_by_gdal(_sar_bands(5), tmp_path, **LAYOUTS[layout])
    assert len(body) >= READ_WHILE_ARRIVING
    reference = _reference(in_process, body)
    watch = _Batches(one_worker.url)
    r = _post_holding_back(one_worker.url, body, watch.stalled, hold=len(body) // 5)
    assert r.status_code == 200, r.text[:300]
    assert watch.seen[-1] > 0, "no batch ran before the last fifth arrived"
    np.testing.assert_array_equal(one_worker.cog_band(r.content), reference)


def test_a_chunked_scene_finds_room_as_it_comes_or_is_read_in_the_service_or_refused_with_503(
        start_server, built_repo, in_process, small_tmpfs):
    """A body sent without its size has its shared memory reserved as it arrives, 4 MiB at a time: on a tmpfs
    too small to begin, it is read in the service process (as any upload that finds no room); on one that fills
    up mid-way, the request gets a 503 to retry (never a worker or the service killed by SIGBUS) and holds nothing
    after."""
    body = _cog(_sar_bands(4, SPLIT_SIZE))  # 19.5 MiB
    reference = _reference(in_process, body)
    for size, expected in (("2m", 200), ("12m", 503)):
        shm = small_tmpfs(size)
        s = start_server(built_repo, MAPEX_DECODE_WORKERS="1", MAPEX_SHM_DIR=str(shm))
        pieces = (body[at: at + 256 * 1024] for at in range(0, len(body), 256 * 1024))
        r = httpx.post(f"{s.url}/predict/flood", content=pieces, timeout=120, headers={"Content-Type": "image/tiff"})
        assert r.status_code == expected and "content-length" not in r.request.headers, (size, r.status_code)
        if expected == 200:
            np.testing.assert_array_equal(s.cog_band(r.content), reference)
            assert "decoding it in the service process" in s.log
        else:
            assert r.json()["error"] == "NoRoomToReceiveError" and r.headers["retry-after"] == "1"
            assert "Content-Length" in r.json()["detail"]
        assert httpx.get(f"{s.url}/readyz").json()["decode_workers"] == {"ready": 1, "size": 1, "restarts": 0,
                                                                        "holding": 0}
        assert not list(shm.glob(f"mapex-{s.pid}/slab-*")) and "Traceback" not in s.log


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_a_multipart_body_of_several_files_is_read_once_they_are_all_in(one_worker, scenes, chunked):
    """Its first file began to be read as it arrived; the second file ends that: the answer is the scene's. Sent
    chunked, each file's pages are reserved as it is written, the second's after the first's."""
    bands = _sar_bands()
    reference = _reference(one_worker, scenes["cog"])
    one_band = [_cog(bands[i: i + 1], (name,)) for i, name in enumerate(("VV", "VH"))]
    body, content_type = _multipart([("vv.tif", one_band[0]), ("vh.tif", one_band[1])])
    assert len(body) >= READ_WHILE_ARRIVING
    r = _post_holding_back(one_worker.url, body, lambda: True, hold=len(one_band[1]) // 2, content_type=content_type,
                           chunked=chunked)
    assert r.status_code == 200, r.text[:300]
    np.testing.assert_array_equal(one_worker.cog_band(r.content), reference)
    assert _holding(one_worker.url) == 0


def test_a_tiff_whose_directory_comes_last_is_read_once_it_has_all_arrived(one_worker, scenes):
    body = scenes["directory last"]
    reference = _reference(one_worker, body)
    watch, held, ran = _Batches(one_worker.url), time.monotonic(), []
    counted = _large_uploads(one_worker.url)

    def held_long_enough() -> bool:
        ran.append(watch.ran)
        return time.monotonic() - held > 1.5

    r = _post_holding_back(one_worker.url, body, held_long_enough, hold=100_000)
    assert r.status_code == 200, r.text[:300]
    assert ran[-1] == 0, "batches ran before the directory at the end of the file arrived"
    np.testing.assert_array_equal(one_worker.cog_band(r.content), reference)
    assert _large_uploads(one_worker.url) == dict(counted, directory_last=counted["directory_last"] + 1)


def test_values_that_do_not_fit_their_units_are_refused_as_when_the_upload_arrives_first(one_worker):
    linear = np.abs(_sar_bands(1) / 40)  # linear power 0.2..0.7 taken as dB: the request names the fix
    body = _cog(linear)
    first = one_worker.post("flood", body)
    r = httpx.post(f"{one_worker.url}/predict/flood", content=body, timeout=120, headers={"Content-Type": "image/tiff"})
    assert first.status_code == r.status_code == 422, (first.text[:300], r.text[:300])
    assert r.json()["detail"] == first.json()["detail"]


def test_values_that_do_not_fit_their_units_are_refused_once_the_upload_is_in_not_after_the_whole_scene(one_worker):
    """Its last fifth held back until its batches stop: the check runs as soon as the rest is in, and the 422 comes
    before the engine has run the rows it had not reached (it used to run them all, then refuse the scene)."""
    body = _cog(np.abs(_sar_bands(1) / 40))  # linear power taken as dB
    whole = httpx.post(f"{one_worker.url}/predict/flood", content=body, timeout=120,
                       headers={"Content-Type": "image/tiff"})
    assert whole.status_code == 422
    watch = _Batches(one_worker.url)
    r = _post_holding_back(one_worker.url, body, watch.stalled, hold=len(body) // 5)
    assert r.status_code == 422 and r.json()["detail"] == whole.json()["detail"], r.text[:300]
    ran, held = watch.ran, watch.seen[-1]
    scene = -(-len(tile_grid(SIZE, SIZE, 32, overlap_for(32))) // 32)  # its batches of 32 tiles
    assert 0 < held <= ran < scene - 5, f"{ran} of the scene's {scene} batches ran ({held} before the rest)"
    assert _holding(one_worker.url) == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_a_worker_killed_while_the_upload_arrives_loses_no_request(start_server, built_repo, scenes, chunked):
    """The request is tried again on a fresh worker, which reads what has arrived and waits for the rest."""
    s = start_server(built_repo, MAPEX_DECODE_WORKERS="1")
    body = scenes["cog"]
    reference = _reference(s, body)
    [victim] = decode_workers(s.pid)
    watch, killed = _Batches(s.url), []

    def kill_once_batches_ran() -> bool:
        if not killed and watch.ran > 0:
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        return bool(killed)

    r = _post_holding_back(s.url, body, kill_once_batches_ran, hold=len(body) // 5, chunked=chunked)
    assert killed, "no batch ran while the upload arrived"
    assert r.status_code == 200, r.text[:300]
    np.testing.assert_array_equal(s.cog_band(r.content), reference)
    assert "trying it again on a fresh worker" in s.log
    assert httpx.get(f"{s.url}/readyz").json()["decode_workers"] == {"ready": 1, "size": 1, "restarts": 1, "holding": 0}


def test_sigterm_while_a_scene_arrives_answers_it_before_the_server_exits(start_server, built_repo, scenes):
    """A rolling update stops a pod while a client is still sending a scene: its first rows ran, the signal came,
    the rest arrived a second later, and the answer is the scene's; then the server exits gracefully."""
    s = start_server(built_repo, MAPEX_DECODE_WORKERS="1")
    body = scenes["cog"]
    reference = _reference(s, body)
    watch, signalled = _Batches(s.url), []

    def signal_once_batches_ran() -> bool:
        if not signalled and watch.ran > 0:
            s.proc.send_signal(signal.SIGTERM)
            signalled.append(time.monotonic())
        return bool(signalled) and time.monotonic() - signalled[0] > 1.0

    r = _post_holding_back(s.url, body, signal_once_batches_ran, hold=len(body) // 5)
    assert signalled, "no batch ran while the upload arrived"
    assert r.status_code == 200, r.text[:300]
    np.testing.assert_array_equal(s.cog_band(r.content), reference)
    assert s.proc.wait(60) in (0, -signal.SIGTERM) and "Finished server process" in s.log, s.log[-2000:]


@pytest.mark.parametrize(("kind", "reading"), [("cog", "while_arriving"), ("directory last", "directory_last"),
                                              ("not a TIFF", "not_a_tiff")])
def test_only_a_tiff_whose_directories_come_first_is_read_as_it_arrives(scenes, tmp_path, kind, reading):
    """``Upload.reading`` decides from the header, as soon as it is in (the rest still arriving)."""
    body = scenes.get(kind, b"\x89PNG\r\n\x1a\n" + bytes(READ_WHILE_ARRIVING))
    layout = Layout.plan([("upload.tif", len(body))], 1024, 1024)
    slab = Slab.create(tmp_path, layout.size, reserve=layout.files_end)
    upload = Upload(slab, layout, [], lambda _slab, _clean: None)

    async def decide() -> tuple[bool, int]:
        go_on = asyncio.Event()

        async def arrive() -> None:
            sink = upload.sink(0, "upload.tif")
            sink.write(body[:10])  # not yet the header
            await asyncio.sleep(0.01)
            sink.write(body[10:1000])
            await go_on.wait()  # the rest only once the decision is made
            sink.write(body[1000:])

        upload.arriving = asyncio.ensure_future(arrive())
        decided = await upload.reading()
        arrived = upload.arrived
        go_on.set()
        await upload.arriving
        return decided, arrived, await upload.reading()

    try:
        assert asyncio.run(decide()) == (reading, 1000, "arrived_first")
    finally:
        slab.close()
        slab.unlink()


def test_a_wait_for_bytes_returns_once_they_are_in_and_gives_up_when_the_session_ends():
    gate = ArrivalGate(10, size=100)
    gate.wait(10)  # in already
    waiting = threading.Thread(target=gate.wait, args=(10**9,))  # more than the upload: all of it
    waiting.start()
    gate.update(99)
    waiting.join(0.2)
    assert waiting.is_alive()
    assert not gate.complete
    gate.update(150)
    waiting.join(5)
    assert not waiting.is_alive() and gate.arrived == 100 and gate.complete
    gate = ArrivalGate(0, size=100)
    failed: list[BaseException] = []

    def wait() -> None:
        try:
            gate.wait(50)
        except UploadEndedError as e:
            failed.append(e)

    waiting = threading.Thread(target=wait)
    waiting.start()
    gate.end()
    waiting.join(5)
    assert not waiting.is_alive() and len(failed) == 1
    with pytest.raises(UploadEndedError):
        gate.wait(1)


@pytest.mark.parametrize("case", ["random bytes", "a TIFF header over garbage", "a COG cut short"])
def test_a_large_body_that_cannot_be_read_gets_a_400_and_holds_nothing(one_worker, scenes, case):
    noise = np.random.default_rng(0).bytes(READ_WHILE_ARRIVING + 1000)
    body = {"random bytes": noise, "a TIFF header over garbage": b"II*\x00\x08\x00\x00\x00" + noise,
            "a COG cut short": scenes["cog"][: len(scenes["cog"]) // 2] + bytes(len(scenes["cog"]) // 2 + 1)}[case]
    r = httpx.post(f"{one_worker.url}/predict/flood", content=body, timeout=120, headers={"Content-Type": "image/tiff"})
    assert r.status_code == 400, r.text[:300]
    assert "GeoTIFF" in r.json()["detail"]
    assert _holding(one_worker.url) == 0


def _holding(url: str) -> int:
    return httpx.get(f"{url}/readyz").json()["decode_workers"]["holding"]


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
def test_a_client_that_leaves_mid_upload_frees_its_slab_and_worker(one_worker, scenes, chunked):
    body = scenes["cog"]
    host, port = httpx.URL(one_worker.url).host, httpx.URL(one_worker.url).port
    half = body[: len(body) // 2]
    framing, sent = ("Transfer-Encoding: chunked", f"{len(half):x}\r\n".encode() + half + b"\r\n") if chunked \
        else (f"Content-Length: {len(body)}", half)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"POST /predict/flood HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/tiff\r\n"
                     f"{framing}\r\n\r\n".encode() + sent)
        deadline = time.monotonic() + 30
        while _holding(one_worker.url) == 0:  # the request holds its slab while its body arrives
            assert time.monotonic() < deadline, "the upload never reached the decode pool"
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while _holding(one_worker.url) != 0:
        assert time.monotonic() < deadline, "the slab of a request whose client left is still held"
        time.sleep(0.05)
    assert len(decode_workers(one_worker.pid)) == 1
    assert "Traceback" not in one_worker.log
    r = httpx.post(f"{one_worker.url}/predict/flood", content=body, timeout=120, headers={"Content-Type": "image/tiff"})
    assert r.status_code == 200, r.text[:300]

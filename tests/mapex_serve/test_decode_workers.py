"""Decode workers: /predict's GDAL work in processes, through shared memory, and what happens when one dies.

The end-to-end tests run real servers (uvicorn, ONNX Runtime, spawned worker processes) and kill
real worker processes with SIGKILL, as the OOM killer or a crash in GDAL would.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from rasterio.io import MemoryFile

from mapex_serve.decode.slab import WRITE_THROUGH_FILE, Layout, Slab, SlabPool, SlabSpaceError, clean_stale
from mapex_serve.local import decode_workers

S2 = Path(__file__).parents[1] / "data" / "sentinel2_6band_10m_epsg32719.tif"


# ---------------------------------------------------------------------------------------------- slabs


@pytest.mark.parametrize("slots", [2, 3])
def test_layout_keeps_files_and_buffers_apart_and_aligned(slots):
    layout = Layout.plan([("a.tif", 1000), ("b.tif", 3)], tile_bytes=4 * 32 * 2 * 32 * 32, prob_bytes=4 * 32 * 2,
                         slots=slots)
    assert len(layout.tiles) == len(layout.probs) == slots
    spans = [(o, o + n) for _, o, n in layout.files]
    spans += [(o, o + 4 * 32 * 2 * 32 * 32) for o in layout.tiles] + [(o, o + 4 * 32 * 2) for o in layout.probs]
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))  # no overlap
    assert spans[-1][1] <= layout.size
    assert all(o % 64 == 0 for o in (*layout.tiles, *layout.probs, *(o for _, o, _ in layout.files)))


def test_a_slab_written_here_is_read_and_answered_in_another_process(tmp_path):
    slab = Slab.create(tmp_path, 4096)
    try:
        slab.array(0, (4, 4))[...] = np.arange(16, dtype=np.float32).reshape(4, 4)
        code = ("import sys; from mapex_serve.decode.slab import Slab; s = Slab.attach(sys.argv[1]); "
                "a = s.array(0, (4, 4)); s.array(64, (4, 4))[...] = a * 2; del a; s.close()")
        subprocess.run([sys.executable, "-c", code, str(slab.path)], check=True, timeout=60)
        np.testing.assert_array_equal(slab.array(64, (4, 4)), np.arange(16, dtype=np.float32).reshape(4, 4) * 2)
    finally:
        slab.close()
        slab.unlink()
    assert not slab.path.exists()


def test_large_writes_go_through_the_file_and_small_ones_through_the_mapping_to_the_same_bytes(tmp_path):
    """A large piece is written with ``pwrite`` (no page faults in this process), a small one by copying into the
    mapping: both land where the mapping, another process's view and the file itself read them."""
    large = np.random.default_rng(0).integers(0, 256, WRITE_THROUGH_FILE * 3 + 5, np.uint8).tobytes()
    small = b"II*\0" + bytes(range(200))
    slab = Slab.create(tmp_path, 64 + len(small) + len(large))
    try:
        slab.write(64, small)
        slab.write(64 + len(small), memoryview(large))  # uvicorn hands bytes; a memoryview works the same
        assert slab.read(64, len(small) + len(large)) == small + large
        assert slab.path.read_bytes()[64:] == small + large
        assert slab.read(0, 64) == bytes(64)  # nothing before the offset was touched
    finally:
        slab.close()
        slab.unlink()


def test_a_closed_slab_stays_mapped_while_a_view_of_it_lives_and_is_unmapped_after(tmp_path):
    """A client that leaves closes its slab while its batch may still wait in the engine's queue.

    Run in a child process: the bug this guards against (``mmap.close`` under a live numpy view)
    was a segfault, which would take the test run down with it.
    """
    code = """if True:
        import gc, sys
        from pathlib import Path
        from mapex_serve.decode.slab import Slab
        slab = Slab.create(Path(sys.argv[1]), 2**20)
        queued = slab.array(4096, (8, 1024))[2:4]
        queued[...] = 7
        slab.close()
        slab.unlink()
        print(float(queued.sum()), str(slab.path) in Path("/proc/self/maps").read_text())
        del queued
        gc.collect()
        print(str(slab.path) in Path("/proc/self/maps").read_text())
    """
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [str(7.0 * 2 * 1024), "True", "False"]


def test_a_slab_the_tmpfs_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(SlabSpaceError, match="free"):
        Slab.create(tmp_path, shutil.disk_usage(tmp_path).free + 2**30)
    assert not list(tmp_path.iterdir())


def test_slabs_that_together_overfill_a_tmpfs_are_refused_not_a_sigbus(small_tmpfs):
    """Each slab fits when made, both do not: the second is refused up front, the first stays writable whole.

    In a child process: before the pages were reserved, writing the second killed the writer with SIGBUS.
    """
    folder = small_tmpfs("4m")
    code = """if True:
        import sys
        from pathlib import Path
        from mapex_serve.decode.slab import Slab, SlabSpaceError
        first = Slab.create(Path(sys.argv[1]), 3 * 2**20)
        try:
            Slab.create(Path(sys.argv[1]), 3 * 2**20)
        except SlabSpaceError as e:
            print("refused:", e)
        first.write(0, b"x" * 3 * 2**20)
        print("written", len(first.read(0, 3 * 2**20)))
    """
    run = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert "refused:" in run.stdout and f"written {3 * 2**20}" in run.stdout, run.stdout


def _reserved_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_small_slab_serves_the_next_request_only_once_its_request_ended_cleanly(tmp_path):
    shm = tmp_path
    pool = SlabPool(shm, capacity=2**20, keep=1)
    first = pool.take(500_000, reserve=100_000)
    assert first.path.name.startswith("pooled-") and _reserved_bytes(first.path) >= 100_000
    first.write(0, b"a" * 10)
    pool.give(first, clean=True)
    again = pool.take(300_000, reserve=400_000)  # the same file, its head reserved further before it is written
    assert again.path == first.path and _reserved_bytes(again.path) >= 400_000
    assert again.read(0, 10) == b"a" * 10, "the same mapping: nothing copied, nothing made"
    other = pool.take(10_000, reserve=10_000)  # the kept one is taken: a new one
    assert other.path != again.path
    pool.give(again, clean=False)  # a worker may still write there: removed, never handed out again
    assert not again.path.exists()
    pool.give(other, clean=True)
    assert pool.take(10_000, reserve=10_000).path == other.path


def test_the_pool_keeps_at_most_keep_slabs_and_never_a_large_one(tmp_path):
    shm = tmp_path
    pool = SlabPool(shm, capacity=2**20, keep=2)
    small = [pool.take(2**20, reserve=4096) for _ in range(3)]
    large = pool.take(2**20 + 1, reserve=4096)
    assert large.path.name.startswith("slab-")
    for slab in [*small, large]:
        pool.give(slab, clean=True)
    assert sorted(p.name for p in shm.iterdir()) == sorted(s.path.name for s in small[:2]), "two kept, the rest removed"
    pool.clear()
    assert not list(shm.iterdir())


def test_a_kept_slab_that_finds_no_room_for_a_larger_upload_is_removed(small_tmpfs):
    shm = small_tmpfs("1m")
    pool = SlabPool(shm, capacity=768 * 1024, keep=1)
    kept = pool.take(4096, reserve=4096)
    pool.give(kept, clean=True)
    (shm / "other").write_bytes(b"x" * 512 * 1024)  # the tmpfs fills up meanwhile
    with pytest.raises(SlabSpaceError):
        pool.take(700 * 1024, reserve=700 * 1024)
    assert not kept.path.exists(), "removed, not left behind outside the pool"


def test_stale_slab_folders_of_dead_services_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine, live, gone = tmp_path / f"mapex-{os.getpid()}", tmp_path / f"mapex-{os.getppid()}", tmp_path / f"mapex-{dead.pid}"
    for folder in (mine, live, gone):
        folder.mkdir()
        (folder / "slab-0").write_bytes(b"x")
    clean_stale(mine)
    assert mine.exists() and live.exists() and not gone.exists()


def _cgroup(tmp_path: Path, files: dict[str, str], own: str) -> tuple[Path, Path]:
    """A cgroup mount with ``files`` (relative path -> text) and a /proc/self/cgroup naming ``own``."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(own)
    return root, proc


@pytest.mark.parametrize(("files", "own", "limit"), [
    ({"cpu.max": "400000 100000\n"}, "0::/\n", 4.0),  # cgroup v2 in a container (its own namespace)
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),  # no quota
    ({"kubepods/pod1/cpu.max": "150000 100000\n", "kubepods/cpu.max": "max 100000\n"}, "0::/kubepods/pod1\n", 1.5),
    ({"kubepods/pod1/c/cpu.max": "max 100000\n", "kubepods/pod1/cpu.max": "200000 100000\n"}, "0::/kubepods/pod1/c\n",
     2.0),  # the pod's quota binds a container that has none of its own
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "4:cpu,cpuacct:/\n0::/\n", 3.0),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "4:cpu,cpuacct:/\n", None),
    ({"unified/cpu.max": "100000 100000\n", "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
     "1:cpu:/\n0::/\n", 1.0),  # hybrid: v2 mounted under unified/
    ({}, "0::/\n", None),  # nothing to read
])
def test_the_cores_a_container_may_use_come_from_its_cgroup_quota(tmp_path, files, own, limit):
    from mapex_serve.cores import cgroup_cpu_limit, usable_cores

    root, proc = _cgroup(tmp_path, files, own)
    assert cgroup_cpu_limit(root, proc) == limit
    cores = len(os.sched_getaffinity(0))
    assert usable_cores(root, proc) == (cores if limit is None else max(1, min(cores, -(-limit // 1))))


def test_decode_workers_default_to_the_cores_but_one_shared_among_uvicorn_workers(monkeypatch, tmp_path):
    from mapex_serve.cores import usable_cores
    from mapex_serve.settings import Settings

    cores = usable_cores()  # the affinity, or fewer where this runs in a container with a CPU limit
    monkeypatch.delenv("UVICORN_WORKERS", raising=False)
    assert Settings(model_repo=tmp_path).decode_worker_count == max(cores - 1, 1)
    monkeypatch.setenv("UVICORN_WORKERS", str(2 * cores))  # more service processes than cores: one each still
    assert Settings(model_repo=tmp_path).decode_worker_count == 1
    assert Settings(model_repo=tmp_path, decode_workers=0).decode_worker_count == 0  # decode in the service


# ---------------------------------------------------------------------------------------------- end to end


def sar_scene(to_geotiff, size: int, seed: int = 0) -> bytes:
    """A VV/VH scene in dB, ``size`` pixels square: land on the right, open water (dark in both) on the left."""
    rng = np.random.default_rng(seed)
    land, water = np.array([-8.0, -15.0])[:, None, None], np.array([-21.0, -28.0])[:, None, None]
    bands = np.where(np.arange(size) < size // 2, water, land) + rng.normal(0, 1.5, (2, size, size))
    return to_geotiff(bands.astype(np.float32), ["VV", "VH"])


@pytest.fixture(scope="module")
def in_process(built_repo, server_type, tmp_path_factory):
    """The same repository served with MAPEX_DECODE_WORKERS=0: the reference the workers must agree with."""
    s = server_type(built_repo, tmp_path_factory.mktemp("in-process") / "server.log", MAPEX_DECODE_WORKERS="0")
    yield s
    s.stop()


def test_the_server_runs_its_uploads_in_decode_workers(server):
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["decode_workers"]["ready"] == ready["decode_workers"]["size"] >= 1
    assert len(decode_workers(server.pid)) == ready["decode_workers"]["size"]


def test_single_tile_uploads_reuse_the_pooled_slabs(server, in_process, to_geotiff):
    """A clean request's small slab serves the next one (``SlabPool``): none is made or left per request."""
    tile = sar_scene(to_geotiff, 32)
    reference = in_process.post("flood", tile, params={"format": "json"}).json()["classes"]
    for _ in range(3):
        assert server.post("flood", tile, params={"format": "json"}).json()["classes"] == reference
    kept = sorted(_slabs(server))
    for _ in range(5):
        assert server.post("flood", tile, params={"format": "json"}).json()["classes"] == reference
    assert sorted(_slabs(server)) == kept and 1 <= len(kept) <= 8
    assert all(p.name.startswith("pooled-") for p in kept), kept


def test_workers_answer_exactly_as_the_service_process_does(server, in_process, to_geotiff):
    scene = sar_scene(to_geotiff, 300)  # 13 x 13 tiles of 32 px: 6 batches of 32 through both slots
    for fmt in ("geotiff", "json", "geojson"):
        ours, ref = server.post("flood", scene, params={"format": fmt}), in_process.post("flood", scene, params={"format": fmt})
        assert ours.status_code == ref.status_code == 200, (ours.text[:300], ref.text[:300])
        assert ours.headers["content-type"] == ref.headers["content-type"]
        assert ours.headers["x-mapex-inputs"] == ref.headers["x-mapex-inputs"]
        if fmt == "geotiff":
            labels = server.cog_band(ours.content)
            np.testing.assert_array_equal(labels, server.cog_band(ref.content))
            assert {0, 1} <= set(np.unique(labels))  # water and land both found: a real mask, not a constant
            with MemoryFile(ours.content) as a, a.open() as mine, MemoryFile(ref.content) as b, b.open() as theirs:
                assert (mine.crs, mine.transform) == (theirs.crs, theirs.transform)
        else:
            assert ours.json() == ref.json()
    # A class head, on the real Sentinel-2 crop; posted again, the worker knows its keys and reads its grid from its
    # tags (``inputs._open_in_slab``): the same answer.
    ref = in_process.post("landcover", S2.read_bytes())
    for _ in range(2):
        ours = server.post("landcover", S2.read_bytes())
        assert ours.status_code == ref.status_code == 200
        assert ours.json() == ref.json()


def test_one_engine_runner_answers_as_several_do(start_server, built_repo, in_process, to_geotiff):
    """MAPEX_ENGINE_RUNNERS=1 (one batch in the engine, two slots) against the default, in the service process
    (a runner a core: three slots and batches in flight on 2 cores): the same labels; and a lone tile still goes
    straight through."""
    one = start_server(built_repo, MAPEX_ENGINE_RUNNERS="1")
    scene = sar_scene(to_geotiff, 300, seed=4)  # 169 tiles: 6 batches of 32 through the slots
    ours, ref = one.post("flood", scene), in_process.post("flood", scene)
    assert ours.status_code == ref.status_code == 200, ours.text[:300]
    agree = float((one.cog_band(ours.content) == in_process.cog_band(ref.content)).mean())
    assert agree >= 0.999, agree  # one thread or two may flip a near-tie pixel; a slot mixed up flips whole tiles
    small = sar_scene(to_geotiff, 32, seed=5)
    ours, ref = one.post("flood", small, params={"format": "json"}), in_process.post("flood", small, params={"format": "json"})
    assert ours.status_code == 200 and ours.json() == ref.json()


def test_an_answer_larger_than_the_pipe_arrives_whole(server, in_process, to_geotiff):
    """Hundreds of KiB of GeoJSON come back from the worker in several reads: one message, not taken for a death."""
    blocks = np.kron(np.random.default_rng(3).random((125, 125)) < 0.5, np.ones((8, 8), bool))  # 8 px ponds
    patchy = np.where(blocks, np.array([-21.0, -28.0])[:, None, None], np.array([-8.0, -15.0])[:, None, None])
    body = to_geotiff(patchy.astype(np.float32), ["VV", "VH"])
    ours, ref = (s.post("flood", body, params={"format": "geojson"}) for s in (server, in_process))
    assert ours.status_code == ref.status_code == 200
    assert len(ours.content) > 2**18, len(ours.content)  # more than the pipe holds at once (about 208 KiB here)
    assert ours.json() == ref.json()
    assert httpx.get(f"{server.url}/readyz").json()["decode_workers"]["restarts"] == 0


@pytest.mark.parametrize("case", ["garbage", "all_nan", "unknown_bands"])
def test_workers_refuse_bad_uploads_as_the_service_process_does(server, in_process, to_geotiff, case):
    body = {"garbage": b"II*\x00" + b"\x00" * 64,
            "all_nan": to_geotiff(np.full((2, 40, 40), np.nan, np.float32), ["VV", "VH"]),
            "unknown_bands": to_geotiff(np.zeros((2, 40, 40), np.float32), ["foo", "bar"])}[case]
    ours, ref = server.post("flood", body), in_process.post("flood", body)
    assert 400 <= ours.status_code < 500
    assert (ours.status_code, ours.json()) == (ref.status_code, ref.json())
    assert httpx.get(f"{server.url}/readyz").json()["decode_workers"]["restarts"] == 0  # refused, nothing crashed


def _slabs(server) -> list[Path]:
    return [p for folder in Path("/dev/shm").glob(f"mapex-{server.pid}") for p in folder.iterdir()]


def _posts_killing(server, scene: bytes, count: int, victim: int, after_s: float,
                   lead: Callable[[], bool] | None = None) -> list[httpx.Response]:
    """``count`` concurrent posts of ``scene``, with decode worker ``victim`` SIGKILLed ``after_s`` into them;
    with ``lead``, the first post goes alone until ``lead()`` is true, then the others."""

    def post() -> httpx.Response:
        return httpx.post(f"{server.url}/predict/flood", files={"file": ("scene.tif", scene)}, timeout=120)

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(post)]
        deadline = time.monotonic() + 60
        while lead is not None and not lead():
            assert time.monotonic() < deadline and not futures[0].done(), "the first post never got to its lead"
            time.sleep(0.01)
        futures += [pool.submit(post) for _ in range(count - 1)]
        time.sleep(after_s)
        assert not all(f.done() for f in futures), "the requests ended before the kill: make the scene larger"
        os.kill(victim, signal.SIGKILL)
        return [f.result() for f in futures]


def test_a_killed_worker_loses_no_request_and_the_pool_recovers(start_server, built_repo, to_geotiff):
    s = start_server(built_repo, MAPEX_DECODE_WORKERS="1")
    scene = sar_scene(to_geotiff, 768, seed=1)  # about 1,000 tiles: long enough to be killed under
    reference = s.cog_band(s.post("flood", scene).content)
    [victim] = decode_workers(s.pid)
    responses = _posts_killing(s, scene, 6, victim, after_s=1.0)
    assert [r.status_code for r in responses] == [200] * 6, [r.text[:200] for r in responses]
    for r in responses:
        np.testing.assert_array_equal(s.cog_band(r.content), reference)
    assert "trying it again on a fresh worker" in s.log
    ready = httpx.get(f"{s.url}/readyz").json()["decode_workers"]
    assert ready == {"ready": 1, "size": 1, "restarts": 1, "holding": 0}, "every request let go of its slab"
    [replacement] = decode_workers(s.pid)
    assert replacement != victim
    assert 'mapex_decode_worker_restarts_total 1.0' in httpx.get(f"{s.url}/metrics").text
    assert s.post("flood", scene).status_code == 200
    assert _slabs(s) == []  # every request's shared memory was removed, retried ones included


def test_a_worker_that_keeps_dying_gets_503_with_retry_after_and_the_pool_recovers_by_itself(
        start_server, built_repo, to_geotiff):
    s = start_server(built_repo, MAPEX_DECODE_WORKERS="1", MAPEX_REQUEST_TIMEOUT_S="8")  # waits 4 s for a worker
    scene = sar_scene(to_geotiff, 768, seed=2)
    stop = threading.Event()

    def kill_every_worker() -> None:  # a file that crashes GDAL would do this, once per try
        while not stop.is_set():
            for pid in decode_workers(s.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    killer = threading.Thread(target=kill_every_worker)
    killer.start()
    try:
        r = httpx.post(f"{s.url}/predict/flood", files={"file": ("scene.tif", scene)}, timeout=60)
        health = httpx.get(f"{s.url}/healthz")
    finally:
        stop.set()
        killer.join()
    assert r.status_code == 503, r.text[:300]
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"] == "DecodeUnavailableError" and "retry" in r.json()["detail"]
    assert health.status_code == 200  # the service itself lived through it
    deadline = time.monotonic() + 60
    while httpx.get(f"{s.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the pool did not recover"
        time.sleep(0.2)
    assert s.post("flood", scene).status_code == 200
    assert _slabs(s) == []


def test_an_upload_whose_tiles_find_no_room_is_decoded_in_the_service(start_server, built_repo, in_process,
                                                                      small_tmpfs):
    """The 0.5 MiB upload fits a 1 MiB tmpfs, a batch of its tiles does not: the worker says so before writing one."""
    shm = small_tmpfs("1m")
    s = start_server(built_repo, MAPEX_DECODE_WORKERS="1", MAPEX_SHM_DIR=str(shm))
    r = s.post("wildfire", S2)
    assert r.status_code == 200, r.text
    assert r.json()["probabilities"] == in_process.post("wildfire", S2).json()["probabilities"]
    assert "no shared memory for this upload (for its tiles:" in s.log
    assert httpx.get(f"{s.url}/readyz").json()["decode_workers"]["restarts"] == 0, "no worker died of SIGBUS"
    assert not list(shm.glob(f"mapex-{s.pid}/slab-*"))


def test_uploads_a_full_tmpfs_cannot_hold_are_decoded_in_the_service_and_all_answered(
        start_server, built_repo, in_process, small_tmpfs):
    """Docker's default /dev/shm, small: concurrent uploads that do not all fit fall back to the service process."""
    shm = small_tmpfs("3m")  # one request's slab (the 0.5 MiB upload and its task's tile buffers) fits, two do not
    s = start_server(built_repo, MAPEX_DECODE_WORKERS="1", MAPEX_SHM_DIR=str(shm))
    content = S2.read_bytes()
    reference = in_process.post("wildfire", content).json()["probabilities"]

    def post(i: int) -> httpx.Response:
        if i % 2:  # a raw body (its slab is made before it is read) and multipart (made after) alike
            return httpx.post(f"{s.url}/predict/wildfire", content=content, headers={"Content-Type": "image/tiff"},
                              timeout=120)
        return s.post("wildfire", content)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text[:200] for r in responses]
    for r in responses:
        got = r.json()["probabilities"]
        assert got.keys() == reference.keys()
        assert np.allclose(list(got.values()), list(reference.values()), atol=1e-4)
    assert "decoding it in the service process" in s.log, "some uploads had no room and fell back"
    assert httpx.get(f"{s.url}/readyz").json()["decode_workers"] == {"ready": 1, "size": 1, "restarts": 0,
                                                                    "holding": 0}
    assert not list(shm.glob(f"mapex-{s.pid}/slab-*"))


# ---------------------------------------------------------------------------------------------- scenes in parts


def _sar_values(size: int, seed: int) -> np.ndarray:
    """VV/VH in dB, open water on the left, land on the right, a NaN block across the middle (the cut of two parts at
    1500 px)."""
    rng = np.random.default_rng(seed)
    land, water = np.array([-8.0, -15.0])[:, None, None], np.array([-21.0, -28.0])[:, None, None]
    bands = np.where(np.arange(size) < size // 2, water, land) + rng.normal(0, 1.5, (2, size, size))
    bands[:, size // 2 - 30 : size // 2 + 30, 100:200] = np.nan
    return bands.astype(np.float32)


def _sar(to_geotiff, size: int, seed: int) -> bytes:
    """``_sar_values`` as a GeoTIFF."""
    return to_geotiff(_sar_values(size, seed), ["VV", "VH"])


@pytest.fixture(scope="module")
def split_server(built_repo, server_type, tmp_path_factory):
    """Two decode workers and every /predict mask scene large enough split in two (on a CPU engine: told to)."""
    s = server_type(built_repo, tmp_path_factory.mktemp("split") / "server.log", MAPEX_DECODE_WORKERS="2",
                    MAPEX_PREDICT_PARTS="2")
    yield s
    s.stop()


def test_a_scene_split_across_two_workers_answers_as_the_service_process_does(split_server, in_process, to_geotiff):
    scene = _sar(to_geotiff, 1500, seed=1)  # 2.25 million pixels: two parts
    for fmt in ("geotiff", "json"):
        ours, ref = (s.post("flood", scene, params={"format": fmt}) for s in (split_server, in_process))
        assert ours.status_code == ref.status_code == 200, (ours.text[:300], ref.text[:300])
        if fmt == "geotiff":
            labels = split_server.cog_band(ours.content)
            np.testing.assert_array_equal(labels, in_process.cog_band(ref.content))
            assert {0, 1} <= set(np.unique(labels))
        else:
            assert ours.json() == ref.json()
            assert ours.json()["masked_pixels"]["total"] == 60 * 100
    assert "runs in 2 parts on the decode workers: rows 0-748, 748-1500" in split_server.log
    small = _sar(to_geotiff, 1000, seed=2)  # one part's pixels: run whole on one worker
    ours, ref = (s.post("flood", small, params={"format": "json"}) for s in (split_server, in_process))
    assert ours.status_code == 200 and ours.json() == ref.json()
    assert split_server.log.count("runs in 2 parts") == 2
    metrics = httpx.get(f"{split_server.url}/metrics").text
    assert 'mapex_scene_parts_count{specialist="flood-sar"} 2.0' in metrics
    assert 'mapex_scene_parts_sum{specialist="flood-sar"} 4.0' in metrics
    assert httpx.get(f"{split_server.url}/readyz").json()["decode_workers"] == {
        "ready": 2, "size": 2, "restarts": 0, "holding": 0}
    assert _slabs(split_server) == [], "the shared masks and slabs were removed"


def test_a_split_scene_whose_values_do_not_fit_their_units_is_refused_as_the_service_process_does(
        split_server, in_process, to_geotiff):
    """The first part checks the values once the scene is split, while the other part runs: the same 422."""
    linear = (10 ** (_sar_values(1500, seed=4) / 10)).astype(np.float32)  # linear backscatter, no unit said: taken as dB
    scene = to_geotiff(linear, ["VV", "VH"])
    before = split_server.log.count("runs in 2 parts")
    ours, ref = (s.post("flood", scene, params={"format": "json"}) for s in (split_server, in_process))
    assert ours.status_code == ref.status_code == 422 and ours.json() == ref.json(), (ours.text[:300], ref.text[:300])
    assert "units=linear" in ours.json()["detail"]
    assert split_server.log.count("runs in 2 parts") == before + 1, "refused by the first part, after the split"
    assert httpx.get(f"{split_server.url}/readyz").json()["decode_workers"]["holding"] == 0
    assert _slabs(split_server) == []
    assert split_server.post("flood", _sar(to_geotiff, 1500, seed=5), params={"format": "json"}).status_code == 200


def test_a_worker_killed_under_a_split_scene_loses_no_request(start_server, built_repo, to_geotiff):
    s = start_server(built_repo, MAPEX_DECODE_WORKERS="2", MAPEX_PREDICT_PARTS="2")
    scene = _sar(to_geotiff, 1500, seed=3)  # two parts
    reference = s.cog_band(s.post("flood", scene).content)
    victim = decode_workers(s.pid)[1]
    # The first of the three alone until it is split across both workers (three at once would each find the
    # other worker busy opening another and none split), then the others, and the kill under its parts.
    responses = _posts_killing(s, scene, 3, victim, after_s=0.2, lead=lambda: s.log.count("runs in 2 parts") == 2)
    assert [r.status_code for r in responses] == [200] * 3, [r.text[:200] for r in responses]
    for r in responses:
        np.testing.assert_array_equal(s.cog_band(r.content), reference)
    assert "trying it again on a fresh worker" in s.log
    deadline = time.monotonic() + 60
    while (ready := httpx.get(f"{s.url}/readyz").json()["decode_workers"])["ready"] < 2:
        assert time.monotonic() < deadline, "the pool did not recover"
        time.sleep(0.2)
    assert ready == {"ready": 2, "size": 2, "restarts": 1, "holding": 0}
    assert victim not in decode_workers(s.pid)
    assert s.post("flood", scene).status_code == 200
    assert _slabs(s) == []


def test_a_split_scene_is_admitted_once_and_never_refused_by_its_own_parts(start_server, built_repo, to_geotiff):
    """The other part fills the engine's queue while the first checks the values: the first part's first batch must
    not meet the admission check again (it did, and an admitted scene in 15 parts got 503 on a 16-core node). A queue
    of one batch stands for the parts of a larger node."""
    s = start_server(built_repo, MAPEX_DECODE_WORKERS="2", MAPEX_PREDICT_PARTS="2", MAPEX_MAX_QUEUE="32")
    r = s.post("flood", _sar(to_geotiff, 1500, seed=6), params={"format": "json"})
    assert r.status_code == 200, r.text[:300]
    assert "runs in 2 parts" in s.log
    assert httpx.get(f"{s.url}/readyz").json()["decode_workers"]["holding"] == 0

"""bench.harness: proportional memory (PSS) and its sampled peak, read from /proc of real processes."""

import subprocess
import sys
import time
from argparse import Namespace

from bench.harness import PeakPss, cpu_bound_seconds, markdown_table
from bench.serve import service_env
from mapex_serve.cores import usable_cores
from mapex_serve.local import cpu_seconds, folder_bytes, pss_bytes, status_bytes

#: A child that holds 200 MiB of its own pages for a moment, then lets them go and idles.
_BURST = ("import time; time.sleep(0.3); b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
          "time.sleep(0.6); del b; time.sleep(5)")


class _Child:
    """The ``pss_bytes`` that ``PeakPss`` samples, of one process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pss_bytes(self) -> int:
        return pss_bytes(self.pid)

    def shm_bytes(self) -> int:
        return 0  # a process with no slabs


def test_pss_is_at_most_rss_and_counts_shared_pages_once():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        time.sleep(0.5)
        # the interpreter's libraries are shared with this process: the child's PSS counts them in part
        assert 0 < pss_bytes(child.pid) < status_bytes(child.pid, "VmRSS")
    finally:
        child.kill()
        child.wait()


def test_the_sampled_peak_sees_a_burst_that_is_gone_by_the_end():
    child = subprocess.Popen([sys.executable, "-c", _BURST])
    try:
        with PeakPss(_Child(child.pid), interval=0.05) as peak:
            time.sleep(1.5)
        after = pss_bytes(child.pid)
        assert peak.peak - after > 150 * 2**20, (peak.peak, after)
    finally:
        child.kill()
        child.wait()


def test_a_folder_counts_the_blocks_its_files_take_not_their_sizes(tmp_path):
    """What ``LocalService.shm_bytes`` reads: a slab's reserved or written pages, which no process need map."""
    written, sparse = tmp_path / "written", tmp_path / "sparse"
    written.write_bytes(b"x" * 3 * 2**20)
    with sparse.open("wb") as f:
        f.truncate(64 * 2**20)  # sized, nothing written or reserved
    assert 3 * 2**20 <= folder_bytes(tmp_path) < 3 * 2**20 + 2**20
    assert folder_bytes(tmp_path / "gone") == 0


def test_several_service_processes_plan_their_own_threads():
    args = Namespace(max_batch=32, threads=2, runners=1, processes=4)
    assert service_env(args, "on") == {"MAPEX_MAX_BATCH": "32", "UVICORN_WORKERS": "4"}
    one = service_env(Namespace(max_batch=32, threads=2, runners=1, processes=1), "on")
    assert one["MAPEX_INTRA_OP_THREADS"] == "2" and "UVICORN_WORKERS" not in one


def test_a_missing_figure_shows_as_not_applicable():
    assert markdown_table([{"a": None, "b": 1.5}], ["a", "b"]).splitlines()[-1] == "| n/a | 1.5 |"


def test_a_busy_process_takes_at_least_the_cpu_bound_of_its_cpu():
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.6\n"
                              "while time.process_time() < end: pass\nimport sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        start = time.perf_counter()
        while cpu_seconds(child.pid) < 0.6:
            time.sleep(0.02)
        wall, cpu = time.perf_counter() - start, cpu_seconds(child.pid)
    finally:
        child.kill()
        child.wait()
    assert cpu >= 0.6
    assert cpu_bound_seconds(cpu, 1) <= wall + 0.05  # one thread: never faster than one core (0.05: /proc's tick)
    assert cpu_bound_seconds(cpu) == cpu / usable_cores()  # by default, the cores this process may use


"""The service as a local subprocess on loopback, ready when ``/readyz`` says so: for tests, benchmarks, scripts.

A separate process, as in production: its CPU time, memory and signals are its own. Standard
library only, so that it needs nothing the service does not already install.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["LocalService", "cpu_seconds", "decode_workers", "folder_bytes", "free_port", "is_ready", "pss_bytes",
           "status_bytes"]


def status_bytes(pid: int | str, name: str) -> int:
    """A memory line of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in bytes: what the kernel saw, native included."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {name} line")


def folder_bytes(folder: Path) -> int:
    """Bytes the files directly in ``folder`` take on their file system (allocated blocks: a sparse file's holes
    take none); 0 for a folder that is not there."""
    total = 0
    for path in folder.glob("*"):
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile
            total += path.stat().st_blocks * 512
    return total


def pss_bytes(pid: int | str) -> int:
    """Proportional set size (``/proc/<pid>/smaps_rollup``): its resident memory with each page shared by n
    processes counted 1/n, so that a sum over processes counts the libraries every decode worker maps once."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/smaps_rollup has no Pss line")


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU of a process so far (``/proc/<pid>/stat``), every thread included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def decode_workers(pid: int | str) -> list[int]:
    """The decode worker processes of the service ``pid`` (multiprocessing's spawned children; Linux)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            children += [int(c) for c in (task / "children").read_text().split()]
    found = []
    for child in children:
        with contextlib.suppress(FileNotFoundError):  # a process that exited meanwhile
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_ready(url: str) -> bool:
    """Whether the server at ``url`` answers ``/readyz`` with 200 now."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class LocalService:
    """``python -m mapex_serve --repo REPO [args]`` on a free loopback port with extra ``env``; a context manager.

    Its output goes to ``log`` (a file: a pipe nobody reads fills up under load and blocks the
    server's logging). Start-up raises with the end of the log when the service is not ready in time.
    """

    def __init__(self, repo: Path, log: Path, env: dict[str, str] | None = None, ready_timeout: float = 180,
                 args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log)
        cmd = [sys.executable, "-m", "mapex_serve", "--port", str(self.port), "--repo", str(repo), *args]
        environment = {**os.environ, **(env or {})}
        self._shm = Path(environment.get("MAPEX_SHM_DIR", "/dev/shm"))
        with self.log_path.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=environment, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout
        while not is_ready(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log[-3000:]
                self.stop()
                raise RuntimeError(f"the service did not become ready; the end of its log:\n{tail}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def processes(self) -> list[int]:
        """The service and its decode workers: what its memory and CPU are summed over."""
        return [self.pid, *decode_workers(self.pid)]

    def _sum(self, measure: Callable[[int], float]) -> float:
        total = 0.0
        for pid in self.processes:
            with contextlib.suppress(FileNotFoundError):  # a worker that exited meanwhile
                total += measure(pid)
        return total

    def rss_bytes(self) -> int:
        """Resident memory now, the service and its decode workers together (Linux)."""
        return int(self._sum(lambda pid: status_bytes(pid, "VmRSS")))

    def pss_bytes(self) -> int:
        """Proportional memory now, summed over the service and its decode workers: what they hold together."""
        return int(self._sum(pss_bytes))

    def shm_bytes(self) -> int:
        """Bytes of the tmpfs the service's slabs hold now (``slab_folder_of``). An upload the event loop wrote there
        with ``pwrite`` (and the worker reads with ``pread``) is mapped by no process: in no RSS or PSS."""
        from mapex_serve.decode.slab import slab_folder_of  # here: importing this module needs the stdlib only

        return folder_bytes(slab_folder_of(self.pid, self._shm))

    def peak_rss_bytes(self) -> int:
        """Peak resident memory since start or the last ``reset_peak_rss`` (VmHWM), summed over the processes.

        A sum of per-process peaks: at least the true peak of the whole, never less.
        """
        return int(self._sum(lambda pid: status_bytes(pid, "VmHWM")))

    def reset_peak_rss(self) -> int:
        """Reset the peaks to the current RSS (Linux ``clear_refs`` 5), so that the next request's peak is its own."""
        for pid in self.processes:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        return self.rss_bytes()

    def cpu_seconds(self) -> float:
        """CPU used so far by the service and its live decode workers."""
        return self._sum(cpu_seconds)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the service drains its requests), then SIGKILL after ``timeout``; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> LocalService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

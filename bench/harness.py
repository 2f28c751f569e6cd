"""What the three benchmarks share: the model repository, the service process, timing and reports.

Every goal is a ratio of two figures measured in the same run, because the machines are shared
and noisy: absolute seconds from one run say little about the next, their ratio says more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mapex_serve.cores import service_cores, usable_cores
from mapex_serve.engine import plan_threads
from mapex_serve.local import LocalService, status_bytes
from mapex_serve.repository import Manifest, load_manifest, scan_repository

__all__ = [
    "body_stream",
    "cpu_bound_seconds",
    "post_scene",
    "RESULTS",
    "Goal",
    "Report",
    "PeakPss",
    "ServiceProcess",
    "ensure_repo",
    "find_entry",
    "markdown_table",
    "percentile",
    "peak_rss_bytes",
    "reset_peak_rss",
    "service_arguments",
    "timed",
]

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parents[1]


def ensure_repo(repo: Path, checkpoint: Path | None) -> Path:
    """The model repository, built as ``make serve`` builds it when it holds no entry yet.

    ``export.build`` pre-trains and caches the tiny demo model when no checkpoint is given.
    """
    if not scan_repository(repo):
        cmd = [sys.executable, "-m", "export.build", "--all", "--repo", str(repo), "--no-trt", "--jobs", "2"]
        if checkpoint is not None:
            cmd += ["--checkpoint", str(checkpoint)]
        print(f"no specialists in {repo}: building them ({' '.join(cmd[1:])})", file=sys.stderr)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return repo


def engine_arguments(p: argparse.ArgumentParser, runners_help: str) -> None:
    """``--threads`` and ``--runners``, unset by default: ``resolve_engine_threads`` fills in the service's own choice."""
    p.add_argument("--threads", type=int, help="MAPEX_INTRA_OP_THREADS, for the service and the baseline alike "
                   "(default: the service's, the cores over --runners)")
    p.add_argument("--runners", type=int, help=runners_help + " (default: the service's, one a core on the CPU)")


def resolve_engine_threads(args: argparse.Namespace) -> None:
    """Fill ``args.runners`` and ``args.threads`` left unset with what the service picks for a CPU engine here,
    so that the service, the baseline and a peer all run the same configuration and the report names it."""
    plan = plan_threads(args.runners, args.threads, True, service_cores())
    args.runners, args.threads = plan.runners, plan.intra_op


def repo_arguments(p: argparse.ArgumentParser) -> None:
    """``--repo`` and ``--checkpoint``: the model repository, built from the checkpoint when it is empty."""
    p.add_argument("--repo", type=Path, default=Path("models"), help="model repository (built if empty, as make serve)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint to build the repository from (default: the demo model)")


def service_arguments(p: argparse.ArgumentParser, task: str, help_task: str) -> None:
    """The options that ``bench.serve`` and ``bench.scene`` share: which specialist, and the service's settings."""
    repo_arguments(p)
    p.add_argument("--task", default=task, help=help_task)
    p.add_argument("--modality", default="RGB", help="the specialist's modality (default RGB)")
    engine_arguments(p, "MAPEX_ENGINE_RUNNERS for the service; the baseline runs as many batches at once")
    p.add_argument("--max-batch", type=int, default=32, help="MAPEX_MAX_BATCH (with dynamic batching on)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for <name>.json and <name>.md")


def find_entry(repo: Path, task: str, modalities: Sequence[str]) -> tuple[Path, Manifest]:
    """The newest entry of ``task`` for exactly ``modalities`` (what the service would serve)."""
    wanted = sorted(m.upper() for m in modalities)
    found = [(e, m) for e in scan_repository(repo) if (m := load_manifest(e)).task == task
             and sorted(m.modalities) == wanted]
    if not found:
        raise SystemExit(f"{repo} has no {task} specialist for {wanted}; build it with "
                         f"python -m export.build --task {task} --modality ... --repo {repo}")
    return max(found, key=lambda f: f[1].version)


def mask_specialist(args: argparse.Namespace, why: str) -> tuple[Path, Path, Manifest]:
    """The repository (built if empty), and the entry and manifest of ``args.task``'s specialist for
    ``args.modality``, which must have a mask head (``why`` says what the benchmark needs one for)."""
    repo = ensure_repo(args.repo, args.checkpoint)
    entry, manifest = find_entry(repo, args.task, [args.modality])
    if manifest.head != "mask":
        raise SystemExit(f"{manifest.name} has a {manifest.head} head; {why}: use a mask task")
    return repo, entry, manifest


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation, as numpy's default."""
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def timed(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` calls, after ``warmup`` untimed ones (allocation, thread start)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def peak_rss_bytes(pid: int | str = "self") -> int:
    """Peak resident memory of a process (VmHWM): what the kernel saw, native allocations included."""
    return status_bytes(pid, "VmHWM")


def reset_peak_rss(pid: int | str = "self") -> int:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5) and return that RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return status_bytes(pid, "VmRSS")


#: Pieces a large body is handed to httpx in (see ``body_stream``).
_SEND_CHUNK = 2**20


def body_stream(body: bytes) -> tuple[Iterator[bytes], dict[str, str]]:
    """A raw body as httpx ``content`` in 1 MiB pieces, and the ``Content-Length`` header that keeps it unchunked.

    Handed over whole, httpcore re-slices what is left after every ``socket.send`` (a copy of the
    rest each time): a 129 MiB scene took 0.3 to 0.96 s to leave this process, which a socket's
    ``sendall`` sends in 0.07 to 0.1 s, and that time counted as the service's.
    """
    pieces = (body[i : i + _SEND_CHUNK] for i in range(0, len(body), _SEND_CHUNK))
    return pieces, {"Content-Length": str(len(body))}


def post_scene(url: str, task: str, modality: str, body: bytes) -> tuple[httpx.Response, float]:
    """A whole scene posted raw to ``/predict/{task}``: the 200 answer (anything else ends the run) and its wall seconds."""
    start = time.perf_counter()
    pieces, length = body_stream(body)
    r = httpx.post(f"{url}/predict/{task}?modality={modality}", content=pieces,
                   headers={"Content-Type": "image/tiff", **length}, timeout=3600)
    wall = time.perf_counter() - start
    if r.status_code != 200:
        raise SystemExit(f"the service answered {r.status_code}: {r.text[:500]}")
    return r, wall


class ServiceProcess(LocalService):
    """The service on loopback with ``MAPEX_*`` settings (CPU provider unless ``env`` says otherwise).

    A separate process, as in production: the client's CPU time and the server's are apart, and
    the server's peak RSS is its own. Its log lives in ``bench/results`` while it runs. No access
    log, as the Docker image (docker/logging.json): a line a request is a tenth of the event loop's
    time on small requests, and Triton logs none by default either.
    """

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        super().__init__(repo, RESULTS / f"server-{os.getpid()}.log", {"MAPEX_PROVIDERS": "cpu", **env},
                         args=["--no-access-log"])

    def metric(self, name: str) -> float:
        """One sample of /metrics by its full name with labels (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)), 0.0)

    def stop(self, timeout: float = 30) -> int | None:
        code = super().stop(timeout)
        self.log_path.unlink(missing_ok=True)
        return code


class PeakPss:
    """The largest summed PSS of a service (``LocalService.pss_bytes``) and its slabs' tmpfs pages
    (``LocalService.shm_bytes``) seen while the block runs, sampled every ``interval`` seconds on a thread: a lower
    bound of its true peak, as a sum of per-process VmHWM is an upper one (that counts each library a decode worker
    maps once a worker). ``shm_peak``: the largest tmpfs share alone (the slab pages a process maps count twice in
    ``peak``: a few MiB of tile and probability slots)."""

    def __init__(self, server: LocalService, interval: float = 0.05) -> None:
        self.server, self.interval, self.peak, self.shm_peak = server, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-pss", daemon=True)

    def _sample(self) -> None:
        while True:
            self._measure()
            if self._stop.wait(self.interval):
                return

    def _measure(self) -> None:
        shm = self.server.shm_bytes()
        self.shm_peak = max(self.shm_peak, shm)
        self.peak = max(self.peak, self.server.pss_bytes() + shm)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._measure()


@dataclass
class Goal:
    """One goal of the issue: a ratio, the bound it must meet and the figures behind it."""

    name: str
    value: float
    bound: float
    at_most: bool  # True: value <= bound is met; False: value >= bound
    detail: str = ""
    #: Each round's figure when ``value`` is their median: how far one run moves on shared cores.
    rounds: tuple[float, ...] = ()

    @property
    def met(self) -> bool:
        return self.value <= self.bound if self.at_most else self.value >= self.bound

    def score(self, value: float | None = None) -> float:
        """``value`` (default: the figure) against the bound, oriented so that >= 1 is met whichever way it points."""
        value = self.value if value is None else value
        return self.bound / value if self.at_most else value / self.bound

    def line(self) -> str:
        op = "<=" if self.at_most else ">="
        return f"{'MET' if self.met else 'NOT MET'}: {self.name}: {self.value:.3f} (goal {op} {self.bound:g}){self.detail}"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows of dicts as a markdown table; floats to three significant decimals."""

    def cell(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


@dataclass
class Report:
    """A benchmark's figures: printed, and written as ``<out>/<name>.json`` and ``<name>.md``."""

    name: str
    title: str
    setup: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        goals = [g.line() for g in self.goals]
        md = [f"# {self.title}", "", "Setup: " + ", ".join(f"{k} {v}" for k, v in self.setup.items()), "",
              markdown_table(self.rows, self.columns), "", *(f"- {g}" for g in goals), *(f"- {n}" for n in self.notes)]
        text = "\n".join(md) + "\n"
        (out / f"{self.name}.md").write_text(text)
        payload = {"benchmark": self.name, "setup": self.setup, "rows": self.rows, "notes": self.notes,
                   "goals": [{"name": g.name, "value": g.value, "bound": g.bound,
                              "op": "<=" if g.at_most else ">=", "met": g.met, "detail": g.detail.strip(),
                              "rounds": list(g.rounds)}
                             for g in self.goals]}
        (out / f"{self.name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(text)
        print(f"wrote {out / self.name}.json and .md")


def cpu_bound_seconds(cpu_seconds: float, cores: int | None = None) -> float:
    """The shortest wall time ``cpu_seconds`` of CPU can take on ``cores`` cores (default: those this process may
    use): every core busy all the time. A goal that needs a run shorter than this needs less CPU, not more overlap;
    a run far above it waits (on the GIL, a pipe, a lone busy stage) rather than computes."""
    return cpu_seconds / (cores or usable_cores())


def median(values: Sequence[float]) -> float:
    return statistics.median(values)

"""How many cores this process may use: its CPU affinity, capped by its container's CPU quota.

In a Kubernetes pod or a ``docker run --cpus`` container the affinity still lists every core of
the node; the quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``) is
what the kernel lets it run. Pools sized by the affinity alone would start a decode worker for
every core of a 64-core node in a pod limited to 4, each with its own memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "service_cores", "service_processes", "usable_cores"]

CGROUP = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _v2_limit(folder: Path) -> float | None:
    """``cpu.max`` of one cgroup v2 folder: ``"400000 100000"`` is 4 cores, ``"max 100000"`` none."""
    quota, period = folder.joinpath("cpu.max").read_text().split()[:2]
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(folder: Path) -> float | None:
    quota = int(folder.joinpath("cpu.cfs_quota_us").read_text())
    period = int(folder.joinpath("cpu.cfs_period_us").read_text())
    return None if quota <= 0 or period <= 0 else quota / period


def _own_folders(root: Path, proc_cgroup: Path) -> list[tuple[Path, bool]]:
    """``(folder, is_v2)`` of this process's CPU cgroup and each of its parents up to the mount, innermost first."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return [(root, True), (root / "cpu", False)]
    found: list[tuple[Path, bool]] = []
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        v2 = controllers == ""
        if not v2 and "cpu" not in controllers.split(","):
            continue
        base = (root / "unified" if (root / "unified").is_dir() else root) if v2 else root / "cpu"  # hybrid: v2 under unified/
        parts = Path(path).relative_to("/").parts if path.startswith("/") else ()
        found += [(base.joinpath(*parts[:n]), v2) for n in range(len(parts), -1, -1)]
    return found


def cgroup_cpu_limit(root: Path = CGROUP, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota over this process's cgroup and its parents, in cores; None where none is set."""
    limits = []
    for folder, v2 in _own_folders(root, proc_cgroup):
        try:
            limit = _v2_limit(folder) if v2 else _v1_limit(folder)
        except (OSError, ValueError):
            continue  # no such file at this level (the root cgroup has no cpu.max)
        if limit is not None:
            limits.append(limit)
    return min(limits, default=None)


def usable_cores(root: Path = CGROUP, proc_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """The cores in this process's affinity, at most its CPU quota rounded up, and at least 1."""
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root, proc_cgroup)
    return cores if limit is None else max(1, min(cores, math.ceil(limit)))


def service_processes() -> int:
    """``UVICORN_WORKERS``: the service processes sharing these cores (1 when unset or not a number)."""
    services = os.environ.get("UVICORN_WORKERS", "1")
    return max(int(services), 1) if services.isdigit() else 1


def service_cores() -> int:
    """This service process's share of the usable cores, at least 1."""
    return max(usable_cores() // service_processes(), 1)

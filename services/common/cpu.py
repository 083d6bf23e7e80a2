"""How many CPUs this process may keep busy: the default thread count of every
compute pool (torch's intra-op threads, llama.cpp's n_threads).

In a container the node's core count is the wrong answer: a pod limited to 2 CPUs
on a 64-core node that starts 64 threads is throttled by the CFS quota every
period. The limit is the cgroup's CPU quota (cgroup v2 `cpu.max`, v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`; the smallest along the cgroup's
ancestors that this process can see), rounded down (a thread more than the quota
is what gets throttled) and never below 1, and never more than the CPUs the
process may run on (`os.sched_getaffinity`, which also covers cpusets).

Written here rather than taken from a library: the ones that read the quota
(joblib/loky's `cpu_count`) read fixed paths only, cannot be pointed at test
files, round up, and are not a dependency of every image."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

#: Where the cgroup file systems are mounted (v2 itself; v1 one directory per controller).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: This process's cgroup memberships.
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
#: v1 directories that may hold the cpu controller, by how distributions mount it.
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def affinity_cpus() -> int:
    """CPUs the scheduler may run this process on (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _memberships(proc_cgroup: Path) -> dict[str, str]:
    """Hierarchy -> this process's cgroup path in it: "" for v2 ("0::/path"), each v1
    controller by name ("4:cpu,cpuacct:/path" gives "cpu" and "cpuacct")."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in proc_cgroup.read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, path = parts
            if not controllers:
                out[""] = path
            for controller in controllers.split(","):
                if controller:
                    out[controller] = path
    return out


def _own_and_ancestors(base: Path, path: str) -> Iterator[Path]:
    """base/path and each directory above it up to base. Inside a cgroup namespace
    (or with the container's own cgroup mounted at base) the path does not exist
    under base and only base itself is found."""
    relative = Path(path.lstrip("/"))
    while True:
        yield base / relative
        if relative == Path("."):
            return
        relative = relative.parent


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(directory: Path) -> float | None:
    """CPUs allowed by `cpu.max` ("max 100000": no limit; "200000 100000": 2)."""
    text = _read(directory / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(directory: Path) -> float | None:
    """CPUs allowed by `cpu.cfs_quota_us` over `cpu.cfs_period_us` (-1: no limit)."""
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    """quota / period in CPUs; None for no limit (-1) or a value that is not a number."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_quota(root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 for "150000 100000"), the
    smallest of its own and its ancestors' that are visible; None without one.
    cgroup v2 is read where it carries the cpu controller, else v1."""
    root = CGROUP_ROOT if root is None else root
    memberships = _memberships(PROC_SELF_CGROUP if proc_cgroup is None else proc_cgroup)
    quotas: list[float] = []
    if (root / "cgroup.controllers").exists():  # v2 mounted at root: the unified hierarchy
        for directory in _own_and_ancestors(root, memberships.get("", "/")):
            quota = _v2_quota(directory)
            if quota is not None:
                quotas.append(quota)
    if not quotas:
        for name in _V1_CPU_DIRS:
            base = root / name
            if not base.is_dir():
                continue
            for directory in _own_and_ancestors(base, memberships.get("cpu", "/")):
                quota = _v1_quota(directory)
                if quota is not None:
                    quotas.append(quota)
            break
    return min(quotas) if quotas else None


def cpu_limit(root: Path | None = None, proc_cgroup: Path | None = None) -> int:
    """CPUs this process may keep busy: the cgroup quota rounded down (at least 1),
    at most the CPUs of its affinity; the affinity alone without a quota."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is None:
        return cpus
    return max(1, min(cpus, math.floor(quota)))


def threads(configured: int | None) -> int:
    """A pool's thread count: the setting when given, else `cpu_limit()`."""
    return configured if configured is not None else cpu_limit()

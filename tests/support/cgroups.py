"""Fake cgroup file systems for tests of CPU limits (services.common.cpu): the files a
container sees under /sys/fs/cgroup and /proc/self/cgroup, written under a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common import cpu


@dataclass(frozen=True)
class FakeCgroup:
    root: Path  # stands for /sys/fs/cgroup
    proc_cgroup: Path  # stands for /proc/self/cgroup

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def cgroup_v2(folder: Path, cpu_max: str | None = None, path: str = "/") -> FakeCgroup:
    """The unified hierarchy with this process in `path`; `cpu_max` (e.g. "200000
    100000") in that cgroup's cpu.max, none when None."""
    fake = FakeCgroup(folder / "sys-fs-cgroup", folder / "proc-self-cgroup")
    fake.root.mkdir(parents=True)
    fake.write("cgroup.controllers", "cpuset cpu io memory pids")
    fake.proc_cgroup.write_text(f"0::{path}\n")
    if cpu_max is not None:
        fake.write(f"{path}/cpu.max", cpu_max)
    return fake


def cgroup_v1(
    folder: Path,
    quota_us: int,
    period_us: int = 100_000,
    path: str = "/",
    mount: str = "cpu,cpuacct",
) -> FakeCgroup:
    """v1 hierarchies with the cpu controller mounted at root/`mount` and this process
    in `path`, whose cpu.cfs_quota_us and cpu.cfs_period_us are given."""
    fake = FakeCgroup(folder / "sys-fs-cgroup", folder / "proc-self-cgroup")
    (fake.root / "memory").mkdir(parents=True)
    fake.proc_cgroup.write_text(f"5:memory:{path}\n4:cpu,cpuacct:{path}\n1:name=systemd:/\n")
    fake.write(f"{mount}/{path}/cpu.cfs_quota_us", str(quota_us))
    fake.write(f"{mount}/{path}/cpu.cfs_period_us", str(period_us))
    return fake


def limit_cpus(monkeypatch: pytest.MonkeyPatch, folder: Path, cpus: int) -> FakeCgroup:
    """Make this process look like a container limited to `cpus` CPUs (cgroup v2)."""
    fake = cgroup_v2(folder, f"{cpus * 100_000} 100000")
    monkeypatch.setattr(cpu, "CGROUP_ROOT", fake.root)
    monkeypatch.setattr(cpu, "PROC_SELF_CGROUP", fake.proc_cgroup)
    return fake

"""CPU limits from cgroup files (services.common.cpu), over fake cgroup file systems
written as a container sees them, and once over this machine's own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common import cpu
from tests.support.cgroups import cgroup_v1, cgroup_v2, limit_cpus


def test_v2_quota_is_cpu_max_in_cpus(tmp_path: Path) -> None:
    fake = cgroup_v2(tmp_path, "150000 100000")
    assert cpu.cgroup_cpu_quota(fake.root, fake.proc_cgroup) == 1.5
    # Rounded down: the thread beyond the quota is the one that gets throttled.
    assert cpu.cpu_limit(fake.root, fake.proc_cgroup) == 1


def test_v2_without_a_limit_is_the_affinity(tmp_path: Path) -> None:
    fake = cgroup_v2(tmp_path, "max 100000")
    assert cpu.cgroup_cpu_quota(fake.root, fake.proc_cgroup) is None
    assert cpu.cpu_limit(fake.root, fake.proc_cgroup) == len(os.sched_getaffinity(0))


def test_v2_takes_the_smallest_quota_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    fake = cgroup_v2(tmp_path, "max 100000", path="/kubepods.slice/pod-a/ctr")
    fake.write("kubepods.slice/pod-a/cpu.max", "250000 100000")
    fake.write("kubepods.slice/cpu.max", "800000 100000")
    assert cpu.cgroup_cpu_quota(fake.root, fake.proc_cgroup) == 2.5


def test_v2_in_a_cgroup_namespace_reads_the_mounted_cgroup(tmp_path: Path) -> None:
    # /proc/self/cgroup names a path that the container's mount does not show.
    fake = cgroup_v2(tmp_path, "300000 100000")
    fake.proc_cgroup.write_text("0::/kubepods.slice/pod-a/ctr\n")
    assert cpu.cgroup_cpu_quota(fake.root, fake.proc_cgroup) == 3.0


@pytest.mark.parametrize("mount", ["cpu,cpuacct", "cpu"])
def test_v1_quota_is_cfs_quota_over_period(tmp_path: Path, mount: str) -> None:
    fake = cgroup_v1(tmp_path, quota_us=50_000, period_us=25_000, mount=mount)
    assert cpu.cgroup_cpu_quota(fake.root, fake.proc_cgroup) == 2.0


def test_v1_without_a_limit_and_nested_paths(tmp_path: Path) -> None:
    unlimited = cgroup_v1(tmp_path / "a", quota_us=-1)
    assert cpu.cgroup_cpu_quota(unlimited.root, unlimited.proc_cgroup) is None
    nested = cgroup_v1(tmp_path / "b", quota_us=-1, path="/docker/abc")
    nested.write("cpu,cpuacct/docker/cpu.cfs_quota_us", "100000")
    nested.write("cpu,cpuacct/docker/cpu.cfs_period_us", "100000")
    assert cpu.cgroup_cpu_quota(nested.root, nested.proc_cgroup) == 1.0


def test_a_quota_above_the_affinity_is_the_affinity(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    fake = cgroup_v2(tmp_path, f"{(cpus + 3) * 100_000} 100000")
    assert cpu.cpu_limit(fake.root, fake.proc_cgroup) == cpus


def test_a_fraction_of_a_cpu_is_one_thread(tmp_path: Path) -> None:
    fake = cgroup_v2(tmp_path, "20000 100000")
    assert cpu.cgroup_cpu_quota(fake.root, fake.proc_cgroup) == 0.2
    assert cpu.cpu_limit(fake.root, fake.proc_cgroup) == 1


def test_unreadable_or_missing_files_mean_no_quota(tmp_path: Path) -> None:
    garbage = cgroup_v2(tmp_path / "a", "lots 100000")
    assert cpu.cgroup_cpu_quota(garbage.root, garbage.proc_cgroup) is None
    nothing = tmp_path / "b"
    nothing.mkdir()
    assert cpu.cgroup_cpu_quota(nothing, nothing / "cgroup") is None


def test_threads_is_the_setting_when_given_else_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit_cpus(monkeypatch, tmp_path, 1)
    assert cpu.cpu_limit() == 1
    assert cpu.threads(None) == 1
    assert cpu.threads(6) == 6


def test_this_machine_has_a_limit_within_its_cpus() -> None:
    assert 1 <= cpu.cpu_limit() <= (os.cpu_count() or 1)

"""The GPU images' Python packages agree with each other, without installing them.

pip resolves each GPU image's set (the project with the image's extras, the vLLM release, every
version from requirements/gpu.txt) with `--dry-run --report`. Offline, by default: over stub
wheels that carry the core metadata pip read from the index when gpu.txt was derived
(tests/charts/metadata/gpu.json) and the project's metadata from pyproject.toml, so a changed
pyproject.toml or gpu.txt is checked by pip's own resolver in every run. The index serves no
metadata files here (PEP 658), so an online resolve downloads every wheel (about 4.4 GB):
ATALAYA_ONLINE_RESOLVE=1 runs it, and compares what the index declares with the stored copy.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.charts.pip_resolve import (
    GPU_CONSTRAINTS,
    IMAGES,
    LOCK,
    METADATA_FILE,
    PYPROJECT,
    ROOT,
    Metadata,
    active_requirements,
    dry_run,
    pins,
    project_metadata,
    report_metadata,
    resolve_online,
    roots,
    stored_metadata,
    unforced_divergences,
    write_stub_wheel,
)

VLLM = pins(GPU_CONSTRAINTS)["vllm"]

# pip evaluates requirement markers on the interpreter it runs under: the images' platform.
pytestmark = pytest.mark.skipif(
    not (
        sys.platform == "linux"
        and platform.machine() == "x86_64"
        and sys.version_info[:2] == (3, 11)
    ),
    reason="the GPU images' set is resolved for CPython 3.11 on Linux x86-64",
)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stubs")
    for metadata in [project_metadata(), *stored_metadata()]:
        write_stub_wheel(metadata, folder)
    return folder


def stored(name: str) -> Metadata:
    (found,) = [m for m in stored_metadata() if canonicalize_name(m["name"]) == name]
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_each_gpu_image_resolves_with_pip(image: str, stubs: Path) -> None:
    result = dry_run(roots(image, VLLM), GPU_CONSTRAINTS, find_links=(stubs,), offline=True)
    assert result.ok, result.output
    gpu = pins(GPU_CONSTRAINTS)
    assert result.installed["vllm"] == VLLM
    assert result.installed["atalaya"] == project_metadata()["version"]
    unpinned = {n: v for n, v in result.installed.items() if n != "atalaya" and gpu.get(n) != v}
    assert unpinned == {}, "every package of the image has its version in requirements/gpu.txt"


def test_the_lock_numpy_in_the_gpu_set_is_a_conflict(stubs: Path, tmp_path: Path) -> None:
    """Planted: the lock's NumPy (2.4.6) instead of gpu.txt's. mistral-common, which vLLM
    requires, declares numpy<2.4 on Python <= 3.12, so pip refuses the set."""
    lock_numpy = pins(LOCK)["numpy"]
    assert pins(GPU_CONSTRAINTS)["numpy"] != lock_numpy
    extra = tmp_path / "extra"
    extra.mkdir()
    write_stub_wheel({**stored("numpy"), "version": lock_numpy}, extra)
    constraints = tmp_path / "gpu.txt"
    constraints.write_text(
        GPU_CONSTRAINTS.read_text().replace(
            f"numpy=={pins(GPU_CONSTRAINTS)['numpy']}\n", f"numpy=={lock_numpy}\n"
        )
    )
    assert pins(constraints)["numpy"] == lock_numpy
    result = dry_run(roots("gpu", VLLM), constraints, find_links=(stubs, extra), offline=True)
    assert not result.ok
    assert "ResolutionImpossible" in result.output or "conflict" in result.output
    assert "mistral" in result.output.lower()


def test_numba_0_61_2_with_numpy_2_4_is_a_conflict(tmp_path: Path) -> None:
    """Planted: the set of the vLLM 0.11 image. numba 0.61.2 declares numpy<2.3 (its METADATA),
    the project asked for numpy>=2.4; the same set with numpy>=2.2 resolves, so the failure
    is the conflict and not the stubs."""
    for name, version, requires in [
        ("numba", "0.61.2", ["llvmlite<0.45,>=0.44.0dev0", "numpy<2.3,>=1.24"]),
        ("llvmlite", "0.44.0", []),
        ("numpy", "2.2.6", []),
        ("numpy", "2.4.6", []),
    ]:
        write_stub_wheel({"name": name, "version": version, "requires_dist": requires}, tmp_path)
    conflict = dry_run(["numba==0.61.2", "numpy>=2.4"], None, find_links=(tmp_path,), offline=True)
    assert not conflict.ok
    assert "numba 0.61.2 depends on numpy<2.3" in conflict.output
    fine = dry_run(["numba==0.61.2", "numpy>=2.2"], None, find_links=(tmp_path,), offline=True)
    assert fine.ok, fine.output
    assert fine.installed["numpy"] == "2.2.6"


def test_gpu_constraints_hold_exactly_the_images_packages() -> None:
    """No stale pin and none missing: the packages the images' requirements reach (on the
    images' platform, with the extras asked for) are the packages gpu.txt pins, and the
    stored metadata describes exactly those versions."""
    gpu = pins(GPU_CONSTRAINTS)
    packages = [project_metadata(), *stored_metadata()]
    reached: set[str] = set()
    for image in IMAGES:
        reached |= {
            canonicalize_name(r.name) for _, r in active_requirements(packages, roots(image, VLLM))
        }
    assert reached - {"atalaya"} == set(gpu)
    assert {canonicalize_name(m["name"]): m["version"] for m in stored_metadata()} == gpu


def test_gpu_pins_differ_from_the_lock_only_where_a_requirement_forces_it() -> None:
    packages = [project_metadata(), *stored_metadata()]
    requirements = [
        req for image in IMAGES for req in active_requirements(packages, roots(image, VLLM))
    ]
    assert unforced_divergences(pins(GPU_CONSTRAINTS), pins(LOCK), requirements) == []
    # what differs today, each refused by a requirement of the set
    differs = {
        n for n, v in pins(GPU_CONSTRAINTS).items() if n in pins(LOCK) and pins(LOCK)[n] != v
    }
    assert {"fastapi", "numpy"} <= differs


def test_an_unforced_divergence_is_found() -> None:
    """Planted: a GPU pin of grpcio that no requirement asks for."""
    packages = [project_metadata(), *stored_metadata()]
    requirements = active_requirements(packages, roots("ray-gpu", VLLM))
    gpu = {**pins(GPU_CONSTRAINTS), "grpcio": "1.80.0"}
    assert unforced_divergences(gpu, pins(LOCK), requirements) == [
        f"grpcio: 1.80.0 (lock: {pins(LOCK)['grpcio']})"
    ]
    # the CPU build of the lock's torch is the same release as the GPU image's
    assert pins(LOCK)["torch"].endswith("+cpu")
    assert unforced_divergences(pins(GPU_CONSTRAINTS), pins(LOCK), requirements) == []


def test_the_gpu_extra_admits_the_pinned_vllm() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    (vllm,) = [Requirement(r) for r in extras["gpu"] if Requirement(r).name == "vllm"]
    assert vllm.specifier.contains(VLLM)


def test_the_images_install_the_extras_resolved_here() -> None:
    bake = json.loads((ROOT / "k8s" / "images" / "docker-bake.json").read_text())
    for image, extras in IMAGES.items():
        target = bake["target"][image]
        assert target["args"]["EXTRAS"] == ",".join(extras)
        dockerfile = (ROOT / target["dockerfile"]).read_text()
        assert f"ARG EXTRAS={','.join(extras)}\n" in dockerfile
        assert "-c requirements/gpu.txt" in dockerfile


def test_stored_metadata_records_the_platform_it_was_read_for() -> None:
    environment = json.loads(METADATA_FILE.read_text())["environment"]
    assert environment["python_version"] == "3.11"
    assert environment["sys_platform"] == "linux"
    assert environment["platform_machine"] == "x86_64"


@pytest.mark.skipif(
    os.environ.get("ATALAYA_ONLINE_RESOLVE") != "1",
    reason="downloads every wheel of the set (no PEP 658 metadata here): ATALAYA_ONLINE_RESOLVE=1",
)
@pytest.mark.parametrize("image", IMAGES)
def test_each_gpu_image_resolves_against_the_index(image: str) -> None:
    result = resolve_online(image, VLLM, GPU_CONSTRAINTS)
    assert result.ok, result.output
    online = report_metadata(result.report)
    copies = [m for m in stored_metadata() if canonicalize_name(m["name"]) in result.installed]
    assert online == copies, "the stored metadata is what the index declares"

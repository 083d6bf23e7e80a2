"""The GPU images' Python packages, resolved by pip without installing them.

`requirements/gpu.txt` pins every package of the GPU image (k8s/images/gpu.Dockerfile) and of
the ray-gpu image (k8s/images/ray-gpu.Dockerfile): the resolve of one vLLM release and the
project's extras in `IMAGES`, derived from `requirements/lock.txt`. This module

* derives it (`python -m tests.charts.pip_resolve --update [--vllm VERSION]`, needs the package
  index): pip resolves the images' roots with the lock as constraints, every lock pin that a
  requirement of the set refuses is dropped and the resolve runs again; the result is written
  to requirements/gpu.txt, and the core metadata pip read for each package (name, version,
  Requires-Dist, Requires-Python, Provides-Extra) to `METADATA_FILE`;
* resolves an image's set offline: stub wheels carrying exactly that stored metadata (and the
  project's, built from pyproject.toml) in a folder, and pip's own resolver over them
  (`pip install --dry-run --report --no-index --find-links`), so a conflict anywhere in the
  set fails as it would fail `pip install` in the image build;
* resolves it against the index (`resolve_online`, `--check`), which is what proves the stored
  metadata is the registry's.

The index serves no separate metadata files (PEP 658) here, so an online resolve downloads
every wheel (about 4.4 GB for the GPU set): the test suite resolves offline, and the online
resolve runs on demand (`--check`, or ATALAYA_ONLINE_RESOLVE=1 for the tests).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
GPU_CONSTRAINTS = ROOT / "requirements" / "gpu.txt"
METADATA_FILE = Path(__file__).resolve().parent / "metadata" / "gpu.json"
PYPROJECT = ROOT / "pyproject.toml"
# The project's extras each GPU image installs (their Dockerfiles' EXTRAS; a test compares).
IMAGES: dict[str, tuple[str, ...]] = {
    "gpu": ("gpu",),
    # All five services run as Ray Serve applications on it (k8s/kuberay/rayservice.yaml).
    "ray-gpu": ("gpu", "ray", "embedding", "memory-store"),
}
# The platform the images run on: requirement markers are evaluated for it.
TARGET_ENVIRONMENT = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.14",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_full_version": "3.11.14",
    "python_version": "3.11",
    "sys_platform": "linux",
}

Metadata = dict[str, Any]


@dataclass(frozen=True)
class Resolution:
    ok: bool
    installed: dict[str, str]  # canonical name -> version, from pip's report
    report: dict[str, Any]
    output: str  # pip's stderr and stdout, for a failure's message


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file (canonical name -> version)."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path}: not a pin: {raw}"
        out[canonicalize_name(name)] = version.strip()
    return out


def project_metadata(pyproject: Path = PYPROJECT) -> Metadata:
    """The project's core metadata as its wheel would declare it, from pyproject.toml."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requires = list(project["dependencies"])
    extras: dict[str, list[str]] = project.get("optional-dependencies", {})
    for extra, reqs in extras.items():
        for text in reqs:
            req = Requirement(text)
            marker = f'extra == "{extra}"'
            if req.marker is not None:
                marker = f"({req.marker}) and {marker}"
            req.marker = None
            requires.append(f"{req}; {marker}")
    return {
        "name": project["name"],
        "version": project["version"],
        "requires_python": project.get("requires-python"),
        "requires_dist": requires,
        "provides_extra": list(extras),
    }


def roots(image: str, vllm_version: str) -> list[str]:
    """What an image's build asks pip for: the project with the image's extras, and vLLM."""
    return [f"atalaya[{','.join(IMAGES[image])}]", f"vllm=={vllm_version}"]


def stored_metadata(path: Path = METADATA_FILE) -> list[Metadata]:
    data: dict[str, Any] = json.loads(path.read_text())
    packages: list[Metadata] = data["packages"]
    return packages


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_stub_wheel(metadata: Metadata, folder: Path) -> Path:
    """A wheel with no code whose METADATA declares exactly `metadata` (written with zipfile:
    wheel builders want a project to build, and pip needs only these three files)."""
    escaped = re.sub(r"[-_.]+", "_", metadata["name"])
    dist_info = f"{escaped}-{metadata['version']}.dist-info"
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {metadata['name']}",
        f"Version: {metadata['version']}",
    ]
    if metadata.get("requires_python"):
        lines.append(f"Requires-Python: {metadata['requires_python']}")
    lines += [f"Provides-Extra: {extra}" for extra in metadata.get("provides_extra") or []]
    lines += [f"Requires-Dist: {req}" for req in metadata.get("requires_dist") or []]
    files = {
        f"{dist_info}/METADATA": ("\n".join(lines) + "\n").encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{escaped}-{metadata['version']}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


def _pip_environment() -> dict[str, str]:
    """This process's environment without pip's settings: no machine-wide find-links,
    constraints or indexes take part (PIP_CONFIG_FILE=os.devnull loads no config file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def dry_run(
    requirements: list[str],
    constraints: Path | None,
    *,
    find_links: tuple[Path, ...] = (),
    offline: bool,
) -> Resolution:
    """`pip install --dry-run --ignore-installed --report` of `requirements`: nothing is
    installed, the report lists what would be."""
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run"]
        command.append("--disable-pip-version-check")
        command += ["--ignore-installed", "--no-cache-dir", "--report", str(report_path)]
        if offline:
            command.append("--no-index")
        for folder in find_links:
            command += ["--find-links", str(folder)]
        if constraints is not None:
            command += ["-c", str(constraints)]
        done = subprocess.run(  # noqa: PLW1510 (the return code is read below)
            [*command, *requirements],
            capture_output=True,
            text=True,
            env=_pip_environment(),
            cwd=tmp,
            timeout=1800,
        )
        report = json.loads(report_path.read_text()) if done.returncode == 0 else {}
    installed = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report.get("install", [])
    }
    return Resolution(done.returncode == 0, installed, report, done.stderr + done.stdout)


def resolve_offline(
    requirements: list[str], constraints: Path, metadata: list[Metadata], folder: Path
) -> Resolution:
    """pip's resolve of `requirements` over stub wheels of `metadata` and the project."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in [project_metadata(), *metadata]:
        write_stub_wheel(item, folder)
    return dry_run(requirements, constraints, find_links=(folder,), offline=True)


def resolve_online(image: str, vllm_version: str, constraints: Path) -> Resolution:
    """The same resolve against the package index: the project from this checkout."""
    requirements = [f"{ROOT}[{','.join(IMAGES[image])}]", f"vllm=={vllm_version}"]
    return dry_run(requirements, constraints, offline=False)


def report_metadata(report: dict[str, Any]) -> list[Metadata]:
    """The dependency fields of every package in a pip report but the project itself."""
    keys = ("name", "version", "requires_python", "requires_dist", "provides_extra")
    out = [
        {key: item["metadata"].get(key) for key in keys}
        for item in report["install"]
        if canonicalize_name(item["metadata"]["name"]) != "atalaya"
    ]
    return sorted(out, key=lambda m: canonicalize_name(m["name"]))


def active_requirements(
    packages: list[Metadata], roots: list[str]
) -> list[tuple[str, Requirement]]:
    """(who asks, requirement) for every requirement that applies on `TARGET_ENVIRONMENT`,
    walking from `roots` through the packages' metadata with the extras each one is asked for.
    Not a resolver (pip resolves, above): it reads the one version of each package the set
    pins, to answer what pip's report does not, which requirement refuses a lock pin."""
    by_name = {canonicalize_name(m["name"]): m for m in packages}
    todo: list[tuple[str, str]] = []
    for text in roots:
        req = Requirement(text)
        todo += [(canonicalize_name(req.name), e) for e in ["", *sorted(req.extras)]]
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, Requirement]] = []
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen or name not in by_name:
            continue
        seen.add((name, extra))
        for text in by_name[name].get("requires_dist") or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(
                {**TARGET_ENVIRONMENT, "extra": extra}
            ):
                continue
            out.append((name, req))
            dep = canonicalize_name(req.name)
            todo += [(dep, e) for e in ["", *sorted(req.extras)]]
    return out


def unforced_divergences(
    gpu: dict[str, str], lock: dict[str, str], requirements: list[tuple[str, Requirement]]
) -> list[str]:
    """Packages whose GPU pin differs from the lock's although no requirement of the set
    refuses the lock's version (a local build tag such as +cpu is not a difference)."""
    out = []
    for name in sorted(gpu.keys() & lock.keys()):
        locked = Version(lock[name])
        if Version(gpu[name]).public == locked.public:
            continue
        refused = any(
            canonicalize_name(req.name) == name
            and not req.specifier.contains(locked.public, prereleases=True)
            for _, req in requirements
        )
        if not refused:
            out.append(f"{name}: {gpu[name]} (lock: {lock[name]})")
    return out


# How pip names a package whose pin it cannot use: a conflict with a constraint, or no version
# left once the constraint applies (pip's wording differs between releases; both are read).
REFUSED = re.compile(
    r"The user requested \(constraint\) ([A-Za-z0-9_.\-]+)=="
    r"|No matching distribution found for ([A-Za-z0-9_.\-]+)"
)


def derive(vllm_version: str) -> tuple[Resolution, list[str]]:
    """Resolve every GPU image's roots together with the lock as constraints, dropping each
    lock pin that pip names in a conflict, until the resolve succeeds."""
    lock_lines = [
        line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")
    ]
    # The lock's torch is the CPU build (a +cpu local version): the index's is the CUDA one.
    lock_lines = [re.sub(r"^(torch==[^+]+)\+cpu$", r"\1", line) for line in lock_lines]
    extras = ",".join(dict.fromkeys(e for image in IMAGES.values() for e in image))
    requirements = [f"{ROOT}[{extras}]", f"vllm=={vllm_version}"]
    dropped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        while True:
            constraints.write_text("\n".join(lock_lines) + "\n")
            result = dry_run(requirements, constraints, offline=False)
            if result.ok:
                return result, dropped
            pinned = {canonicalize_name(line.partition("==")[0]) for line in lock_lines}
            named = {canonicalize_name(a or b) for a, b in REFUSED.findall(result.output)}
            refused = named & pinned
            if not refused:
                raise SystemExit(f"the resolve failed on more than lock pins:\n{result.output}")
            dropped += sorted(refused)
            lock_lines = [
                line
                for line in lock_lines
                if canonicalize_name(line.partition("==")[0]) not in refused
            ]


def write(result: Resolution, vllm_version: str, dropped: list[str]) -> None:
    versions = {
        item["metadata"]["name"]: item["metadata"]["version"]
        for item in result.report["install"]
        if canonicalize_name(item["metadata"]["name"]) != "atalaya"
    }
    header = [
        "# Exact versions of every Python package of the GPU images (k8s/images/gpu.Dockerfile,",
        "# k8s/images/ray-gpu.Dockerfile), pip constraints like requirements/lock.txt.",
        f"# The resolve of vllm=={vllm_version} and the project's extras of each image, with the",
        "# lock as constraints: it keeps every lock pin but those vLLM's requirements refuse",
        f"# ({', '.join(dropped) or 'none'}) and takes torch's CUDA build for the lock's CPU one.",
        "# Regenerate with `python -m tests.charts.pip_resolve --update` after `make lock`.",
    ]
    lines = [f"{name}=={versions[name]}" for name in sorted(versions, key=canonicalize_name)]
    GPU_CONSTRAINTS.write_text("\n".join(header + lines) + "\n")
    METADATA_FILE.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "about": "Core metadata pip read for requirements/gpu.txt "
        "(python -m tests.charts.pip_resolve --update)",
        "environment": {
            key: value
            for key, value in result.report.get("environment", {}).items()
            if key in TARGET_ENVIRONMENT
        },
        "packages": report_metadata(result.report),
    }
    METADATA_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--update", action="store_true", help="derive and write gpu.txt")
    action.add_argument("--check", action="store_true", help="resolve each image online")
    parser.add_argument("--vllm", help="the vLLM release (default: gpu.txt's)")
    args = parser.parse_args(argv)
    version = args.vllm or pins(GPU_CONSTRAINTS)["vllm"]
    if args.update:
        result, dropped = derive(version)
        write(result, version, dropped)
        print(f"{len(result.installed) - 1} packages; lock pins dropped: {dropped}")
        return 0
    failed = 0
    for image in IMAGES:
        result = resolve_online(image, version, GPU_CONSTRAINTS)
        print(f"{image}: {'ok' if result.ok else 'CONFLICT'} ({len(result.installed)} packages)")
        if not result.ok:
            print(result.output)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

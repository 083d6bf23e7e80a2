"""Every ATALAYA_* variable the chart gives a service is a setting that service has,
and the whole set loads with the service's own settings class: a renamed setting
or a typo in a template fails here, not in a pod."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from services.common.settings import ServiceSettings, load_settings
from services.embedding.config import EmbeddingSettings
from services.gateway.config import GatewaySettings
from services.generation.config import GenerationSettings
from services.guardrail.config import GuardrailSettings
from services.memory.config import MemorySettings
from tests.charts.helm import RENDERINGS, Obj, component, pod_spec, rendered

SETTINGS: dict[str, type[ServiceSettings]] = {
    "gateway": GatewaySettings,
    "guardrail": GuardrailSettings,
    "generation": GenerationSettings,
    "embedding": EmbeddingSettings,
    "memory": MemorySettings,
}


def _model_of(annotation: Any) -> Any:
    """The model or dataclass inside an annotation (X, X | None), else None."""
    candidates = [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        candidates = list(typing.get_args(annotation))
    for c in candidates:
        if isinstance(c, type) and (issubclass(c, BaseModel) or dataclasses.is_dataclass(c)):
            return c
        if typing.get_origin(c) is dict:
            return dict
    return None


def _fields(model: Any) -> dict[str, Any]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {name: f.annotation for name, f in model.model_fields.items()}
    if dataclasses.is_dataclass(model):
        return dict(typing.get_type_hints(model))
    return {}


def known(model: Any, path: list[str]) -> bool:
    """Whether `path` (lower-case parts of ..._A__B__C) names a field of `model`."""
    if model is dict or not path:
        return True
    fields = _fields(model)
    head, rest = path[0], path[1:]
    if head not in fields:
        return False
    return not rest or known(_model_of(fields[head]), rest)


def test_known_tells_settings_from_typos() -> None:
    assert known(GuardrailSettings, ["llama_guard", "vllm", "model"])
    assert known(GatewaySettings, ["memory", "target"])
    assert known(GuardrailSettings, ["policies", "anything"])  # a dict of named policies
    assert not known(GatewaySettings, ["input_polic"])
    assert not known(GuardrailSettings, ["llama_guard", "vllm", "modle"])
    assert not known(GenerationSettings, ["llamacpp", "n_ctx", "extra"])


def service_env(objects: tuple[Obj, ...], deployment: Obj) -> dict[str, str]:
    """The container's ATALAYA_* variables: literal values, ConfigMaps it loads whole,
    and secret references (given a placeholder value)."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    spec = pod_spec(deployment)
    assert spec is not None
    env: dict[str, str] = {}
    for container in spec["containers"]:
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref:
                env.update(maps.get(ref["name"], {}))
        for item in container.get("env", []):
            env[item["name"]] = str(item.get("value", "from-a-secret"))
    return {k: v for k, v in env.items() if k.startswith("ATALAYA_")}


@pytest.mark.parametrize("profile", RENDERINGS)
def test_chart_settings_are_real_settings(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered(profile)
    deployments = [o for o in objects if o["kind"] == "Deployment" and component(o) in SETTINGS]
    assert {component(d) for d in deployments} == set(SETTINGS)
    for deployment in deployments:
        name = component(deployment)
        cls = SETTINGS[name]
        prefix = str(cls.model_config["env_prefix"])
        env = service_env(objects, deployment)
        assert env, f"{profile}/{name}: no settings at all"
        for var in env:
            assert var.startswith(prefix), f"{profile}/{name}: {var} is another service's"
            path = var[len(prefix) :].lower().split("__")
            assert known(cls, path), f"{profile}/{name}: {var} is not a setting of {name}"
        for var in list(os.environ):
            if var.startswith("ATALAYA_"):
                monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        load_settings(cls)  # exits with the reasons when a value is invalid

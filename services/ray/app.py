"""Application builders, one per service: the serve config's `import_path`s
(`services.ray.app:embedding`...). Serve calls each with the application's
`args` (a mapping, possibly empty):

    settings   overrides of the service's settings (the same fields as its
               ATALAYA_<SERVICE>_* variables, which still apply underneath)
    apps       for gateway, guardrail and memory: where their dependencies run,
               {"Embedding": "embedding", "Guardrail": "guardrail", ...}

Settings are read and validated here, at deploy time, so a bad value fails the
deploy with the service's own message instead of crash-looping replicas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from ray.serve import Application

from services.common.settings import ServiceSettings
from services.embedding.config import EmbeddingSettings
from services.gateway.config import GatewaySettings
from services.generation.config import GenerationSettings
from services.guardrail.config import GuardrailSettings
from services.memory.config import MemorySettings
from services.ray.deployments import (
    APPS,
    EMBEDDING,
    GENERATION,
    GUARDRAIL,
    MEMORY,
    Embedding,
    Gateway,
    Generation,
    Guardrail,
    Memory,
)

S = TypeVar("S", bound=ServiceSettings)

Args = Mapping[str, Any] | None


def _settings(cls: type[S], args: Args) -> S:
    """The service's settings: its environment variables, then `args["settings"]`."""
    overrides = dict((args or {}).get("settings") or {})
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ValueError(f"invalid settings for {cls.__name__}: {exc}") from None


def _apps(args: Args) -> dict[str, str]:
    return {**APPS, **dict((args or {}).get("apps") or {})}


def embedding(args: Args = None) -> Application:
    return Embedding.bind(_settings(EmbeddingSettings, args))


def guardrail(args: Args = None) -> Application:
    return Guardrail.bind(_settings(GuardrailSettings, args), _apps(args)[EMBEDDING])


def generation(args: Args = None) -> Application:
    return Generation.bind(_settings(GenerationSettings, args))


def memory(args: Args = None) -> Application:
    settings = _settings(MemorySettings, args)
    if settings.dsn is None:
        raise ValueError(
            "memory on Ray Serve needs ATALAYA_MEMORY_DSN (replicas share one PostgreSQL; "
            "`make run-ray` starts an embedded one and sets it)"
        )
    return Memory.bind(settings, _apps(args)[EMBEDDING])


def gateway(args: Args = None) -> Application:
    apps = _apps(args)
    return Gateway.bind(
        _settings(GatewaySettings, args),
        {name: apps[name] for name in (GUARDRAIL, MEMORY, GENERATION)},
    )

"""The local stack's one config file (services/stack/stack.toml): services in
start order, their ports and settings."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "stack.toml"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")  # {service} or {state}; other braces stay


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    module: str
    port: int
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 180.0

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class StackConfig:
    host: str
    traces_port: int
    services: tuple[ProcessSpec, ...]

    def ports(self) -> dict[str, int]:
        return {s.name: s.port for s in self.services}


def load_config(
    path: Path = DEFAULT_CONFIG,
    *,
    state_dir: str = ".state",
    port_offset: int = 0,
    environ: Mapping[str, str] | None = None,
) -> StackConfig:
    """Read the file; apply the port offset, resolve "{service}" and "{state}",
    let variables already in `environ` (default: os.environ) win."""
    environ = os.environ if environ is None else environ
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    host = str(data.get("host", "127.0.0.1"))
    raw = data.get("services", {})
    if not raw:
        raise ValueError(f"{path}: no [services.*] tables")
    ports = {name: int(s["port"]) + port_offset for name, s in raw.items()}
    names = {name: f"{host}:{port}" for name, port in ports.items()} | {"state": state_dir}
    specs = []
    for name, s in raw.items():
        prefix = f"ATALAYA_{name.upper()}_"
        env = {f"{prefix}HOST": host, f"{prefix}PORT": str(ports[name])}
        for key, value in dict(s.get("env", {})).items():
            env[key] = environ.get(
                key, _PLACEHOLDER.sub(lambda m: names.get(m[1], m[0]), str(value))
            )
        specs.append(
            ProcessSpec(
                name=name,
                module=str(s.get("module", f"services.{name}")),
                port=ports[name],
                host=host,
                env=env,
                start_timeout_s=float(s.get("start_timeout_s", 180.0)),
            )
        )
    traces = int(data.get("traces_port", 0))
    return StackConfig(host, traces + port_offset if traces else 0, tuple(specs))

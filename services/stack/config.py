"""The local stack: every service of the topology (services.common.topology), in
its start order, at its default port (moved by --port-offset), told where the
services it calls are; and a stack file (services/stack/stack.toml) with what is
particular to one stack: backends and settings, and for a stack on other ports
(the tests', the load test's) the ports."""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common import topology

DEFAULT_CONFIG = Path(__file__).resolve().parent / "stack.toml"
DEFAULT_START_TIMEOUT_S = 180.0
TRACES_FILE = Path("traces") / "spans.jsonl"  # in the state folder
_PLACEHOLDER = re.compile(r"\{(\w+)\}")  # {service} or {state}; other braces stay


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    module: str
    port: int
    host: str = topology.DEFAULT_HOST
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S

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
    """Read the file over the topology; apply the port offset, resolve "{service}"
    and "{state}", let variables already in `environ` (default: os.environ) win
    over the file's and the derived upstream targets."""
    environ = os.environ if environ is None else environ
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    host = str(data.get("host", topology.DEFAULT_HOST))
    tables: dict[str, dict[str, Any]] = dict(data.get("services", {}))
    if unknown := set(tables) - set(topology.NAMES):
        raise ValueError(f"{path}: not services of the topology: {sorted(unknown)}")
    ports = {
        s.name: int(tables.get(s.name, {}).get("port", s.port)) + port_offset
        for s in topology.SERVICES
    }
    targets = topology.targets(ports, host)
    names = targets | {"state": state_dir}
    specs = []
    for s in topology.SERVICES:
        table = tables.get(s.name, {})
        settings = topology.upstream_env(s.name, targets)
        for key, value in dict(table.get("env", {})).items():
            settings[key] = _PLACEHOLDER.sub(lambda m: names.get(m[1], m[0]), str(value))
        env = topology.listen_env(s.name, host, ports[s.name])
        env |= {key: environ.get(key, value) for key, value in settings.items()}
        specs.append(
            ProcessSpec(
                name=s.name,
                module=s.module,
                port=ports[s.name],
                host=host,
                env=env,
                start_timeout_s=float(table.get("start_timeout_s", DEFAULT_START_TIMEOUT_S)),
            )
        )
    traces = int(data.get("traces_port", topology.OTLP_PORT))
    return StackConfig(host, traces + port_offset if traces else 0, tuple(specs))


def stack_settings(path: Path = DEFAULT_CONFIG) -> dict[str, dict[str, str]]:
    """The settings (`env`) a stack file gives each service, placeholders unresolved."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    tables: dict[str, dict[str, Any]] = dict(data.get("services", {}))
    return {
        name: {k: str(v) for k, v in dict(tables.get(name, {}).get("env", {})).items()}
        for name in topology.NAMES
    }


def write_config(
    path: Path,
    ports: Mapping[str, int],
    env: Mapping[str, Mapping[str, str]],
    *,
    traces_port: int,
    host: str = topology.DEFAULT_HOST,
) -> None:
    """A stack file with these ports (every service's) and settings per service."""
    lines = [f"host = {json.dumps(host)}", f"traces_port = {traces_port}"]
    for name in topology.NAMES:
        lines += ["", f"[services.{name}]", f"port = {ports[name]}", f"[services.{name}.env]"]
        # A JSON string is a valid TOML basic string.
        lines += [f"{k} = {json.dumps(v)}" for k, v in env.get(name, {}).items()]
    path.write_text("\n".join(lines) + "\n")

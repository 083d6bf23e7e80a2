"""The serve config: services/ray/serve_config.yaml (the cluster's, embedded in the
RayService manifest) with an overlay for where it runs (services/ray/local.yaml for
one machine).

Overlay rules: top-level mappings (http_options, grpc_options, logging_config) are
updated key by key; applications and their deployments are matched by name, and
each key an overlay entry names replaces the base's value as a whole."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SERVE_CONFIG = HERE / "serve_config.yaml"
LOCAL_OVERLAY = HERE / "local.yaml"

Config = dict[str, Any]


def load_yaml(path: Path) -> Config:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top")
    return data


def _merge_named(base: list[Config], overlay: Iterable[Config], key: str) -> list[Config]:
    out = [copy.deepcopy(item) for item in base]
    by_name = {item["name"]: item for item in out}
    for entry in overlay:
        target = by_name.get(entry["name"])
        if target is None:
            raise ValueError(f"overlay names an unknown {key[:-1]} {entry['name']!r}")
        for field, value in entry.items():
            if field == key:
                target[key] = _merge_named(target.get(key, []), value, "deployments")
            else:
                target[field] = copy.deepcopy(value)
    return out


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> Config:
    """`base` with `overlay` applied (neither is changed)."""
    out = copy.deepcopy(dict(base))
    for field, value in overlay.items():
        if field == "applications":
            out["applications"] = _merge_named(out.get("applications", []), value, "deployments")
        elif isinstance(value, Mapping) and isinstance(out.get(field), Mapping):
            out[field] = {**out[field], **copy.deepcopy(dict(value))}
        else:
            out[field] = copy.deepcopy(value)
    return out


def select_apps(config: Mapping[str, Any], names: Iterable[str]) -> Config:
    """Only the named applications (all of them if `names` is empty)."""
    wanted = set(names)
    if not wanted:
        return dict(config)
    known = {app["name"] for app in config["applications"]}
    if unknown := wanted - known:
        raise ValueError(f"unknown applications: {sorted(unknown)} (known: {sorted(known)})")
    return {
        **config,
        "applications": [app for app in config["applications"] if app["name"] in wanted],
    }


def local_config(
    *,
    base: Path = SERVE_CONFIG,
    overlay: Path | None = LOCAL_OVERLAY,
    apps: Iterable[str] = (),
    grpc_port: int | None = None,
    http_port: int | None = None,
) -> Config:
    """The config `make run-ray`, the tests and the benchmark deploy."""
    config = load_yaml(base)
    if overlay is not None:
        config = merge(config, load_yaml(overlay))
    config = select_apps(config, apps)
    if grpc_port is not None:
        config["grpc_options"] = {**config.get("grpc_options", {}), "port": grpc_port}
    if http_port is not None:
        config["http_options"] = {**config.get("http_options", {}), "port": http_port}
    return config

"""The one description of the topology (services.common.topology): consistent in
itself, with the protos, with the chart, and what the services' settings derive."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.descriptor_pool import Default as default_pool

from services.common import topology
from services.common.settings import ServiceSettings

VALUES = Path(__file__).resolve().parents[2] / "charts" / "atalaya" / "values.yaml"


def settings_class(name: str) -> type[ServiceSettings]:
    """The settings of service `name`: the one ServiceSettings of services.<name>.config."""
    module = importlib.import_module(f"{topology.service(name).module}.config")
    own = [c for c in vars(module).values() if getattr(c, "__module__", "") == module.__name__]
    [cls] = [c for c in own if isinstance(c, type) and issubclass(c, ServiceSettings)]
    return cls


SETTINGS = {name: settings_class(name) for name in topology.NAMES}


@pytest.fixture(autouse=True)
def _no_atalaya_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("ATALAYA_")]:
        monkeypatch.delenv(name)


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return values


def test_every_service_starts_after_the_services_it_calls() -> None:
    seen: set[str] = set()
    for service in topology.SERVICES:
        assert set(service.calls) <= seen, service.name
        seen.add(service.name)
    assert len({s.port for s in topology.SERVICES}) == len(topology.SERVICES)


def test_grpc_service_names_are_the_protos() -> None:
    for service in topology.SERVICES:
        importlib.import_module(f"atalaya.{service.name}.v1.{service.name}_pb2")
        found = default_pool().FindServiceByName(service.grpc_service)
        assert found.full_name == service.grpc_service


def test_the_chart_has_the_same_call_graph_and_ports() -> None:
    values = chart_values()
    in_chart = {
        caller: tuple(c for c in callees if c in topology.NAMES)  # not the database
        for caller, callees in values["callGraph"].items()
    }
    assert in_chart == topology.call_graph()
    assert {n: values["services"][n]["port"] for n in topology.NAMES} == topology.ports()


def test_settings_default_to_the_topology() -> None:
    for name, cls in SETTINGS.items():
        settings = cls()
        assert settings.host == topology.DEFAULT_HOST
        assert settings.port == topology.port(name)
        for callee in topology.service(name).calls:
            assert getattr(settings, callee).target == topology.target(callee), (name, callee)


def test_upstream_env_points_each_caller_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = topology.ports(port_offset=7)
    targets = topology.targets({**ports, "traces": 1}, host="10.0.0.1")
    assert set(targets) == set(topology.NAMES)
    for name, cls in SETTINGS.items():
        env = topology.listen_env(name, "0.0.0.0", ports[name])
        env |= topology.upstream_env(name, targets)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = cls()
        assert (settings.host, settings.port) == ("0.0.0.0", ports[name])
        for callee in topology.service(name).calls:
            assert getattr(settings, callee).target == f"10.0.0.1:{ports[callee]}"


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="gatewya"):
        topology.port("gatewya")

"""The local stack: the topology's services with the stack file's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common import topology
from services.stack.config import load_config, stack_settings, write_config


def test_stack_runs_the_topology_in_start_order_at_the_default_ports() -> None:
    config = load_config(environ={})
    assert [s.name for s in config.services] == list(topology.NAMES)
    assert [s.module for s in config.services] == [f"services.{n}" for n in topology.NAMES]
    assert config.ports() == topology.ports()
    assert config.traces_port == topology.OTLP_PORT


def test_offset_placeholders_and_environment_override() -> None:
    config = load_config(
        state_dir="/tmp/st",
        port_offset=100,
        environ={"ATALAYA_GENERATION_BACKEND": "sim", "ATALAYA_GATEWAY_PORT": "1"},
    )
    by_name = {s.name: s for s in config.services}
    gateway = by_name["gateway"].env
    assert gateway["ATALAYA_GATEWAY_PORT"] == str(topology.port("gateway") + 100)  # not 1
    assert gateway["ATALAYA_GATEWAY_MEMORY__TARGET"] == topology.target("memory", port_offset=100)
    assert gateway["ATALAYA_GATEWAY_GENERATION__TARGET"] == topology.target(
        "generation", port_offset=100
    )
    assert by_name["memory"].env["ATALAYA_MEMORY_STATE_DIR"] == "/tmp/st/memory"
    assert by_name["generation"].env["ATALAYA_GENERATION_BACKEND"] == "sim"
    assert by_name["guardrail"].target == topology.target("guardrail", port_offset=100)
    assert config.traces_port == topology.OTLP_PORT + 100


def test_every_caller_is_told_where_its_upstreams_are() -> None:
    by_name = {s.name: s for s in load_config(environ={}).services}
    for caller, callees in topology.call_graph().items():
        targets = {
            key.removeprefix(f"ATALAYA_{caller.upper()}_").removesuffix("__TARGET").lower(): value
            for key, value in by_name[caller].env.items()
            if key.endswith("__TARGET")
        }
        assert targets == {c: by_name[c].target for c in callees}, caller


def test_a_written_stack_file_puts_services_on_its_ports(tmp_path: Path) -> None:
    ports = {name: 40000 + i for i, name in enumerate(topology.NAMES)}
    settings = stack_settings() | {"generation": {"ATALAYA_GENERATION_BACKEND": "sim"}}
    path = tmp_path / "stack.toml"
    write_config(path, ports, settings, traces_port=0)
    config = load_config(path, state_dir="st", environ={})
    assert config.ports() == ports
    assert config.traces_port == 0
    by_name = {s.name: s for s in config.services}
    assert (
        by_name["gateway"].env["ATALAYA_GATEWAY_MEMORY__TARGET"] == f"127.0.0.1:{ports['memory']}"
    )
    assert by_name["gateway"].env["ATALAYA_GATEWAY_INPUT_POLICY"] == "fast"  # from stack.toml
    assert by_name["memory"].env["ATALAYA_MEMORY_STATE_DIR"] == "st/memory"
    assert by_name["generation"].env["ATALAYA_GENERATION_BACKEND"] == "sim"
    assert stack_settings(path) == settings


def test_a_stack_file_names_only_services_of_the_topology(tmp_path: Path) -> None:
    path = tmp_path / "stack.toml"
    path.write_text("[services.gatewya]\nport = 1\n")
    with pytest.raises(ValueError, match="gatewya"):
        load_config(path, environ={})

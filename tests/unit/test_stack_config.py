"""The local stack's one config file."""

from __future__ import annotations

from services.stack.config import load_config


def test_stack_file_has_all_five_services_in_start_order() -> None:
    config = load_config(environ={})
    assert [s.name for s in config.services] == [
        "generation",
        "embedding",
        "memory",
        "guardrail",
        "gateway",
    ]
    assert config.ports() == {
        "gateway": 50051,
        "guardrail": 50052,
        "generation": 50053,
        "embedding": 50054,
        "memory": 50055,
    }
    assert config.traces_port == 4317


def test_offset_placeholders_and_environment_override() -> None:
    config = load_config(
        state_dir="/tmp/st",
        port_offset=100,
        environ={"ATALAYA_GENERATION_BACKEND": "sim"},
    )
    by_name = {s.name: s for s in config.services}
    gateway = by_name["gateway"].env
    assert gateway["ATALAYA_GATEWAY_PORT"] == "50151"
    assert gateway["ATALAYA_GATEWAY_MEMORY__TARGET"] == "127.0.0.1:50155"
    assert gateway["ATALAYA_GATEWAY_GENERATION__TARGET"] == "127.0.0.1:50153"
    assert by_name["memory"].env["ATALAYA_MEMORY_STATE_DIR"] == "/tmp/st/memory"
    assert by_name["generation"].env["ATALAYA_GENERATION_BACKEND"] == "sim"
    assert by_name["guardrail"].target == "127.0.0.1:50152"
    assert config.traces_port == 4417

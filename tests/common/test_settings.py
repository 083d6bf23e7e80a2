"""Typed settings from the environment (services.common.settings), as the services
read them: prefixes, nested channel settings, readable errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common import topology
from services.common.settings import (
    ChannelSettings,
    ChannelTLSSettings,
    ServiceSettings,
    SettingsError,
    load_settings,
)
from services.embedding.config import DEFAULT_PORT as EMBEDDING_PORT
from services.embedding.config import EmbeddingSettings
from services.gateway.config import GatewaySettings
from services.generation.config import GenerationSettings
from services.guardrail.config import GuardrailSettings
from services.memory.config import DEFAULT_PORT as MEMORY_PORT
from services.memory.config import MemorySettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ATALAYA_* variable from the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.startswith("ATALAYA_"):
            monkeypatch.delenv(name)


def test_defaults_without_environment() -> None:
    embedding = load_settings(EmbeddingSettings)
    memory = load_settings(MemorySettings)
    assert embedding.port == EMBEDDING_PORT
    assert memory.port == MEMORY_PORT
    assert memory.embedding.target == topology.target("embedding")
    assert memory.dsn is None


def test_embedding_settings_use_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATALAYA_EMBEDDING_PORT", "6001")
    monkeypatch.setenv("ATALAYA_EMBEDDING_MAX_BATCH", "7")
    monkeypatch.setenv("ATALAYA_MEMORY_PORT", "6002")
    monkeypatch.setenv("ATALAYA_PORT", "6003")

    embedding = load_settings(EmbeddingSettings)

    assert embedding.port == 6001
    assert embedding.max_batch == 7
    assert load_settings(MemorySettings).port == 6002
    assert load_settings(ServiceSettings).port == 6003


def test_memory_settings_read_nested_channel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATALAYA_MEMORY_EMBEDDING__TARGET", "dns:///embedding:50054")
    monkeypatch.setenv("ATALAYA_MEMORY_EMBEDDING__MAX_ATTEMPTS", "4")
    monkeypatch.setenv("ATALAYA_MEMORY_DSN", "postgresql://u:pw@db/memory")

    settings = load_settings(MemorySettings)

    assert settings.embedding.target == "dns:///embedding:50054"
    assert settings.embedding.max_attempts == 4
    assert settings.dsn is not None
    assert settings.dsn.get_secret_value() == "postgresql://u:pw@db/memory"
    assert "pw" not in repr(settings)


def test_one_nested_variable_keeps_the_other_nested_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATALAYA_MEMORY_EMBEDDING__TIMEOUT_S", "2")
    settings = load_settings(MemorySettings)
    assert settings.embedding.timeout_s == 2.0
    assert settings.embedding.target == topology.target("embedding")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ATALAYA_EMBEDDING_PORT", "70000"),
        ("ATALAYA_EMBEDDING_PORT", "not-a-port"),
        ("ATALAYA_EMBEDDING_MAX_BATCH", "0"),
        ("ATALAYA_EMBEDDING_LOG_LEVEL", "CHATTY"),
        ("ATALAYA_EMBEDDING_READINESS_INTERVAL_S", "0"),
    ],
)
def test_invalid_embedding_value_stops_with_the_variable_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings(EmbeddingSettings)
    assert isinstance(info.value, SystemExit)
    message = str(info.value.code)
    assert message.startswith("invalid settings for EmbeddingSettings:")
    assert f"{variable}:" in message


def test_every_invalid_variable_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATALAYA_MEMORY_PORT", "-1")
    monkeypatch.setenv("ATALAYA_MEMORY_MAX_RECALL_K", "0")
    with pytest.raises(SettingsError) as info:
        load_settings(MemorySettings)
    message = str(info.value.code)
    assert "ATALAYA_MEMORY_PORT:" in message
    assert "ATALAYA_MEMORY_MAX_RECALL_K:" in message


def test_invalid_nested_value_names_the_nested_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATALAYA_MEMORY_EMBEDDING__TARGET", "embedding:50054")
    monkeypatch.setenv("ATALAYA_MEMORY_EMBEDDING__MAX_ATTEMPTS", "9")
    with pytest.raises(SettingsError) as info:
        load_settings(MemorySettings)
    assert "ATALAYA_MEMORY_EMBEDDING__MAX_ATTEMPTS:" in str(info.value.code)


def test_settings_are_frozen() -> None:
    settings = EmbeddingSettings(port=0)
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


SERVICE_SETTINGS = [
    ("embedding", EmbeddingSettings),
    ("memory", MemorySettings),
    ("gateway", GatewaySettings),
    ("guardrail", GuardrailSettings),
    ("generation", GenerationSettings),
]


@pytest.mark.parametrize(("name", "cls"), SERVICE_SETTINGS)
def test_every_service_reads_its_tls_and_peer_settings(
    monkeypatch: pytest.MonkeyPatch, name: str, cls: type[ServiceSettings]
) -> None:
    prefix = topology.service(name).env_prefix
    monkeypatch.setenv(f"{prefix}TLS__MODE", "mtls")
    monkeypatch.setenv(f"{prefix}TLS__CERT_FILE", "/tls/svc.pem")
    monkeypatch.setenv(f"{prefix}TLS__KEY_FILE", "/tls/svc.key")
    monkeypatch.setenv(f"{prefix}TLS__CA_FILE", "/tls/ca.pem")
    monkeypatch.setenv(f"{prefix}PEERS__ADMIN_CALLERS", '["operator"]')
    monkeypatch.setenv(f"{prefix}HEALTH_PORT", "8081")

    settings = load_settings(cls)

    assert settings.tls.mode == "mtls" and settings.tls.ca_file == Path("/tls/ca.pem")
    assert settings.peers.admin_callers == ("operator",)
    assert settings.health_port == 8081
    channels = [v for v in dict(settings).values() if isinstance(v, ChannelSettings)]
    assert len(channels) == len(topology.service(name).calls)  # one per upstream
    for channel in channels:  # a service's channels show its certificate, trust its CA
        assert channel.tls == ChannelTLSSettings(
            enabled=True,
            ca_file=Path("/tls/ca.pem"),
            cert_file=Path("/tls/svc.pem"),
            key_file=Path("/tls/svc.key"),
        )


def test_tls_is_off_by_default_and_a_channel_can_set_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = load_settings(GatewaySettings)
    assert plain.tls.mode == "off" and plain.health_port is None
    assert plain.memory.tls == ChannelTLSSettings(enabled=False)

    monkeypatch.setenv("ATALAYA_GATEWAY_MEMORY__TLS__ENABLED", "true")
    monkeypatch.setenv("ATALAYA_GATEWAY_MEMORY__TLS__SERVER_NAME", "memory.prod.svc")
    settings = load_settings(GatewaySettings)
    assert settings.memory.tls == ChannelTLSSettings(enabled=True, server_name="memory.prod.svc")
    assert settings.generation.tls == ChannelTLSSettings(enabled=False)


def test_tls_settings_without_their_files_stop_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATALAYA_MEMORY_TLS__MODE", "mtls")
    monkeypatch.setenv("ATALAYA_MEMORY_TLS__CERT_FILE", "/tls/svc.pem")
    with pytest.raises(SettingsError, match=r"ATALAYA_MEMORY_TLS: .*needs cert_file and key_file"):
        load_settings(MemorySettings)

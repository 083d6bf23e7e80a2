"""Typed settings from the environment (services.common.settings), as the services
read them: prefixes, nested channel settings, readable errors."""

from __future__ import annotations

import os

import pytest

from services.common import topology
from services.common.settings import ServiceSettings, SettingsError, load_settings
from services.embedding.config import DEFAULT_PORT as EMBEDDING_PORT
from services.embedding.config import EmbeddingSettings
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

"""Request checks (services.common.validation) and typed settings from the environment."""

from __future__ import annotations

import os
import re

import pytest

from services.common import topology
from services.common.errors import InvalidArgument
from services.common.settings import ServiceSettings, SettingsError, load_settings
from services.common.validation import (
    MAX_ID_CHARS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    request_id_or_new,
    require_count,
    require_id,
    require_metadata,
    require_range,
    require_text,
)
from services.embedding.config import DEFAULT_PORT as EMBEDDING_PORT
from services.embedding.config import EmbeddingSettings
from services.memory.config import DEFAULT_PORT as MEMORY_PORT
from services.memory.config import MemorySettings

# --- validation -----------------------------------------------------------------


def test_require_id_accepts_a_normal_id_and_returns_it() -> None:
    assert require_id("user_id", "user-42") == "user-42"
    assert require_id("user_id", "x" * MAX_ID_CHARS) == "x" * MAX_ID_CHARS


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "user_id is required"),
        ("x" * (MAX_ID_CHARS + 1), f"user_id is longer than {MAX_ID_CHARS} characters"),
        ("bad\nid", "user_id contains non-printable characters"),
        ("bad\x00id", "user_id contains non-printable characters"),
    ],
)
def test_require_id_rejects_with_field_and_limit(value: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        require_id("user_id", value)
    assert str(info.value) == message


def test_request_id_or_new_keeps_a_valid_id() -> None:
    assert request_id_or_new("req-1") == "req-1"


def test_request_id_or_new_makes_a_fresh_id_when_empty() -> None:
    first = request_id_or_new("")
    second = request_id_or_new("")
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_request_id_or_new_checks_a_given_id() -> None:
    with pytest.raises(InvalidArgument, match=rf"request_id is longer than {MAX_ID_CHARS}"):
        request_id_or_new("r" * (MAX_ID_CHARS + 1))


def test_require_count_bounds_are_inclusive() -> None:
    require_count("texts", ["a"], minimum=1, maximum=2)
    require_count("texts", ["a", "b"], minimum=1, maximum=2)


def test_require_count_too_few_names_field_and_minimum() -> None:
    with pytest.raises(InvalidArgument) as info:
        require_count("texts", [], minimum=1, maximum=5)
    assert str(info.value) == "texts needs at least 1 item(s), got 0"


def test_require_count_too_many_names_field_and_maximum() -> None:
    with pytest.raises(InvalidArgument) as info:
        require_count("memories", list(range(7)), minimum=1, maximum=5)
    assert str(info.value) == "memories allows at most 5 items, got 7"


def test_require_text() -> None:
    assert require_text("text", "hello", max_chars=5) == "hello"
    assert require_text("comment", "", max_chars=5, allow_empty=True) == ""
    with pytest.raises(InvalidArgument) as info:
        require_text("texts[3]", "", max_chars=5)
    assert str(info.value) == "texts[3] is empty"
    with pytest.raises(InvalidArgument) as info:
        require_text("texts[0]", "abcdef", max_chars=5)
    assert str(info.value) == "texts[0] is longer than 5 characters (6)"


def test_require_range() -> None:
    require_range("k", 1, minimum=1, maximum=100)
    require_range("k", 100, minimum=1, maximum=100)
    with pytest.raises(InvalidArgument) as info:
        require_range("k", 101, minimum=1, maximum=100)
    assert str(info.value) == "k must be in [1, 100], got 101"
    with pytest.raises(InvalidArgument, match=r"score must be in \[0.0, 1.0\]"):
        require_range("score", -0.5, minimum=0.0, maximum=1.0)


def test_require_range_rejects_nan() -> None:
    with pytest.raises(InvalidArgument, match="min_score"):
        require_range("min_score", float("nan"), minimum=-1.0, maximum=1.0)


def test_require_metadata_accepts_limits_and_copies() -> None:
    source = {"k" * MAX_METADATA_KEY_CHARS: "v" * MAX_METADATA_VALUE_CHARS}
    copied = require_metadata("metadata", source)
    assert copied == source
    assert copied is not source


def test_require_metadata_too_many_entries() -> None:
    too_many = {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}
    with pytest.raises(InvalidArgument) as info:
        require_metadata("metadata", too_many)
    assert str(info.value) == f"metadata allows at most {MAX_METADATA_ENTRIES} entries"


@pytest.mark.parametrize("key", ["", "k" * (MAX_METADATA_KEY_CHARS + 1)])
def test_require_metadata_bad_key(key: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        require_metadata("memories[0].metadata", {key: "v"})
    assert str(info.value) == (
        f"memories[0].metadata keys must be 1 to {MAX_METADATA_KEY_CHARS} characters"
    )


def test_require_metadata_long_value_names_the_key() -> None:
    with pytest.raises(InvalidArgument) as info:
        require_metadata("metadata", {"model": "v" * (MAX_METADATA_VALUE_CHARS + 1)})
    assert str(info.value) == (
        f"metadata['model'] is longer than {MAX_METADATA_VALUE_CHARS} characters"
    )


# --- settings -------------------------------------------------------------------


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

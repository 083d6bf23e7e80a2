"""Request checks (services.common.validation): each names the field and the limit."""

from __future__ import annotations

import re

import pytest

from services.common.chat import ChatMessage
from services.common.errors import InvalidArgument
from services.common.validation import (
    MAX_ID_CHARS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    MAX_NAME_CHARS,
    optional_id,
    request_id_or_new,
    require_count,
    require_id,
    require_messages,
    require_metadata,
    require_range,
    require_text,
)


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


def test_require_text_rejects_a_nul_character() -> None:
    # PostgreSQL cannot store NUL in text or jsonb: it got as far as the database.
    with pytest.raises(InvalidArgument) as info:
        require_text("comment", "a\x00b", max_chars=5, allow_empty=True)
    assert str(info.value) == "comment contains a NUL character"


def test_optional_id_allows_empty_and_checks_a_given_name() -> None:
    assert optional_id("model", "") == ""
    assert optional_id("model", "sim") == "sim"
    with pytest.raises(InvalidArgument, match=f"^model is longer than {MAX_ID_CHARS} characters$"):
        optional_id("model", "m" * (1 << 20))
    with pytest.raises(InvalidArgument, match=r"^policy contains non-printable characters$"):
        optional_id("policy", "fast\n")


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


@pytest.mark.parametrize(("key", "value"), [("k\x00", "v"), ("k", "v\x00")])
def test_require_metadata_rejects_a_nul_character(key: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        require_metadata("metadata", {key: value})
    assert str(info.value) == "metadata keys and values must not contain a NUL character"


def test_require_messages_checks_content_and_name() -> None:
    long_name = ChatMessage("user", "hi", "n" * (MAX_NAME_CHARS + 1))
    require_messages(
        "messages", [ChatMessage("user", "hi", "n" * MAX_NAME_CHARS)], max_messages=1, max_chars=9
    )
    with pytest.raises(
        InvalidArgument, match=rf"^messages\[0\].name is longer than {MAX_NAME_CHARS}"
    ):
        require_messages("messages", [long_name], max_messages=1, max_chars=9)
    with pytest.raises(InvalidArgument, match=r"^messages\[0\].content contains a NUL character$"):
        require_messages("messages", [ChatMessage("user", "\x00")], max_messages=1, max_chars=9)


def test_require_messages_names_the_message_at_fault() -> None:
    ok = [ChatMessage("system", "be brief"), ChatMessage("user", "hi"), ChatMessage("tool", "")]
    require_messages("chat.messages", ok, max_messages=3, max_chars=10)
    with pytest.raises(InvalidArgument, match=r"^chat.messages\[1\].role is required$"):
        require_messages(
            "chat.messages", [ok[0], ChatMessage("", "x")], max_messages=3, max_chars=10
        )
    with pytest.raises(InvalidArgument, match=r"^messages\[0\].content is longer than 3"):
        require_messages("messages", [ChatMessage("user", "four")], max_messages=3, max_chars=3)
    with pytest.raises(InvalidArgument, match="at least 1"):
        require_messages("messages", [], max_messages=3, max_chars=3)
    with pytest.raises(InvalidArgument, match="at most 3"):
        require_messages("messages", ok * 2, max_messages=3, max_chars=10)

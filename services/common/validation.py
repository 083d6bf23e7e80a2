"""Small request checks shared by service cores; each raises InvalidArgument with
a message naming the field and the limit."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence, Sized

from services.common.chat import ROLES, ChatMessage
from services.common.errors import InvalidArgument

MAX_ID_CHARS = 128
#: A chat message's author name (OpenAI's limit).
MAX_NAME_CHARS = 64
#: Never in text: PostgreSQL's text and jsonb cannot hold it, and no person types it.
NUL = "\x00"


def request_id_or_new(request_id: str) -> str:
    """The caller's request id, checked, or a fresh one when it is empty."""
    if not request_id:
        return uuid.uuid4().hex
    return require_id("request_id", request_id)


def require_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(f"{field} is longer than {MAX_ID_CHARS} characters")
    if not value.isprintable():
        raise InvalidArgument(f"{field} contains non-printable characters")
    return value


def optional_id(field: str, value: str) -> str:
    """A name the caller may leave empty (a model, a policy, an adapter), checked
    as an id when given, so that an error naming it stays short and printable."""
    return require_id(field, value) if value else value


def require_count(field: str, items: Sized, *, minimum: int, maximum: int) -> None:
    n = len(items)
    if n < minimum:
        raise InvalidArgument(f"{field} needs at least {minimum} item(s), got {n}")
    if n > maximum:
        raise InvalidArgument(f"{field} allows at most {maximum} items, got {n}")


def require_text(field: str, text: str, *, max_chars: int, allow_empty: bool = False) -> str:
    if not text and not allow_empty:
        raise InvalidArgument(f"{field} is empty")
    if len(text) > max_chars:
        raise InvalidArgument(f"{field} is longer than {max_chars} characters ({len(text)})")
    if NUL in text:
        raise InvalidArgument(f"{field} contains a NUL character")
    return text


def require_messages(
    field: str, messages: Sequence[ChatMessage], *, max_messages: int, max_chars: int
) -> None:
    """One message or more, each with a known role, content of at most `max_chars`
    (empty content is allowed: a tool or assistant message may have none) and a
    name of at most MAX_NAME_CHARS."""
    require_count(field, messages, minimum=1, maximum=max_messages)
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgument(f"{field}[{i}].role is required")
        require_text(f"{field}[{i}].content", m.content, max_chars=max_chars, allow_empty=True)
        require_text(f"{field}[{i}].name", m.name, max_chars=MAX_NAME_CHARS, allow_empty=True)


def require_range(field: str, value: float, *, minimum: float, maximum: float) -> None:
    if not minimum <= value <= maximum:
        raise InvalidArgument(f"{field} must be in [{minimum}, {maximum}], got {value}")


MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 1024


def require_metadata(field: str, metadata: Mapping[str, str]) -> dict[str, str]:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(f"{field} allows at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise InvalidArgument(f"{field} keys must be 1 to {MAX_METADATA_KEY_CHARS} characters")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidArgument(
                f"{field}[{key!r}] is longer than {MAX_METADATA_VALUE_CHARS} characters"
            )
        if NUL in key or NUL in value:
            raise InvalidArgument(f"{field} keys and values must not contain a NUL character")
    return dict(metadata)

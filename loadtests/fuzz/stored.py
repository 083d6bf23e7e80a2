"""After a fuzz run: is every row in the memory store one that a valid request could
have stored? Each stored session, turn, memory and feedback row goes through the
same checks (services.common.validation, at the memory service's limits) that a
request goes through before anything is written; a row that fails them got in
through a gap in validation."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from services.common.chat import ChatMessage
from services.common.errors import InvalidArgument
from services.common.validation import (
    require_id,
    require_messages,
    require_metadata,
    require_range,
    require_text,
)
from services.memory.config import MemorySettings

#: Columns that name someone or something, wherever a table has them.
_ID_COLUMNS = ("tenant", "tenant_id", "user_id", "session_id", "request_id", "turn_request_id")


@dataclass(frozen=True)
class BadRow:
    table: str
    key: str  # the row's identifying columns, shortened
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"table": self.table, "key": self.key, "reason": self.reason}


@dataclass(frozen=True)
class StoreReport:
    rows: dict[str, int]  # table -> rows checked
    bad: list[BadRow]

    @property
    def ok(self) -> bool:
        return not self.bad

    def as_dict(self, limit: int = 20) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "bad": len(self.bad),
            "examples": [b.as_dict() for b in self.bad[:limit]],
        }


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _ids(row: dict[str, Any]) -> None:
    for column in _ID_COLUMNS:
        if column in row and not (column == "session_id" and row[column] is None):
            require_id(column, row[column])


def _messages(raw: Any, s: MemorySettings) -> None:
    items = _json(raw)
    if not isinstance(items, list) or not all(isinstance(m, dict) for m in items):
        raise InvalidArgument("messages is not a list of messages")
    messages = [
        ChatMessage(str(m.get("role", "")), str(m.get("content", "")), str(m.get("name", "")))
        for m in items
    ]
    require_messages(
        "messages", messages, max_messages=s.max_messages_per_turn, max_chars=s.max_message_chars
    )


def _metadata(raw: Any) -> None:
    metadata = _json(raw)
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidArgument("metadata is not a map of strings")
    require_metadata("metadata", metadata)


def _turn(row: dict[str, Any], s: MemorySettings) -> None:
    _ids(row)
    _messages(row["messages"], s)
    _metadata(row["metadata"])


def _memory(row: dict[str, Any], s: MemorySettings) -> None:
    _ids(row)
    require_text("text", row["text"], max_chars=s.max_memory_chars)
    _metadata(row["metadata"])


def _feedback(row: dict[str, Any], s: MemorySettings) -> None:
    _ids(row)
    require_range("score", float(row["score"]), minimum=0.0, maximum=1.0)
    require_text("comment", row["comment"], max_chars=s.max_comment_chars, allow_empty=True)


CHECKS: dict[str, Callable[[dict[str, Any], MemorySettings], None]] = {
    "sessions": lambda row, _s: _ids(row),
    "turns": _turn,
    "memories": _memory,
    "feedback": _feedback,
}


def check_rows(
    table: str, rows: Iterable[dict[str, Any]], settings: MemorySettings
) -> tuple[int, list[BadRow]]:
    """(rows seen, the rows that fail) of one table."""
    check = CHECKS[table]
    seen, bad = 0, []
    for row in rows:
        seen += 1
        try:
            check(row, settings)
        except (InvalidArgument, KeyError, TypeError, ValueError) as exc:
            key = ", ".join(f"{c}={_short(row[c])}" for c in _ID_COLUMNS if c in row)
            bad.append(BadRow(table, key, str(exc)[:200]))
    return seen, bad


def check_store(dsn: str, settings: MemorySettings | None = None) -> StoreReport:
    """Every row of the memory store's tables, checked (the embedding column left out)."""
    settings = settings or MemorySettings()
    counts: dict[str, int] = {}
    bad: list[BadRow] = []
    with psycopg.connect(dsn) as conn:
        for table in CHECKS:
            columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = %s"
                    " AND data_type <> 'USER-DEFINED'",
                    (table,),
                )
            ]
            if not columns:
                continue
            cursor = conn.execute(
                sql.SQL("SELECT {} FROM {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
                )
            )
            rows = (dict(zip(columns, values, strict=True)) for values in cursor)
            counts[table], found = check_rows(table, rows, settings)
            bad.extend(found)
    return StoreReport(counts, bad)

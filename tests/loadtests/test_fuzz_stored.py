"""The fuzzer's check of what the memory store kept (loadtests.fuzz.stored): a row
that a valid request could have stored passes, each kind of planted bad row is
found, on plain rows and on a real migrated store."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from loadtests.fuzz.stored import check_rows, check_store
from services.memory.config import MemorySettings
from services.memory.store import PostgresStore

SETTINGS = MemorySettings()
TURN: dict[str, Any] = {
    "user_id": "ana",
    "session_id": "s1",
    "turn_index": 0,
    "request_id": "t1",
    "messages": [{"role": "user", "content": "hi", "name": ""}],
    "metadata": {"model": "sim"},
}


def test_a_row_a_valid_request_stores_passes() -> None:
    assert check_rows("turns", [TURN], SETTINGS) == (1, [])
    memory = {"user_id": "ana", "request_id": "m1", "session_id": None, "text": "x", "metadata": {}}
    assert check_rows("memories", [memory], SETTINGS) == (1, [])
    feedback = {"user_id": "ana", "turn_request_id": "t1", "session_id": "s1", "score": 0.5,
                "comment": ""}  # fmt: skip
    assert check_rows("feedback", [feedback], SETTINGS) == (1, [])


@pytest.mark.parametrize(
    ("table", "change", "reason"),
    [
        ("turns", {"user_id": "u" * 129}, "user_id is longer than 128 characters"),
        ("turns", {"session_id": "s\n"}, "session_id contains non-printable characters"),
        ("turns", {"messages": [{"role": "wizard", "content": ""}]}, "messages[0].role"),
        ("turns", {"messages": []}, "messages needs at least 1"),
        ("turns", {"messages": [{"role": "user", "content": "x", "name": "n" * 65}]}, "name"),
        ("turns", {"metadata": {f"k{i}": "v" for i in range(33)}}, "at most 32 entries"),
        ("turns", {"metadata": ["not", "a", "map"]}, "not a map"),
        ("memories", {"text": ""}, "text is empty"),
        ("memories", {"text": "x" * 8193}, "text is longer than 8192"),
        ("feedback", {"score": 1.5}, "score must be in [0.0, 1.0]"),
        ("feedback", {"comment": "c" * 4097}, "comment is longer than 4096"),
    ],
)
def test_a_planted_bad_row_is_found(table: str, change: dict[str, Any], reason: str) -> None:
    base: dict[str, Any] = {
        "turns": TURN,
        "memories": {"user_id": "ana", "request_id": "m1", "session_id": None, "text": "x",
                     "metadata": {}},
        "feedback": {"user_id": "ana", "turn_request_id": "t1", "session_id": "s1",
                     "score": 0.5, "comment": ""},
    }[table]  # fmt: skip
    seen, bad = check_rows(table, [base, {**base, **change}], SETTINGS)
    assert seen == 2
    assert len(bad) == 1
    assert bad[0].table == table and reason in bad[0].reason


async def test_check_store_reads_every_table_of_a_migrated_store(fresh_dsn: str) -> None:
    store = PostgresStore(dimension=3)
    await store.open(fresh_dsn)
    await store.close()
    assert check_store(fresh_dsn).ok
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (tenant, user_id, session_id) VALUES ('default', 'ana', 's1')"
        )
        conn.execute(
            "INSERT INTO sessions (tenant, user_id, session_id) VALUES ('default', %s, 's2')",
            ("a" * 300,),
        )
    report = check_store(fresh_dsn)
    assert report.rows["sessions"] == 2
    assert [(b.table, b.reason) for b in report.bad] == [
        ("sessions", "user_id is longer than 128 characters")
    ]
    assert not report.ok

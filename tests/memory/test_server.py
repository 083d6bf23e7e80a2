"""The memory service's wait for its database at start (services.memory.server.open_store):
connection failures are retried within the startup window, anything else ends the
start at once. A store whose `open` fails as scripted stands in for PostgreSQL; the
whole service against a real PostgreSQL started after it is in
tests/integration/test_memory_processes.py."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.errors import FailedPrecondition, Unavailable
from services.memory.config import MemorySettings
from services.memory.server import open_store
from services.memory.store import PostgresStore
from tests.support.fakes import DIM

DSN = "postgresql://postgres@db.invalid/memory"


class ScriptedStore(PostgresStore):
    """`open` raises the scripted errors in turn, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        super().__init__(dimension=DIM)
        self.errors = list(errors)
        self.attempts: list[float | None] = []

    async def open(self, dsn: str, connect_timeout_s: float | None = None) -> None:
        self.attempts.append(connect_timeout_s)
        if self.errors:
            raise self.errors.pop(0)


def settings(**overrides: Any) -> MemorySettings:
    values: dict[str, Any] = {
        "port": 0,
        "dsn": DSN,
        "db_startup_timeout_s": 60,
        "db_retry_initial_backoff_s": 0.001,
        "db_retry_max_backoff_s": 0.002,
    }
    values.update(overrides)
    return MemorySettings(**values)


async def test_connection_failures_are_retried_until_the_database_answers() -> None:
    store = ScriptedStore(*(Unavailable("database unavailable") for _ in range(3)))
    await open_store(store, DSN, settings())
    assert len(store.attempts) == 4
    # Every attempt's connection wait stays within what is left of the window.
    assert all(t is not None and 0 < t <= 60 for t in store.attempts)


async def test_other_failures_end_the_start_at_once() -> None:
    store = ScriptedStore(FailedPrecondition("the database has pgvector 0.7.4"))
    with pytest.raises(FailedPrecondition):
        await open_store(store, DSN, settings())
    assert len(store.attempts) == 1


async def test_the_last_failure_is_raised_when_the_window_runs_out() -> None:
    store = ScriptedStore(*(Unavailable("database unavailable") for _ in range(10_000)))
    with pytest.raises(Unavailable):
        await open_store(
            store, DSN, settings(db_startup_timeout_s=0.5, db_retry_max_backoff_s=0.05)
        )
    assert 1 < len(store.attempts) < 10_000


async def test_a_window_of_zero_is_one_attempt_with_the_drivers_timeout() -> None:
    store = ScriptedStore(Unavailable("database unavailable"))
    with pytest.raises(Unavailable):
        await open_store(store, DSN, settings(db_startup_timeout_s=0))
    assert store.attempts == [None]

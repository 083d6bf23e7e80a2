"""Shared fixtures: a real PostgreSQL for the session, a fresh database per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.postgres import TestPostgres

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")  # tests that trace set up their own


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPostgres]:
    pg = TestPostgres(tmp_path_factory.mktemp("pg"))
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture
def fresh_dsn(postgres: TestPostgres) -> str:
    """DSN of a new, empty database on the session's server."""
    return postgres.new_database()

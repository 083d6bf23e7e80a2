"""Real processes: the embedding service with the real model (shared by the
module), memory services on real PostgreSQL databases."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import ServiceProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="package")
def embedding_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "embedding.log"
    proc = ServiceProcess(
        "services.embedding",
        port,
        {"ATALAYA_EMBEDDING_PORT": str(port), "ATALAYA_EMBEDDING_GRACE_PERIOD_S": "2"},
        log,
    ).start()
    yield proc
    proc.stop()


MemoryFactory = Callable[..., ServiceProcess]


@pytest.fixture
def memory_proc(tmp_path: Path, embedding_proc: ServiceProcess) -> Iterator[MemoryFactory]:
    """Factory: memory_proc(dsn, **extra_env) -> a started memory process."""
    started: list[ServiceProcess] = []

    def start(dsn: str, port: int | None = None, **env: str) -> ServiceProcess:
        port = port or free_port()
        proc = ServiceProcess(
            "services.memory",
            port,
            {
                "ATALAYA_MEMORY_PORT": str(port),
                "ATALAYA_MEMORY_DSN": dsn,
                "ATALAYA_MEMORY_EMBEDDING__TARGET": env.pop("embedding", embedding_proc.target),
                "ATALAYA_MEMORY_GRACE_PERIOD_S": "2",
                "ATALAYA_MEMORY_READINESS_INTERVAL_S": "0.3",
                **{f"ATALAYA_MEMORY_{k.upper()}": v for k, v in env.items()},
            },
            tmp_path / f"memory-{len(started)}.log",
        ).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()

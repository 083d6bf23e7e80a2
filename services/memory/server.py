"""Wires the memory service: store (embedded or external PostgreSQL) + embedding
client -> core -> servicer -> runner.

At start the service waits for its database: PostgreSQL may come up after it (a
rollout of both, a node restart). It tries, waits (doubling from
db_retry_initial_backoff_s up to db_retry_max_backoff_s) and tries again until
db_startup_timeout_s has passed; health says NOT_SERVING meanwhile and liveness
SERVING, so neither traffic nor a restart reaches it. Only connection failures are
retried: a refused CREATE EXTENSION or a store of another vector dimension ends
the start at once."""

from __future__ import annotations

import asyncio
import logging
import time

from atalaya.memory.v1 import memory_pb2, memory_pb2_grpc

from services.client import EmbeddingClient
from services.client.embedder import EmbeddingServiceEmbedder
from services.common.embedder import Embedder
from services.common.errors import Unavailable
from services.common.service import CoreService
from services.memory.config import MemorySettings
from services.memory.core import MemoryCore
from services.memory.embedded import EmbeddedPostgres
from services.memory.servicer import MemoryServicer
from services.memory.store import PostgresStore

log = logging.getLogger(__name__)

SERVICE_NAME = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name


async def open_store(store: PostgresStore, dsn: str, settings: MemorySettings) -> None:
    """`store.open(dsn)`, retried on connection failures (Unavailable) within
    settings.db_startup_timeout_s; the last failure is raised when it runs out.
    A plain loop: the retry libraries would add a dependency for these few lines."""
    window = settings.db_startup_timeout_s
    if window == 0:
        await store.open(dsn)
        return
    deadline = time.monotonic() + window
    backoff = settings.db_retry_initial_backoff_s
    attempt = 1
    while True:
        remaining = deadline - time.monotonic()
        try:
            await store.open(dsn, connect_timeout_s=max(remaining, 0.0))
        except Unavailable as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error(
                    "database not reachable within the startup window",
                    extra={"attempts": attempt, "db_startup_timeout_s": window},
                )
                raise
            delay = min(backoff, remaining)
            log.warning(
                "database not reachable yet",
                extra={
                    "attempt": attempt,
                    "reason": str(exc.__cause__ or exc),
                    "retry_in_s": round(delay, 3),
                    "remaining_s": round(remaining, 3),
                },
            )
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, settings.db_retry_max_backoff_s)
            attempt += 1
        else:
            if attempt > 1:
                log.info("database reached", extra={"attempts": attempt})
            return


class MemoryService(CoreService[MemoryCore, MemoryServicer]):
    """Readiness follows the database only: the embedding service is a dependency
    whose outage fails embedding calls with UNAVAILABLE but leaves history up."""

    name = "memory"
    grpc_service_names = (SERVICE_NAME,)

    def __init__(
        self,
        settings: MemorySettings,
        store: PostgresStore,
        embedder: Embedder,
        embedded: EmbeddedPostgres | None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._embedder = embedder
        self._embedded = embedded
        super().__init__(
            MemoryCore(store, embedder, settings),
            MemoryServicer,
            memory_pb2_grpc.add_MemoryServiceServicer_to_server,
        )

    async def start(self) -> None:
        if self._embedded is not None:
            dsn = await asyncio.to_thread(self._embedded.start)
        else:
            assert self._settings.dsn is not None
            dsn = self._settings.dsn.get_secret_value()
        await open_store(self._store, dsn, self._settings)

    async def ready(self) -> bool:
        return await self.core.ready()

    async def stop(self) -> None:
        await self._embedder.close()
        await self._store.close()
        if self._embedded is not None and self._settings.embedded_stop_on_exit:
            await asyncio.to_thread(self._embedded.stop)


def build(settings: MemorySettings, embedder: Embedder | None = None) -> MemoryService:
    s = settings
    store = PostgresStore(
        dimension=s.embedding_dimension,
        pool_min_size=s.pool_min_size,
        pool_max_size=s.pool_max_size,
        pool_timeout_s=s.pool_timeout_s,
        statement_timeout_ms=s.statement_timeout_ms,
        hnsw_m=s.hnsw_m,
        hnsw_ef_construction=s.hnsw_ef_construction,
        hnsw_ef_search=s.hnsw_ef_search,
        exact_search_max_memories=s.exact_search_max_memories,
    )
    if embedder is None:
        embedder = EmbeddingServiceEmbedder(EmbeddingClient.connect(s.embedding))
    embedded = EmbeddedPostgres(s.state_dir) if s.dsn is None else None
    return MemoryService(s, store, embedder, embedded)

"""Wires the memory service: store (embedded or external PostgreSQL) + embedding
client -> core -> servicer -> runner."""

from __future__ import annotations

import asyncio

from atalaya.memory.v1 import memory_pb2, memory_pb2_grpc

from services.client import EmbeddingClient
from services.client.embedder import EmbeddingServiceEmbedder
from services.common.embedder import Embedder
from services.common.service import CoreService
from services.memory.config import MemorySettings
from services.memory.core import MemoryCore
from services.memory.embedded import EmbeddedPostgres
from services.memory.servicer import MemoryServicer
from services.memory.store import PostgresStore

SERVICE_NAME = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name


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
        await self._store.open(dsn)

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

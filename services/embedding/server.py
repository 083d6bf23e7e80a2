"""Wires the embedding service together: backend -> core -> servicer -> runner."""

from __future__ import annotations

import grpc
from atalaya.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.common.server import Service
from services.embedding.backends.base import EmbeddingBackend
from services.embedding.backends.sentence_transformers import SentenceTransformerBackend
from services.embedding.config import EmbeddingSettings
from services.embedding.core import EmbeddingCore
from services.embedding.servicer import EmbeddingServicer

SERVICE_NAME = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


class EmbeddingService(Service):
    name = "embedding"
    grpc_service_names = (SERVICE_NAME,)

    def __init__(self, core: EmbeddingCore) -> None:
        self.core = core

    def add_to_server(self, server: grpc.aio.Server) -> None:
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(
            EmbeddingServicer(self.core), server
        )

    async def start(self) -> None:
        await self.core.start()

    async def ready(self) -> bool:
        return self.core.ready()

    async def stop(self) -> None:
        await self.core.stop()


def default_backend(settings: EmbeddingSettings) -> EmbeddingBackend:
    return SentenceTransformerBackend(
        settings.model, settings.model_path, device=settings.device, threads=settings.torch_threads
    )


def build(settings: EmbeddingSettings, backend: EmbeddingBackend | None = None) -> EmbeddingService:
    return EmbeddingService(EmbeddingCore(backend or default_backend(settings), settings))

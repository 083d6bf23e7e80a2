"""Wires the embedding service together: backend -> core -> servicer -> runner."""

from __future__ import annotations

from atalaya.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.common.service import CoreLifecycleService
from services.embedding.backends.base import EmbeddingBackend
from services.embedding.backends.sentence_transformers import SentenceTransformerBackend
from services.embedding.config import EmbeddingSettings
from services.embedding.core import EmbeddingCore
from services.embedding.servicer import EmbeddingServicer

SERVICE_NAME = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name


#: The embedding service: the core's lifecycle (load the model, run the batcher).
EmbeddingService = CoreLifecycleService[EmbeddingCore, EmbeddingServicer]


def default_backend(settings: EmbeddingSettings) -> EmbeddingBackend:
    return SentenceTransformerBackend(
        settings.model, settings.model_path, device=settings.device, threads=settings.torch_threads
    )


def build(settings: EmbeddingSettings, backend: EmbeddingBackend | None = None) -> EmbeddingService:
    return EmbeddingService(
        "embedding",
        (SERVICE_NAME,),
        EmbeddingCore(backend or default_backend(settings), settings),
        EmbeddingServicer,
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server,
    )

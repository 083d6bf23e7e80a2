"""EmbeddingService servicer: proto <-> core, nothing else."""

from __future__ import annotations

import time

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.common.validation import request_id_or_new
from services.embedding.core import EmbeddingCore


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, core: EmbeddingCore) -> None:
        self._core = core

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedding_pb2.EmbedResponse:
        started = time.perf_counter()
        request_id = request_id_or_new(request.request_id)
        result = await self._core.embed(
            list(request.texts), normalize=request.normalize, model=request.model
        )
        response = embedding_pb2.EmbedResponse(
            request_id=request_id,
            model=result.model,
            dimension=result.dimension,
            usage=common_pb2.Usage(input_tokens=result.input_tokens),
        )
        response.embeddings.extend(
            embedding_pb2.Embedding(values=row) for row in result.vectors.tolist()
        )
        response.timing.phases_ms["queue"] = result.queue_s * 1000.0
        response.timing.phases_ms["compute"] = result.compute_s * 1000.0
        response.timing.total_ms = (time.perf_counter() - started) * 1000.0
        return response

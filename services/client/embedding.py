"""EmbeddingService client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import numpy.typing as npt
from atalaya.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.client.base import BaseClient


@dataclass(frozen=True)
class EmbedResult:
    request_id: str
    model: str
    vectors: npt.NDArray[np.float32]  # (len(texts), dimension)
    input_tokens: int

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])


class EmbeddingClient(BaseClient):
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 5.0) -> None:
        super().__init__(channel, timeout_s=timeout_s)
        self._stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

    async def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        request_id: str = "",
        timeout: float | None = None,
    ) -> EmbedResult:
        response = await self._stub.Embed(
            embedding_pb2.EmbedRequest(
                request_id=request_id, texts=list(texts), normalize=normalize
            ),
            timeout=self._timeout(timeout),
        )
        vectors = np.array([e.values for e in response.embeddings], dtype=np.float32)
        return EmbedResult(
            request_id=response.request_id,
            model=response.model,
            vectors=vectors.reshape(len(response.embeddings), response.dimension),
            input_tokens=response.usage.input_tokens,
        )

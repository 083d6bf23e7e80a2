"""services.common.embedder.Embedder over the embedding service."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from services.client.base import domain_error
from services.client.embedding import EmbeddingClient
from services.common.embedder import Embedder, Vector


class EmbeddingServiceEmbedder(Embedder):
    def __init__(self, client: EmbeddingClient) -> None:
        self._client = client

    async def embed(self, texts: Sequence[str]) -> tuple[Vector, int]:
        try:
            result = await self._client.embed(texts, normalize=True)
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "embedding") from err
        return result.vectors, result.input_tokens

    async def close(self) -> None:
        await self._client.close()

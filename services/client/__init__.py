"""Python client for Atalaya's gRPC services.

    from services.client import EmbeddingClient, GatewayClient, MemoryClient

    async with EmbeddingClient.connect("127.0.0.1:50054") as embedding:
        result = await embedding.embed(["hello"], normalize=True)
        result.vectors  # numpy float32 array, shape (1, 384)

Every call has a deadline (the client's default, or `timeout=` per call); channels
use round_robin and retry UNAVAILABLE (services.common.channel). Errors are raised
as grpc.aio.AioRpcError; `domain_error` turns one into Atalaya's domain errors for
services that call other services."""

from services.client.base import domain_error
from services.client.embedding import EmbeddingClient, EmbedResult
from services.client.gateway import GatewayClient, TurnResult, TurnSettings
from services.client.memory import MemoryClient

__all__ = [
    "EmbedResult",
    "EmbeddingClient",
    "GatewayClient",
    "MemoryClient",
    "TurnResult",
    "TurnSettings",
    "domain_error",
]

"""The five services as Ray Serve deployments.

Each deployment builds its service exactly as the service's server.py does
(`build(settings, ...)`), runs the service's own servicer on it, and exposes one
method per RPC, named like the RPC: Serve's gRPC proxy calls them with the
request proto (unary methods return the response, streaming ones are async
generators), and other deployments call the same methods through
DeploymentHandles. Dependencies between services are handles, never gRPC
channels: the guardrail's semantic detector and memory embed through the
Embedding deployment, the gateway's Guard/Memory/Generator are
services.ray.upstream's handle implementations.

The serve config (services/ray/serve_config.yaml) sets every deployment's
options per environment, explicitly; the defaults at the end of this module are
for one small machine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from atalaya.embedding.v1 import embedding_pb2
from atalaya.gateway.v1 import gateway_pb2
from atalaya.generation.v1 import generation_pb2
from atalaya.guardrail.v1 import guardrail_pb2
from atalaya.memory.v1 import memory_pb2
from ray import serve
from ray.serve import Deployment

from services.common.logging import configure_logging
from services.embedding.config import EmbeddingSettings
from services.gateway.config import GatewaySettings
from services.generation.config import GenerationSettings
from services.guardrail.config import GuardrailSettings
from services.memory.config import MemorySettings
from services.ray.hosting import GrpcContext, HostedService, stream, unary
from services.ray.upstream import HandleEmbedder, handle_upstreams

#: Deployment names (the serve config's `deployments[].name`) and their default apps.
EMBEDDING, GUARDRAIL, GENERATION, MEMORY, GATEWAY = (
    "Embedding",
    "Guardrail",
    "Generation",
    "Memory",
    "Gateway",
)
APPS = {
    EMBEDDING: "embedding",
    GUARDRAIL: "guardrail",
    GENERATION: "generation",
    MEMORY: "memory",
    GATEWAY: "gateway",
}


def _handle(deployment: str, app: str) -> Any:
    """A handle to a deployment of another application. It is not checked at
    construction: applications start in any order, and a call waits until the
    target has a running replica."""
    return serve.get_deployment_handle(deployment, app_name=app, _check_exists=False)


def _autoscaling(min_replicas: int, max_replicas: int, target: float) -> dict[str, Any]:
    return {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target,
    }


class EmbeddingDeployment(HostedService):
    async def __init__(  # type: ignore[misc]  # Serve awaits it
        self, settings: EmbeddingSettings
    ) -> None:
        from services.embedding.server import build

        configure_logging("embedding", settings.log_level)
        self._servicer = await self._host(build(settings))

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, grpc_context: GrpcContext | None = None
    ) -> embedding_pb2.EmbedResponse:
        return await unary(self._servicer.Embed, request, grpc_context)


class GuardrailDeployment(HostedService):
    async def __init__(  # type: ignore[misc]  # Serve awaits it
        self, settings: GuardrailSettings, embedding_app: str
    ) -> None:
        from services.guardrail.server import build

        configure_logging("guardrail", settings.log_level)
        embedder = HandleEmbedder(
            _handle(EMBEDDING, embedding_app), timeout_s=settings.embedding.timeout_s
        )
        self._servicer = await self._host(build(settings, embedder=embedder))

    async def Classify(
        self, request: guardrail_pb2.ClassifyRequest, grpc_context: GrpcContext | None = None
    ) -> guardrail_pb2.ClassifyResponse:
        return await unary(self._servicer.Classify, request, grpc_context)


class GenerationDeployment(HostedService):
    async def __init__(  # type: ignore[misc]  # Serve awaits it
        self, settings: GenerationSettings
    ) -> None:
        from services.generation.server import build

        configure_logging("generation", settings.log_level)
        self._servicer = await self._host(build(settings))

    async def Generate(
        self, request: generation_pb2.GenerateRequest, grpc_context: GrpcContext | None = None
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        async for item in stream(self._servicer.Generate, request, grpc_context):
            yield item

    async def CountTokens(
        self, request: generation_pb2.CountTokensRequest, grpc_context: GrpcContext | None = None
    ) -> generation_pb2.CountTokensResponse:
        return await unary(self._servicer.CountTokens, request, grpc_context)

    async def ListModels(
        self, request: generation_pb2.ListModelsRequest, grpc_context: GrpcContext | None = None
    ) -> generation_pb2.ListModelsResponse:
        return await unary(self._servicer.ListModels, request, grpc_context)


class MemoryDeployment(HostedService):
    """Needs `settings.dsn`: replicas share one PostgreSQL (the local runner starts
    an embedded one once and passes its DSN; on Kubernetes it is a Secret)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits it
        self, settings: MemorySettings, embedding_app: str
    ) -> None:
        from services.memory.server import build

        configure_logging("memory", settings.log_level)
        embedder = HandleEmbedder(
            _handle(EMBEDDING, embedding_app), timeout_s=settings.embedding.timeout_s
        )
        self._servicer = await self._host(build(settings, embedder=embedder))

    async def AppendTurn(
        self, request: memory_pb2.AppendTurnRequest, grpc_context: GrpcContext | None = None
    ) -> memory_pb2.AppendTurnResponse:
        return await unary(self._servicer.AppendTurn, request, grpc_context)

    async def GetHistory(
        self, request: memory_pb2.GetHistoryRequest, grpc_context: GrpcContext | None = None
    ) -> memory_pb2.GetHistoryResponse:
        return await unary(self._servicer.GetHistory, request, grpc_context)

    async def Remember(
        self, request: memory_pb2.RememberRequest, grpc_context: GrpcContext | None = None
    ) -> memory_pb2.RememberResponse:
        return await unary(self._servicer.Remember, request, grpc_context)

    async def Recall(
        self, request: memory_pb2.RecallRequest, grpc_context: GrpcContext | None = None
    ) -> memory_pb2.RecallResponse:
        return await unary(self._servicer.Recall, request, grpc_context)

    async def Forget(
        self, request: memory_pb2.ForgetRequest, grpc_context: GrpcContext | None = None
    ) -> memory_pb2.ForgetResponse:
        return await unary(self._servicer.Forget, request, grpc_context)

    async def RecordFeedback(
        self, request: memory_pb2.RecordFeedbackRequest, grpc_context: GrpcContext | None = None
    ) -> memory_pb2.RecordFeedbackResponse:
        return await unary(self._servicer.RecordFeedback, request, grpc_context)

    async def ExportFeedback(
        self, request: memory_pb2.ExportFeedbackRequest, grpc_context: GrpcContext | None = None
    ) -> AsyncIterator[memory_pb2.FeedbackRecord]:
        async for item in stream(self._servicer.ExportFeedback, request, grpc_context):
            yield item


class GatewayDeployment(HostedService):
    """ChatCore, unchanged, over handles to the other applications' deployments."""

    async def __init__(  # type: ignore[misc]  # Serve awaits it
        self, settings: GatewaySettings, apps: dict[str, str]
    ) -> None:
        from services.gateway.server import build

        configure_logging("gateway", settings.log_level)
        guard, memory, generator = handle_upstreams(
            _handle(GUARDRAIL, apps[GUARDRAIL]),
            _handle(MEMORY, apps[MEMORY]),
            _handle(GENERATION, apps[GENERATION]),
        )
        self._servicer = await self._host(
            build(settings, guard=guard, memory=memory, generator=generator)
        )

    async def Chat(
        self, request: gateway_pb2.ChatRequest, grpc_context: GrpcContext | None = None
    ) -> AsyncIterator[gateway_pb2.ChatEvent]:
        async for item in stream(self._servicer.Chat, request, grpc_context):
            yield item

    async def Feedback(
        self, request: gateway_pb2.FeedbackRequest, grpc_context: GrpcContext | None = None
    ) -> gateway_pb2.FeedbackResponse:
        return await unary(self._servicer.Feedback, request, grpc_context)


# The deployments. Their options are defaults for one small machine (as local.yaml);
# the serve config sets each explicitly. (Decorating the classes would hide them from
# type checkers.)
Embedding: Deployment = serve.deployment(
    name=EMBEDDING,
    max_ongoing_requests=128,
    autoscaling_config=_autoscaling(1, 2, 64),
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=5,
)(EmbeddingDeployment)
Guardrail: Deployment = serve.deployment(
    name=GUARDRAIL,
    max_ongoing_requests=128,
    autoscaling_config=_autoscaling(1, 2, 64),
    ray_actor_options={"num_cpus": 0.2},
    health_check_period_s=5,
)(GuardrailDeployment)
Generation: Deployment = serve.deployment(
    name=GENERATION,
    max_ongoing_requests=64,
    autoscaling_config=_autoscaling(1, 1, 32),
    ray_actor_options={"num_cpus": 0.2},
    health_check_period_s=5,
)(GenerationDeployment)
Memory: Deployment = serve.deployment(
    name=MEMORY,
    max_ongoing_requests=128,
    autoscaling_config=_autoscaling(1, 2, 64),
    ray_actor_options={"num_cpus": 0.1},
    health_check_period_s=5,
)(MemoryDeployment)
Gateway: Deployment = serve.deployment(
    name=GATEWAY,
    max_ongoing_requests=128,
    autoscaling_config=_autoscaling(1, 2, 64),
    ray_actor_options={"num_cpus": 0.1},
    health_check_period_s=5,
)(GatewayDeployment)

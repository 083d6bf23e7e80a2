"""Wires the gateway: upstream clients -> core -> servicer -> runner, and the
authenticator of its callers (services.common.edge_auth; none with auth off)."""

from __future__ import annotations

from atalaya.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from atalaya.generation.v1 import generation_pb2_grpc
from atalaya.guardrail.v1 import guardrail_pb2_grpc
from atalaya.memory.v1 import memory_pb2_grpc

from services.common.edge_auth import EdgeAuthenticator, build_authenticator
from services.common.identity import AnonymousAuthenticator
from services.common.service import CoreService
from services.gateway.clients import (
    GrpcTransport,
    TransportGenerator,
    TransportGuard,
    TransportMemory,
)
from services.gateway.config import GatewaySettings
from services.gateway.core import ChatCore
from services.gateway.servicer import GatewayServicer
from services.gateway.templates import PromptTemplate
from services.gateway.upstream import Generator, Guard, Memory

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


class GatewayService(CoreService[ChatCore, GatewayServicer]):
    """Ready as soon as it runs: each turn reports the state of the services it
    needs (generation down: UNAVAILABLE; guard or memory down: degraded modes),
    so one upstream outage does not take the gateway out of rotation."""

    name = "gateway"
    grpc_service_names = (SERVICE_NAME,)

    def __init__(self, core: ChatCore, upstreams: tuple[Guard, Memory, Generator]) -> None:
        super().__init__(
            core, GatewayServicer, gateway_pb2_grpc.add_GatewayServiceServicer_to_server
        )
        self._upstreams = upstreams

    async def stop(self) -> None:
        for upstream in self._upstreams:
            await upstream.close()


def build(
    settings: GatewaySettings,
    *,
    guard: Guard | None = None,
    memory: Memory | None = None,
    generator: Generator | None = None,
) -> GatewayService:
    s = settings
    if guard is None:
        stubs = guardrail_pb2_grpc.GuardrailServiceStub
        guard = TransportGuard(GrpcTransport(s.guardrail, stubs, "guardrail"))
    if memory is None:
        memory_stubs = memory_pb2_grpc.MemoryServiceStub
        memory = TransportMemory(GrpcTransport(s.memory, memory_stubs, "memory"))
    if generator is None:
        gen_stubs = generation_pb2_grpc.GenerationServiceStub
        generator = TransportGenerator(GrpcTransport(s.generation, gen_stubs, "generation"))
    template = PromptTemplate.load(settings.template_path)
    core = ChatCore(guard, memory, generator, template, settings)
    return GatewayService(core, (guard, memory, generator))


def authenticator(settings: GatewaySettings) -> EdgeAuthenticator | AnonymousAuthenticator:
    """Who may call the gateway: its edge authenticator, or with settings.auth.mode
    off everyone as the anonymous identity. Never the services' peer authenticator:
    the gateway faces clients, and a client's forwarded-identity headers must not be
    believed."""
    return build_authenticator(settings.auth) or AnonymousAuthenticator()

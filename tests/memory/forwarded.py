"""Test seam: the memory service believing a forwarded identity.

The server's own interceptor is what turns credentials and forwarded identity
metadata (identity.Identity.metadata()) into identity.current() for each RPC. Until
it reads the forwarded keys, the servicer tests serve memory through this wrapper,
which does the same for the keys alone: each RPC runs `acting_as` the identity its
metadata forwards (ANONYMOUS when it forwards none), then the real servicer."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from atalaya.memory.v1 import memory_pb2, memory_pb2_grpc

from services.common import identity
from services.common.identity import SCOPES_KEY, TENANT_KEY, USER_KEY, Identity
from services.common.server import Service
from services.memory.server import MemoryService

METHODS = [m.name for m in memory_pb2.DESCRIPTOR.services_by_name["MemoryService"].methods]


def forwarded(metadata: identity.Metadata | None) -> Identity:
    """The identity the metadata forwards, or ANONYMOUS."""
    values = {k: v for k, v in metadata or () if isinstance(v, str)}
    tenant = values.get(TENANT_KEY, "")
    if not tenant:
        return identity.ANONYMOUS
    scopes = frozenset(values.get(SCOPES_KEY, "").split())
    return Identity(tenant, values.get(USER_KEY, ""), scopes)


def _unary(
    method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        with identity.acting_as(forwarded(context.invocation_metadata())):
            return await method(request, context)

    return handle


def _stream(
    method: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        with identity.acting_as(forwarded(context.invocation_metadata())):
            async for item in method(request, context):
                yield item

    return handle


class ForwardedIdentityServicer(memory_pb2_grpc.MemoryServiceServicer):
    """Every RPC of `inner`, run as the identity its call forwards."""

    def __init__(self, inner: memory_pb2_grpc.MemoryServiceServicer) -> None:
        for name in METHODS:
            method = getattr(inner, name)
            wrap = _stream if inspect.isasyncgenfunction(method) else _unary
            setattr(self, name, wrap(method))


class ForwardedIdentityMemory(Service):
    """`inner`, its servicer wrapped in ForwardedIdentityServicer."""

    def __init__(self, inner: MemoryService) -> None:
        self.inner = inner
        self.name = inner.name
        self.grpc_service_names = inner.grpc_service_names

    def add_to_server(self, server: grpc.aio.Server) -> None:
        servicer = ForwardedIdentityServicer(self.inner.servicer())
        memory_pb2_grpc.add_MemoryServiceServicer_to_server(servicer, server)

    async def start(self) -> None:
        await self.inner.start()

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def stop(self) -> None:
        await self.inner.stop()


def _with_identity(details: Any, who: Identity) -> Any:
    metadata = [*(details.metadata or ()), *who.metadata()]
    return details._replace(metadata=grpc.aio.Metadata(*metadata))


class _ForwardUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, who: Identity) -> None:
        self._who = who

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_identity(details, self._who), request)


class _ForwardStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, who: Identity) -> None:
        self._who = who

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_identity(details, self._who), request)


def forward_identity(who: Identity) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send `who`'s forwarded identity metadata on every
    call, as the gateway does for the end user it serves (a channel files each
    interceptor under one kind of call only, hence two)."""
    return [_ForwardUnary(who), _ForwardStream(who)]

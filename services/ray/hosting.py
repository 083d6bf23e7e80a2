"""Hosting a service's servicer inside a Ray Serve replica.

Serve's gRPC proxy calls a deployment method named like the RPC (`Embed`,
`Chat`...) with the request proto and, when the method takes it, a
`grpc_context` (Serve's RayServegRPCContext). The same methods answer
DeploymentHandle calls from other deployments, with no context. The servicer
classes run unchanged; this module gives them the part of grpc.aio's
ServicerContext they use and maps their errors the way the plain runtime's
interceptor does (services.common.interceptors): domain errors keep their status
and message, anything else is INTERNAL with a generic message."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

import grpc

from services.common import errors
from services.common.interceptors import INTERNAL_MESSAGE, status_for
from services.common.service import CoreService

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
ServicerT = TypeVar("ServicerT")


class GrpcContext(Protocol):
    """What Serve's RayServegRPCContext offers that is used here."""

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def invocation_metadata(self) -> list[tuple[str, str]]: ...


class ServeServicerContext:
    """The subset of grpc.aio.ServicerContext the servicers call. Serve's proxy
    does not forward the client's deadline to the replica, so `time_remaining`
    is None: the core applies its own limit (e.g. the gateway's max turn time)."""

    def __init__(self, context: GrpcContext | None) -> None:
        self._context = context

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        if self._context is None:
            return ()
        return tuple(self._context.invocation_metadata())


def _record_failure(exc: BaseException, context: GrpcContext | None, method: str) -> None:
    """Put the status for `exc` on Serve's context (the proxy sends it when the
    method raises); over a handle the exception itself travels to the caller."""
    if isinstance(exc, errors.AtalayaError):
        code, details = status_for(exc), str(exc)
        log.info("rpc failed", extra={"method": method, "code": code.name, "reason": details})
    elif isinstance(exc, Exception):
        log.error("rpc failed with an unexpected error", extra={"method": method}, exc_info=exc)
        code, details = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
    else:
        return  # cancellation and interpreter exits pass through
    if context is not None:
        context.set_code(code)
        context.set_details(details)


async def unary(
    method: Callable[[Req, Any], Awaitable[Resp]], request: Req, context: GrpcContext | None
) -> Resp:
    """Run a unary servicer method under Serve."""
    try:
        return await method(request, cast(Any, ServeServicerContext(context)))
    except BaseException as exc:
        _record_failure(exc, context, getattr(method, "__name__", "?"))
        raise


async def stream(
    method: Callable[[Req, Any], AsyncIterator[Resp]], request: Req, context: GrpcContext | None
) -> AsyncIterator[Resp]:
    """Run a server-streaming servicer method under Serve."""
    try:
        async for item in method(request, cast(Any, ServeServicerContext(context))):
            yield item
    except BaseException as exc:
        _record_failure(exc, context, getattr(method, "__name__", "?"))
        raise


class HostedService:
    """Base of the Serve deployment classes: owns one `CoreService` (as its
    server.py builds it) through its lifecycle and answers with its servicer.
    Serve awaits `__init__` before routing requests, calls `check_health`
    periodically and `__del__` on shutdown."""

    _service: CoreService[Any, Any] | None = None

    async def _host(self, service: CoreService[Any, ServicerT]) -> ServicerT:
        """Start `service`; the servicer whose methods answer the RPCs."""
        self._service = service
        await service.start()
        return service.servicer()

    async def check_health(self) -> None:
        if self._service is None or not await self._service.ready():
            raise RuntimeError(f"{self.__class__.__name__} is not ready")

    async def __del__(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            await service.stop()

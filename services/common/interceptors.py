"""The one server interceptor: it authenticates each RPC's caller (an
identity.Authenticator) and runs the handler as that identity, maps domain errors
to gRPC status codes and records per-RPC metrics (duration by status, in-flight
count). Health and reflection are not wrapped: they stay open to every caller
that the transport lets in.

Unknown exceptions become INTERNAL with a generic message; their details go to the
log, correlated by trace id, never to the client. RESOURCE_EXHAUSTED with a known
retry delay carries it as a google.rpc.RetryInfo detail (the rich status in the
`grpc-status-details-bin` trailer, read with grpc_status.rpc_status).

With an authenticator (identity.Authenticator), every RPC of the service's own APIs
is authenticated before its handler runs, and the handler runs as that identity
(identity.current()); its errors map like any other.

A request that does not parse (invalid UTF-8 in a string, a corrupt wire format) is
INVALID_ARGUMENT: grpc would otherwise answer UNKNOWN with the parser's exception as
the message."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import errors, identity, semconv
from services.common.telemetry import meter

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.AtalayaError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

INTERNAL_MESSAGE = "internal error"


class _Unparsed:
    """What the handler gets instead of a request whose bytes did not parse."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _parsing(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning _Unparsed instead of raising: grpc runs it before
    any interceptor code, so the handler below turns it into INVALID_ARGUMENT."""
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)  # Message.FromString
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    type_name = str(getattr(descriptor, "full_name", "the request type"))

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # client bytes only: DecodeError, and whatever a parser raises
            return _Unparsed(type_name)

    return parse


def _check_parsed(request: Any) -> None:
    if isinstance(request, _Unparsed):
        raise errors.InvalidArgument(f"the request is not a valid {request.type_name}")


def status_for(exc: errors.AtalayaError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every unary and server-streaming handler of the service's own APIs.
    Without an authenticator every RPC runs as identity.ANONYMOUS."""

    def __init__(
        self,
        *,
        is_accepting: Callable[[], bool] = lambda: True,
        authenticator: identity.Authenticator | None = None,
    ) -> None:
        self._is_accepting = is_accepting
        self._authenticator = authenticator
        m = meter()
        self._duration = m.create_histogram(
            semconv.METRIC_RPC_SERVER_DURATION, unit="ms", description="RPC duration"
        )
        self._active = m.create_up_down_counter(
            semconv.METRIC_RPC_SERVER_ACTIVE, description="RPCs in flight"
        )

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=_parsing(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=_parsing(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(
        self, behavior: Callable[[Any, Any], Awaitable[Any]], method: str
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = self._begin(method)
            code = grpc.StatusCode.OK
            try:
                caller = await self._authenticate(method, context)
                await self._check_accepting(context)
                with identity.acting_as(caller):
                    _check_parsed(request)
                    return await behavior(request, context)
            except BaseException as exc:
                code, message = self._classify(exc, context, method)
                if message is not None:
                    await _abort(context, code, message, exc)
                raise
            finally:
                self._end(method, started, code)

        return handle

    def _wrap_stream(
        self, behavior: Callable[[Any, Any], AsyncIterator[Any]], method: str
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = self._begin(method)
            code = grpc.StatusCode.OK
            try:
                caller = await self._authenticate(method, context)
                await self._check_accepting(context)
                with identity.acting_as(caller):
                    _check_parsed(request)
                    async for item in behavior(request, context):
                        yield item
            except BaseException as exc:
                code, message = self._classify(exc, context, method)
                if message is not None:
                    await _abort(context, code, message, exc)
                raise
            finally:
                self._end(method, started, code)

        return handle

    async def _authenticate(
        self, method: str, context: grpc.aio.ServicerContext
    ) -> identity.Identity:
        """The caller's identity; Unauthenticated / PermissionDenied end the RPC
        before the handler sees the request."""
        if self._authenticator is None:
            return identity.ANONYMOUS
        return await self._authenticator.authenticate(
            method, context.invocation_metadata() or (), context.auth_context()
        )

    async def _check_accepting(self, context: grpc.aio.ServicerContext) -> None:
        if not self._is_accepting():
            raise errors.Unavailable("service is starting")

    def _classify(
        self, exc: BaseException, context: grpc.aio.ServicerContext, method: str
    ) -> tuple[grpc.StatusCode, str | None]:
        """The status for `exc`, and the message to abort with (None: re-raise as is)."""
        if isinstance(exc, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED, None
        if isinstance(exc, grpc.aio.AbortError):
            code = context.code()
            return (code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN), None
        if isinstance(exc, errors.AtalayaError):
            code = status_for(exc)
            log.info("rpc failed", extra={"method": method, "code": code.name, "reason": str(exc)})
            return code, str(exc)
        if isinstance(exc, Exception):
            log.error("rpc failed with an unexpected error", extra={"method": method}, exc_info=exc)
            return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        return grpc.StatusCode.UNKNOWN, None  # KeyboardInterrupt, SystemExit: pass through

    def _begin(self, method: str) -> float:
        self._active.add(1, {semconv.RPC_METHOD: method})
        return time.perf_counter()

    def _end(self, method: str, started: float, code: grpc.StatusCode) -> None:
        self._active.add(-1, {semconv.RPC_METHOD: method})
        self._duration.record(
            (time.perf_counter() - started) * 1000.0,
            {semconv.RPC_METHOD: method, semconv.RPC_GRPC_STATUS_CODE: code.value[0]},
        )


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, exc: BaseException
) -> None:
    """Abort with `code` and `message`; a retry delay that the error knows goes with
    it as a RetryInfo detail."""
    retry_after_s = getattr(exc, "retry_after_s", None)
    if code is not grpc.StatusCode.RESOURCE_EXHAUSTED or retry_after_s is None:
        await context.abort(code, message)
        return
    status = rpc_status.to_status(retry_status(message, retry_after_s))
    await context.abort(status.code, status.details, status.trailing_metadata)


def retry_after_s(err: grpc.aio.AioRpcError) -> float | None:
    """The delay a failed call's RetryInfo detail asks for (None: it has none); what a
    client reads back from retry_status."""
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


def retry_status(message: str, retry_after_s: float) -> status_pb2.Status:
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo detail of `retry_after_s`."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, round(retry_after_s * 1e9)))
    detail = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    detail.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return detail

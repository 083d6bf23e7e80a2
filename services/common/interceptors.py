"""The one server interceptor that maps domain errors to gRPC status codes and
records per-RPC metrics (duration by status, in-flight count).

Unknown exceptions become INTERNAL with a generic message; their details go to the
log, correlated by trace id, never to the client. A request that does not parse
(invalid UTF-8 in a string, a corrupt wire format) is INVALID_ARGUMENT: grpc would
otherwise answer UNKNOWN with the parser's exception as the message."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common import errors, semconv
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
    """Wraps every unary and server-streaming handler of the service's own APIs."""

    def __init__(self, *, is_accepting: Callable[[], bool] = lambda: True) -> None:
        self._is_accepting = is_accepting
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
                await self._check_accepting(context)
                _check_parsed(request)
                return await behavior(request, context)
            except BaseException as exc:
                code, message = self._classify(exc, context, method)
                if message is not None:
                    await context.abort(code, message)
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
                await self._check_accepting(context)
                _check_parsed(request)
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                code, message = self._classify(exc, context, method)
                if message is not None:
                    await context.abort(code, message)
                raise
            finally:
                self._end(method, started, code)

        return handle

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

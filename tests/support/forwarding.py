"""Client interceptors that forward an identity on every call
(identity.Identity.metadata()), as the gateway does for the end user it serves;
a server on plaintext loopback believes them (services.common.peer_auth)."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.identity import Identity


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

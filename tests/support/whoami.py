"""A service that answers who is calling: identity.current() as JSON, for tests of
the runner's authentication, TLS and the clients' credentials. Raw bytes on the
wire (no proto); the metadata the call carried comes back too."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from cryptography import x509

from services.common import identity
from services.common.server import Service

SERVICE = "atalaya.probe.v1.WhoAmIService"
WHO = f"/{SERVICE}/Who"
WHO_STREAM = f"/{SERVICE}/WhoStream"


def _peer_serial(context: grpc.aio.ServicerContext) -> str:
    """The serial of the client certificate the peer showed ("" without one)."""
    pem = context.auth_context().get("x509_pem_cert")
    return format(x509.load_pem_x509_certificate(pem[0]).serial_number, "x") if pem else ""


def _answer(context: grpc.aio.ServicerContext) -> bytes:
    who = identity.current()
    metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    return json.dumps(
        {
            "tenant": who.tenant,
            "user": who.user,
            "scopes": sorted(who.scopes),
            "method": who.method,
            "service": who.service,
            "metadata": metadata,
            "peer_serial": _peer_serial(context),
        }
    ).encode()


class WhoAmIService(Service):
    """Counts the calls its handlers ran (an authenticator that refuses stops them)."""

    grpc_service_names = (SERVICE,)

    def __init__(self, name: str = "probe") -> None:
        self.name = name
        self.handled = 0

    def add_to_server(self, server: grpc.aio.Server) -> None:
        async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.handled += 1
            return _answer(context)

        async def who_stream(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            self.handled += 1
            yield _answer(context)
            yield _answer(context)

        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Who": grpc.unary_unary_rpc_method_handler(who),
                        "WhoStream": grpc.unary_stream_rpc_method_handler(who_stream),
                    },
                ),
            )
        )


async def who(channel: grpc.aio.Channel, metadata: Any = None, timeout: float = 10) -> Any:
    """The answer of Who over `channel`."""
    raw = await channel.unary_unary(WHO)(b"", metadata=metadata, timeout=timeout)
    return json.loads(raw)

"""The grpc.health.v1 check of a running service, as its callers see it: the
overall status (empty service name) by its enum name, or UNREACHABLE with the
gRPC code that said why. One blocking implementation; asyncio callers await
`check_async`, which runs it on a worker thread. A server with TLS is checked over
TLS (`tls`: the caller's channel settings, with a client certificate for mTLS)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import tls as transport
from services.common.settings import ChannelTLSSettings

_STATUS = health_pb2.HealthCheckResponse.ServingStatus
SERVING: str = _STATUS.Name(health_pb2.HealthCheckResponse.SERVING)
NOT_SERVING: str = _STATUS.Name(health_pb2.HealthCheckResponse.NOT_SERVING)
UNREACHABLE = "UNREACHABLE"


@dataclass(frozen=True)
class Health:
    status: str  # SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN or UNREACHABLE
    detail: str = ""  # UNREACHABLE: the gRPC status code's name

    @property
    def serving(self) -> bool:
        return self.status == SERVING


def _channel(target: str, tls: ChannelTLSSettings | None) -> grpc.Channel:
    if tls is None or not tls.enabled:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(
        target, transport.channel_credentials(tls), options=transport.channel_options(tls)
    )


def check(target: str, timeout_s: float = 1.0, tls: ChannelTLSSettings | None = None) -> Health:
    """One overall health check of the server at `target` (host:port)."""
    try:
        channel = _channel(target, tls)
    except transport.TLSFileError:
        return Health(UNREACHABLE, "TLS_FILES")  # not written yet, or unreadable
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return Health(UNREACHABLE, exc.code().name)
    return Health(_STATUS.Name(response.status))


async def check_async(
    target: str, timeout_s: float = 1.0, tls: ChannelTLSSettings | None = None
) -> Health:
    """`check` for asyncio callers."""
    return await asyncio.to_thread(check, target, timeout_s, tls)


def health_status(
    target: str, timeout_s: float = 1.0, tls: ChannelTLSSettings | None = None
) -> str:
    """Just the status name of `check`."""
    return check(target, timeout_s, tls).status

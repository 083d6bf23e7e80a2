"""`atalaya status`: the grpc.health.v1 status of every service of the local stack."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.stack.config import load_config

# The local stack's services and ports, from its one config file (services/stack/
# stack.toml), in port order; --port-offset moves them all by the same amount.
_STACK = load_config(environ={})
SERVICES: tuple[tuple[str, int], ...] = tuple(
    sorted(_STACK.ports().items(), key=lambda item: item[1])
)
DEFAULT_HOST = _STACK.host

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNREACHABLE = "UNREACHABLE"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    target: str
    status: str  # SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN or UNREACHABLE
    detail: str = ""


def service_targets(
    host: str = DEFAULT_HOST, port_offset: int = 0, overrides: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """(name, host:port) of every service; `overrides` replaces targets by name."""
    overrides = overrides or {}
    return [(name, overrides.get(name, f"{host}:{port + port_offset}")) for name, port in SERVICES]


async def check(name: str, target: str, timeout_s: float) -> ServiceStatus:
    """One overall health check (empty service name)."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return ServiceStatus(name, target, UNREACHABLE, exc.code().name)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return ServiceStatus(name, target, status)


async def check_all(targets: Sequence[tuple[str, str]], timeout_s: float) -> list[ServiceStatus]:
    """Every check at once, in the order given."""
    return list(await asyncio.gather(*(check(n, t, timeout_s) for n, t in targets)))


def format_statuses(statuses: Sequence[ServiceStatus]) -> str:
    width = max((len(s.name) for s in statuses), default=0)
    target_width = max((len(s.target) for s in statuses), default=0)
    lines = []
    for s in statuses:
        line = f"{s.name:<{width}}  {s.target:<{target_width}}  {s.status}"
        if s.detail and s.status != SERVING:
            line += f" ({s.detail})"
        lines.append(line)
    return "\n".join(lines)

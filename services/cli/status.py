"""`atalaya status`: the grpc.health.v1 status of every service of the local stack."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common import health, topology
from services.common.settings import ChannelTLSSettings

# The services and their default ports (services/common/topology.py), in port
# order; --port-offset moves them all by the same amount.
SERVICES: tuple[tuple[str, int], ...] = tuple(
    sorted(topology.ports().items(), key=lambda item: item[1])
)
DEFAULT_HOST = topology.DEFAULT_HOST
SERVING = health.SERVING


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


async def check(
    name: str, target: str, timeout_s: float, tls: ChannelTLSSettings | None = None
) -> ServiceStatus:
    """One overall health check (empty service name), over `tls` when given."""
    result = await health.check_async(target, timeout_s, tls)
    return ServiceStatus(name, target, result.status, result.detail)


async def check_all(
    targets: Sequence[tuple[str, str]], timeout_s: float, tls: ChannelTLSSettings | None = None
) -> list[ServiceStatus]:
    """Every check at once, in the order given."""
    return list(await asyncio.gather(*(check(n, t, timeout_s, tls) for n, t in targets)))


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

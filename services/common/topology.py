"""Atalaya's services and who calls whom: the one description of the topology.

Each service has a name, a default port, its gRPC service and the services it
calls (the edges of the chart's `callGraph`, without the database). Everything
else is derived from these for any host and port assignment: the targets
(host:port), the listen settings (ATALAYA_<SVC>_HOST, _PORT) and each caller's
upstream settings (ATALAYA_<CALLER>_<CALLEE>__TARGET). The services' settings take
their defaults from here; the local stack, the tests and the load test derive
their ports and service-to-service environment from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Where the services listen and find each other locally.
DEFAULT_HOST = "127.0.0.1"
#: OTLP/gRPC: the local trace receiver (and the in-cluster collector).
OTLP_PORT = 4317


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    grpc_service: str
    calls: tuple[str, ...] = ()

    @property
    def env_prefix(self) -> str:
        """ATALAYA_<NAME>_: the prefix of this service's settings."""
        return f"ATALAYA_{self.name.upper()}_"

    @property
    def module(self) -> str:
        """What `python -m` runs."""
        return f"services.{self.name}"


#: In start order: every service comes after the services it calls.
SERVICES: tuple[Service, ...] = (
    Service("generation", 50053, "atalaya.generation.v1.GenerationService"),
    Service("embedding", 50054, "atalaya.embedding.v1.EmbeddingService"),
    Service("memory", 50055, "atalaya.memory.v1.MemoryService", calls=("embedding",)),
    Service("guardrail", 50052, "atalaya.guardrail.v1.GuardrailService", calls=("embedding",)),
    Service(
        "gateway",
        50051,
        "atalaya.gateway.v1.GatewayService",
        calls=("guardrail", "memory", "generation"),
    ),
)
NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
_BY_NAME = {s.name: s for s in SERVICES}


def service(name: str) -> Service:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r} (known: {', '.join(NAMES)})") from None


def port(name: str) -> int:
    """The service's default port."""
    return service(name).port


def target(name: str, host: str = DEFAULT_HOST, port_offset: int = 0) -> str:
    """host:port of the service at its default port (plus `port_offset`)."""
    return f"{host}:{port(name) + port_offset}"


def call_graph() -> dict[str, tuple[str, ...]]:
    """Caller -> the services it calls (the shape of the chart's `callGraph`)."""
    return {s.name: s.calls for s in SERVICES}


def callers_of(name: str) -> tuple[str, ...]:
    """The services that call `name`, in start order: the allowlist of callers that
    each service enforces under mTLS (services.common.peer_auth) and the chart's
    NetworkPolicies allow. Callers from outside the topology (an operator's client,
    the clients of the gateway) are settings of the service, not edges here."""
    service(name)  # unknown names are an error, not an empty allowlist
    return tuple(s.name for s in SERVICES if name in s.calls)


def ports(port_offset: int = 0) -> dict[str, int]:
    """Every service's default port, plus `port_offset`."""
    return {s.name: s.port + port_offset for s in SERVICES}


def targets(assigned: Mapping[str, int], host: str = DEFAULT_HOST) -> dict[str, str]:
    """host:port of every service with a port in `assigned`."""
    return {name: f"{host}:{p}" for name, p in assigned.items() if name in _BY_NAME}


def listen_env(name: str, host: str, port: int) -> dict[str, str]:
    """The settings that make service `name` listen on host:port."""
    prefix = service(name).env_prefix
    return {f"{prefix}HOST": host, f"{prefix}PORT": str(port)}


def upstream_env(name: str, upstreams: Mapping[str, str]) -> dict[str, str]:
    """The settings that point service `name` at the services it calls, each at its
    target in `upstreams` (name -> host:port): ATALAYA_<NAME>_<CALLEE>__TARGET."""
    caller = service(name)
    return {
        f"{caller.env_prefix}{callee.upper()}__TARGET": upstreams[callee] for callee in caller.calls
    }

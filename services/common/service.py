"""The service object every runtime hosts.

A service is a core (the logic), a servicer (proto <-> domain over that core) and
the `CoreService` its server.py builds around them. Every runtime hosts the same
object through the same interface: the grpc.aio runner (services.common.server)
registers its servicer, Ray Serve (services.ray) answers each RPC with the
servicer's method, KServe (services.kserve) calls the core; all of them start it,
follow its readiness and stop it (`Service.start`, `ready`, `stop`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

import grpc

from services.common.server import Service

CoreT = TypeVar("CoreT")
ServicerT = TypeVar("ServicerT")


class Lifecycle(Protocol):
    """A core that owns resources of its own (a model, an engine, detectors)."""

    async def start(self) -> None: ...

    async def ready(self) -> bool: ...

    async def stop(self) -> None: ...


LifecycleT = TypeVar("LifecycleT", bound=Lifecycle)


class CoreService(Service, Generic[CoreT, ServicerT]):
    """A Service around one core, served by one servicer class.

    `core` is what the servicer (and a KServe model) calls; `servicer()` makes the
    servicer over it; `register` is the generated add_*Servicer_to_server. The
    lifecycle is the Service's (no-ops, always ready) unless a subclass says more."""

    def __init__(
        self,
        core: CoreT,
        servicer: Callable[[CoreT], ServicerT],
        register: Callable[[ServicerT, grpc.aio.Server], None],
    ) -> None:
        self.core = core
        self._servicer = servicer
        self._register = register

    def servicer(self) -> ServicerT:
        """A servicer over `core`."""
        return self._servicer(self.core)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        self._register(self.servicer(), server)


class CoreLifecycleService(CoreService[LifecycleT, ServicerT]):
    """A CoreService whose lifecycle is its core's: start, ready and stop go to it."""

    def __init__(
        self,
        name: str,
        grpc_service_names: Sequence[str],
        core: LifecycleT,
        servicer: Callable[[LifecycleT], ServicerT],
        register: Callable[[ServicerT, grpc.aio.Server], None],
    ) -> None:
        super().__init__(core, servicer, register)
        self.name = name
        self.grpc_service_names = grpc_service_names

    async def start(self) -> None:
        await self.core.start()

    async def ready(self) -> bool:
        return await self.core.ready()

    async def stop(self) -> None:
        await self.core.stop()

"""The grpc.aio server runner every service uses.

A service provides a `Service` (its servicers, start/ready/stop); the runner adds
grpc.health.v1, reflection, message size limits, keepalive, max connection age,
OpenTelemetry, transport security (settings.tls: plaintext, TLS or mTLS,
certificates reloaded from disk when they change) and the one interceptor that
authenticates each caller and maps errors, and drains in-flight RPCs on SIGTERM
within the grace period.

Health answers two questions under different service names, on the service port
and on the plaintext health port alike:

- readiness: "" (overall) and each of the service's gRPC service names are SERVING
  only while the service says it is ready (`Service.ready`): NOT_SERVING while it
  starts (a model loads, a database is not reachable yet) and whenever a dependency
  it needs is away. Traffic follows it (a readiness probe, the local stack).
- liveness: the name LIVENESS ("liveness") is SERVING from the moment the server
  serves until shutdown begins, whatever the dependencies say; it fails only when
  the process cannot answer at all (its event loop is stuck or gone). A liveness
  probe follows it, so an outage of a dependency never restarts a healthy process.

Drain: on SIGTERM (or SIGINT) every health name turns NOT_SERVING, the server stops
accepting new RPCs, and RPCs in flight, streams included, run on for up to
settings.grace_period_s; those still running then are cancelled, and the service
releases its resources (`Service.stop`). The grace period should be the pod's
termination grace minus its preStop delay and a few seconds for the release.

Authentication: the runner's `authenticator` (an identity.Authenticator) proves each
RPC's caller. Its default, `default_authenticator`, is the services' peer
authenticator (services.common.peer_auth: the mTLS peer and the call graph's
allowlist, or ANONYMOUS with mTLS off). A service with its own (the gateway's edge
authentication of tokens and API keys) passes it:

    run_service("gateway", GatewaySettings, build, authenticator=edge_authenticator)

where `edge_authenticator(settings)` returns the Authenticator; tests pass one to
`ServerRunner(service, settings, authenticator=...)`."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import tls
from services.common.identity import Authenticator
from services.common.interceptors import ServiceInterceptor
from services.common.logging import configure_logging
from services.common.peer_auth import PeerAuthenticator
from services.common.settings import ServiceSettings, load_settings
from services.common.telemetry import server_interceptors, setup_telemetry

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: The health service name of liveness (see the module doc); "" is readiness.
LIVENESS = "liveness"


class Service(abc.ABC):
    """What a service hands the runner. Dependencies arrive through its constructor."""

    #: Short name ("embedding"), used for logs and telemetry.
    name: str
    #: Fully qualified gRPC service names, for health and reflection.
    grpc_service_names: Sequence[str]

    @abc.abstractmethod
    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register the servicers."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models, open pools. Runs after the port is bound (health says
        NOT_SERVING meanwhile); blocking work must go to a thread."""

    async def ready(self) -> bool:
        """Checked every readiness_interval_s once started; False -> NOT_SERVING."""
        return True

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release resources after the server has drained."""


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        ("grpc.so_reuseport", 0),
    ]


def default_authenticator(name: str, settings: ServiceSettings) -> Authenticator:
    """The authenticator of service `name` unless it brings its own: its mTLS peer
    must be allowed by topology.callers_of(name) and settings.peers."""
    return PeerAuthenticator.from_settings(name, settings)


class ServerRunner:
    """Owns one grpc.aio server around one Service. Use `serve()` for a process;
    tests use `running()` to get an in-process server on a free port."""

    def __init__(
        self,
        service: Service,
        settings: ServiceSettings,
        *,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.port = 0
        self.health_port = 0
        self.authenticator = authenticator or default_authenticator(service.name, settings)
        #: The server certificate's reloader (None in plaintext).
        self.certificates: tls.CertificateReloader | None = None
        self._started = False
        self._health = health.aio.HealthServicer()
        self._server = grpc.aio.server(
            interceptors=[
                *server_interceptors(),
                ServiceInterceptor(
                    is_accepting=lambda: self._started, authenticator=self.authenticator
                ),
            ],
            options=server_options(settings),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        self._health_server: grpc.aio.Server | None = None
        self._readiness_task: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    async def start(self) -> int:
        """Bind, answer health (live, not ready), start the service, then report
        ready (SERVING) when the service says so."""
        service = self.service
        service.add_to_server(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*service.grpc_service_names, health.SERVICE_NAME, reflection.SERVICE_NAME],
            self._server,
        )
        address = f"{self.settings.host}:{self.settings.port}"
        if self.settings.tls.mode == "off":
            self.port = self._server.add_insecure_port(address)
        else:
            credentials, self.certificates = tls.server_credentials(self.settings.tls)
            self.port = self._server.add_secure_port(address, credentials)
        if self.port == 0:
            raise RuntimeError(f"cannot bind {address}")
        await self._server.start()
        await self._health.set(LIVENESS, SERVING)
        await self._set_serving(False)
        log.info(
            "listening",
            extra={"port": self.port, "host": self.settings.host, "tls": self.settings.tls.mode},
        )
        try:
            await self._start_health_server()
            await service.start()
        except BaseException:
            await self._stop_health_server()
            await self._server.stop(0)
            raise
        self._started = True
        await self._check_ready()
        self._readiness_task = asyncio.create_task(self._readiness_loop())
        log.info("started", extra={"port": self.port})
        return self.port

    async def _start_health_server(self) -> None:
        """grpc.health.v1 alone, in plaintext, on settings.health_port (when set)."""
        if self.settings.health_port is None:
            return
        server = grpc.aio.server(options=server_options(self.settings))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{self.settings.host}:{self.settings.health_port}"
        self.health_port = server.add_insecure_port(address)
        if self.health_port == 0:
            raise RuntimeError(f"cannot bind {address}")
        await server.start()
        self._health_server = server
        log.info("health listening", extra={"port": self.health_port})

    async def _stop_health_server(self, grace: float | None = None) -> None:
        if self._health_server is not None:
            await self._health_server.stop(grace)
            self._health_server = None

    async def _set_serving(self, serving: bool) -> None:
        """Readiness: "" and the service's names (never LIVENESS)."""
        if serving == self._serving:
            return
        self._serving = serving
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service.grpc_service_names):
            await self._health.set(name, status)
        log.info("health", extra={"status": "SERVING" if serving else "NOT_SERVING"})

    async def _check_ready(self) -> None:
        try:
            ok = await self.service.ready()
        except Exception:
            log.warning("readiness check failed", exc_info=True)
            ok = False
        await self._set_serving(ok)

    async def _readiness_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.readiness_interval_s)
            await self._check_ready()

    async def stop(self, grace: float | None = None) -> None:
        """Every health name NOT_SERVING (liveness too), stop accepting, let in-flight
        RPCs (streams included) finish within the grace period (default:
        settings.grace_period_s), cancel the rest, release."""
        if self._readiness_task is not None:
            self._readiness_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness_task
        await self._health.enter_graceful_shutdown()
        grace = self.settings.grace_period_s if grace is None else grace
        log.info("draining", extra={"grace_period_s": grace})
        await self._server.stop(grace)
        await self._stop_health_server(0)
        await self.service.stop()
        log.info("stopped")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ServerRunner]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop(grace=1.0)


async def _serve(
    build: Callable[[], Service],
    settings: ServiceSettings,
    authenticator: Authenticator | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain for settings.grace_period_s. A signal
    during the start cancels it (a model load, the memory service's wait for its
    database) and ends the process without a drain."""
    runner = ServerRunner(build(), settings, authenticator=authenticator)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.create_task(runner.start())
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()  # a failed start ends the process with its error
            await stopping
        else:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        await runner.stop()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run_service(
    name: str,
    settings_cls: type[S],
    build: Callable[[S], Service],
    authenticator: Callable[[S], Authenticator | None] | None = None,
) -> None:
    """The whole life of a service process: read settings, set up logs and
    telemetry, build the service, serve until SIGTERM/SIGINT, drain, flush.
    `authenticator(settings)`, when it gives one, replaces the default
    (default_authenticator)."""
    settings = load_settings(settings_cls)
    configure_logging(name, settings.log_level)
    telemetry = setup_telemetry(name)
    try:
        auth = authenticator(settings) if authenticator is not None else None
        asyncio.run(_serve(lambda: build(settings), settings, auth))
    except Exception:
        log.critical("service failed", exc_info=True)
        raise SystemExit(1) from None
    finally:
        telemetry.shutdown()

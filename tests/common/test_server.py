"""The runner (services.common.server): TLS from the settings, the plaintext health
port for probes that speak no TLS, health checks over TLS (services.common.health)
as the stack and the CLI make them, liveness apart from readiness, and the drain
on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import health
from services.common.process import free_port
from services.common.server import LIVENESS, ServerRunner, Service, _serve
from services.common.settings import ChannelTLSSettings, ServiceSettings
from tests.support.certs import TestCA
from tests.support.polling import async_wait_until
from tests.support.whoami import WHO, WhoAmIService

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "atalaya.probe.v1.DrainService"
STREAM = f"/{SERVICE}/Stream"


class DrainService(Service):
    """A service whose start, readiness and one stream the test holds: Stream sends
    "one", waits for `release`, then sends "two". `events` records what happened."""

    name = "probe"
    grpc_service_names = (SERVICE,)

    def __init__(self) -> None:
        self.is_ready = True
        self.start_gate = asyncio.Event()
        self.start_gate.set()
        self.release = asyncio.Event()
        self.events: list[str] = []

    def add_to_server(self, server: grpc.aio.Server) -> None:
        async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            yield b"one"
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.events.append("stream cancelled")
                raise
            yield b"two"
            self.events.append("stream done")

        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
                ),
            )
        )

    async def start(self) -> None:
        await self.start_gate.wait()

    async def ready(self) -> bool:
        return self.is_ready

    async def stop(self) -> None:
        self.events.append("service stopped")


async def status(target: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(response.status)


async def statuses(target: str) -> tuple[int, int, int]:
    """(liveness, overall readiness, the service's readiness) at `target`."""
    return (await status(target, LIVENESS), await status(target), await status(target, SERVICE))


async def test_mtls_service_answers_health_in_plaintext_on_its_health_port(
    tmp_path: Path,
) -> None:
    ca = TestCA(tmp_path)
    leaf = ca.issue("memory", ["127.0.0.1", "spiffe://atalaya.local/memory"])
    settings = ServiceSettings(port=0, health_port=0, grace_period_s=0.5, tls=ca.server(leaf))
    async with ServerRunner(WhoAmIService("memory"), settings).running() as runner:
        assert runner.health_port not in (0, runner.port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.health_port}") as channel:
            status = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await channel.unary_unary(WHO)(b"", timeout=5)  # health and nothing else
        main = f"127.0.0.1:{runner.port}"
        plaintext = await health.check_async(main, 5)
        secure = await health.check_async(main, 5, ca.client(leaf))
        no_files = await health.check_async(
            main, 5, ChannelTLSSettings(enabled=True, ca_file=tmp_path / "missing.pem")
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert plaintext.status == health.UNREACHABLE
    assert secure.serving
    assert (no_files.status, no_files.detail) == (health.UNREACHABLE, "TLS_FILES")


async def test_a_service_without_its_certificate_does_not_start(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    leaf = ca.issue("memory", ["127.0.0.1"])
    leaf.cert_file.unlink()
    settings = ServiceSettings(port=0, tls=ca.server(leaf))
    runner = ServerRunner(WhoAmIService("memory"), settings)
    with pytest.raises(ValueError, match="cannot read the certificate"):
        await runner.start()


async def test_liveness_is_serving_while_readiness_is_not_on_both_ports() -> None:
    service = DrainService()
    service.is_ready = False  # a dependency is away
    settings = ServiceSettings(port=0, health_port=0, readiness_interval_s=0.05)
    async with ServerRunner(service, settings).running() as runner:
        main = await statuses(f"127.0.0.1:{runner.port}")
        probes = await statuses(f"127.0.0.1:{runner.health_port}")
        service.is_ready = True

        async def ready() -> bool:
            return await status(f"127.0.0.1:{runner.health_port}") == SERVING

        await async_wait_until(ready)
        back = await statuses(f"127.0.0.1:{runner.health_port}")
    assert main == probes == (SERVING, NOT_SERVING, NOT_SERVING)
    assert back == (SERVING, SERVING, SERVING)


async def test_liveness_is_serving_while_the_service_starts() -> None:
    service = DrainService()
    service.start_gate.clear()  # a model that takes its time to load
    runner = ServerRunner(service, ServiceSettings(port=0, health_port=0))
    starting = asyncio.create_task(runner.start())
    try:

        async def bound() -> bool:
            return runner.health_port != 0

        await async_wait_until(bound)
        during = await statuses(f"127.0.0.1:{runner.health_port}")
        assert not starting.done()
        service.start_gate.set()
        await starting
        after = await statuses(f"127.0.0.1:{runner.health_port}")
    finally:
        service.start_gate.set()
        await starting
        await runner.stop(grace=0.5)
    assert during == (SERVING, NOT_SERVING, NOT_SERVING)
    assert after == (SERVING, SERVING, SERVING)


@pytest.fixture
def sigterm_ports() -> tuple[int, int]:
    """(service port, health port) for a server that `_serve` builds itself."""
    return free_port(), free_port()


async def test_sigterm_drains_a_stream_in_flight_then_stops(
    sigterm_ports: tuple[int, int],
) -> None:
    port, health_port = sigterm_ports
    service = DrainService()
    settings = ServiceSettings(port=port, health_port=health_port, grace_period_s=60)
    serving = asyncio.create_task(_serve(lambda: service, settings))
    probes = f"127.0.0.1:{health_port}"

    async def ready() -> bool:
        try:
            return await status(probes) == SERVING
        except grpc.aio.AioRpcError:
            return False

    await async_wait_until(ready)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(STREAM)(b"", timeout=60)
        received = [await call.read()]
        os.kill(os.getpid(), signal.SIGTERM)

        async def draining() -> bool:
            return await status(probes, LIVENESS) == NOT_SERVING

        await async_wait_until(draining)  # shutdown began; the stream is still open
        drained = await statuses(probes)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_stream(STREAM)(b"", timeout=5).read()
        service.release.set()
        received.append(await call.read())
        code = await call.code()
    await serving
    assert received == [b"one", b"two"]
    assert code == grpc.StatusCode.OK
    assert drained == (NOT_SERVING, NOT_SERVING, NOT_SERVING)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert service.events == ["stream done", "service stopped"]


async def test_sigterm_cancels_a_stream_that_outlives_the_grace_period(
    sigterm_ports: tuple[int, int],
) -> None:
    port, health_port = sigterm_ports
    service = DrainService()
    settings = ServiceSettings(port=port, health_port=health_port, grace_period_s=0.2)
    serving = asyncio.create_task(_serve(lambda: service, settings))

    async def ready() -> bool:
        try:
            return await status(f"127.0.0.1:{health_port}") == SERVING
        except grpc.aio.AioRpcError:
            return False

    await async_wait_until(ready)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_stream(STREAM)(b"", timeout=60)
        assert await call.read() == b"one"
        os.kill(os.getpid(), signal.SIGTERM)
        await serving  # never released: the grace period ends it
        code = await call.code()
    assert code != grpc.StatusCode.OK
    assert service.events == ["stream cancelled", "service stopped"]

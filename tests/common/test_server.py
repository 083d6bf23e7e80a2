"""The runner's transport (services.common.server): TLS from the settings, the
plaintext health port for probes that speak no TLS, and health checks over TLS
(services.common.health) as the stack and the CLI make them."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import health
from services.common.server import ServerRunner
from services.common.settings import ChannelTLSSettings, ServiceSettings
from tests.support.certs import TestCA
from tests.support.whoami import WHO, WhoAmIService


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

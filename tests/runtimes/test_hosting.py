"""The Serve hosting layer without a cluster: a deployment hosts the CoreService its
server.py builds (starts it, answers with its servicer, reports its readiness, stops
it), servicer errors become the status the proxy sends (domain errors keep theirs,
anything else is a generic INTERNAL), and a handle call's failures become the domain
errors the cores expect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from services.common import errors
from services.common.service import CoreLifecycleService
from services.ray.hosting import HostedService, ServeServicerContext, stream, unary
from services.ray.upstream import call, domain_error


class FakeCore:
    def __init__(self) -> None:
        self.started = self.stopped = False
        self.healthy = True

    async def start(self) -> None:
        self.started = True

    async def ready(self) -> bool:
        return self.started and self.healthy

    async def stop(self) -> None:
        self.stopped = True


class FakeServicer:
    def __init__(self, core: FakeCore) -> None:
        self.core = core


class FakeDeployment(HostedService):
    async def host(self, core: FakeCore) -> None:
        service = CoreLifecycleService(
            "fake", ("atalaya.fake.v1.FakeService",), core, FakeServicer, lambda s, server: None
        )
        self.servicer = await self._host(service)


async def test_a_deployment_hosts_its_service_through_its_lifecycle() -> None:
    core, deployment = FakeCore(), FakeDeployment()
    with pytest.raises(RuntimeError, match="FakeDeployment is not ready"):
        await deployment.check_health()
    await deployment.host(core)
    assert core.started and deployment.servicer.core is core
    await deployment.check_health()
    core.healthy = False
    with pytest.raises(RuntimeError, match="FakeDeployment is not ready"):
        await deployment.check_health()
    await deployment.__del__()
    assert core.stopped


class FakeContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("application", "embedding")]


async def test_a_domain_error_keeps_its_status_and_message() -> None:
    async def method(request: str, context: Any) -> str:
        raise errors.InvalidArgument("texts is empty")

    ctx = FakeContext()
    with pytest.raises(errors.InvalidArgument):
        await unary(method, "req", ctx)
    assert (ctx.code, ctx.details) == (grpc.StatusCode.INVALID_ARGUMENT, "texts is empty")


async def test_an_unexpected_error_is_internal_without_details() -> None:
    async def method(request: str, context: Any) -> AsyncIterator[str]:
        yield "first"
        raise KeyError("secret detail")

    ctx = FakeContext()
    got = []
    with pytest.raises(KeyError):
        async for item in stream(method, "req", ctx):
            got.append(item)
    assert got == ["first"]
    assert (ctx.code, ctx.details) == (grpc.StatusCode.INTERNAL, "internal error")


async def test_over_a_handle_the_error_travels_as_is() -> None:
    async def method(request: str, context: Any) -> str:
        assert context.time_remaining() is None
        assert context.invocation_metadata() == ()
        raise errors.NotFound("no such policy")

    with pytest.raises(errors.NotFound):
        await unary(method, "req", None)


def test_serve_context_exposes_the_metadata() -> None:
    assert ServeServicerContext(FakeContext()).invocation_metadata() == (
        ("application", "embedding"),
    )


def test_serve_failures_become_domain_errors() -> None:
    busy = domain_error(BackPressureError(num_queued_requests=9, max_queued_requests=8), "x")
    assert isinstance(busy, errors.ResourceExhausted)
    gone = domain_error(DeploymentUnavailableError(DeploymentID(name="X", app_name="x")), "x")
    assert isinstance(gone, errors.Unavailable) and str(gone) == "x service is unavailable"
    own = errors.InvalidArgument("bad")
    assert domain_error(own, "x") is own
    assert isinstance(domain_error(ValueError("boom"), "x"), RuntimeError)


class SlowResponse:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self) -> Any:
        return asyncio.sleep(10).__await__()


async def test_a_handle_call_past_its_deadline_is_cancelled() -> None:
    response = SlowResponse()
    with pytest.raises(errors.DeadlineExceeded):
        await call(response, "guardrail", 0.05)
    assert response.cancelled

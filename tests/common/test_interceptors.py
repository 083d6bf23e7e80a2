"""The server runner over a real channel: domain errors -> status codes, unknown
errors -> a generic INTERNAL, health during start and readiness, reflection, and
the authenticator that runs before every handler (health and reflection open)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from atalaya.common.v1 import common_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from services.client import domain_error
from services.common import errors, identity
from services.common.identity import AuthContext, Identity, Metadata
from services.common.interceptors import INTERNAL_MESSAGE, retry_after_s, status_for
from services.common.server import ServerRunner, Service
from services.common.settings import ServiceSettings
from tests.support.polling import async_wait_until
from tests.support.whoami import SERVICE as WHOAMI_SERVICE
from tests.support.whoami import WHO, WhoAmIService, who
from tests.support.whoami import WHO_STREAM as WHOAMI_STREAM

SERVICE = "atalaya.probe.v1.ProbeService"
RAISE = f"/{SERVICE}/Raise"
STREAM = f"/{SERVICE}/Stream"
WHOAMI = f"/{SERVICE}/Whoami"
WHO_STREAM = f"/{SERVICE}/WhoStream"
PARSE = f"/{SERVICE}/Parse"
PARSE_STREAM = f"/{SERVICE}/ParseStream"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class SubNotFound(errors.NotFound):
    """A service-specific refinement of a domain error."""


DOMAIN_ERRORS: dict[str, tuple[type[errors.AtalayaError], grpc.StatusCode]] = {
    "InvalidArgument": (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    "NotFound": (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    "FailedPrecondition": (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    "ResourceExhausted": (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    "Unavailable": (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    "DeadlineExceeded": (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    "Unimplemented": (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    "SubNotFound": (SubNotFound, grpc.StatusCode.NOT_FOUND),
}


async def _fail_as(name: str, context: grpc.aio.ServicerContext) -> None:
    if name == "Retry":
        raise errors.ResourceExhausted("Retry: the limit is 7", retry_after_s=1.25)
    if name == "RuntimeError":
        raise RuntimeError("secret detail")
    if name == "Abort":
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted by the handler")
    cls, _ = DOMAIN_ERRORS[name]
    raise cls(f"{name}: the limit is 7")


async def _raise(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    name = request.decode()
    if name == "ok":
        return b"ok"
    await _fail_as(name, context)
    raise AssertionError("unreachable")


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    yield b"second"
    name = request.decode()
    if name != "ok":
        await _fail_as(name, context)


def _who() -> bytes:
    who = identity.current()
    return f"{who.tenant}/{who.user}/{who.method}".encode()


async def _whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _who()


async def _who_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield _who()
    await asyncio.sleep(0)
    yield _who()


async def _parse(request: common_pb2.ChatMessage, context: grpc.aio.ServicerContext) -> bytes:
    return request.content.encode()


async def _parse_stream(
    request: common_pb2.ChatMessage, context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    yield request.content.encode()


class ProbeService(Service):
    """A Service whose start, readiness and handlers the test controls."""

    name = "probe"
    grpc_service_names = (SERVICE,)

    def __init__(self) -> None:
        self.start_gate: asyncio.Event | None = None
        self.is_ready = True
        self.ready_error: Exception | None = None
        self.stopped = False

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Raise": grpc.unary_unary_rpc_method_handler(_raise),
                        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
                        "Whoami": grpc.unary_unary_rpc_method_handler(_whoami),
                        "WhoStream": grpc.unary_stream_rpc_method_handler(_who_stream),
                        "Parse": grpc.unary_unary_rpc_method_handler(
                            _parse, request_deserializer=common_pb2.ChatMessage.FromString
                        ),
                        "ParseStream": grpc.unary_stream_rpc_method_handler(
                            _parse_stream, request_deserializer=common_pb2.ChatMessage.FromString
                        ),
                    },
                ),
            )
        )

    async def start(self) -> None:
        if self.start_gate is not None:
            await self.start_gate.wait()

    async def ready(self) -> bool:
        if self.ready_error is not None:
            raise self.ready_error
        return self.is_ready

    async def stop(self) -> None:
        self.stopped = True


def probe_settings() -> ServiceSettings:
    return ServiceSettings(port=0, readiness_interval_s=0.05, grace_period_s=1.0)


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5, wait_for_ready=True
    )
    return int(response.status)


@pytest.fixture
async def probe() -> AsyncIterator[tuple[ProbeService, grpc.aio.Channel]]:
    service = ProbeService()
    async with (
        ServerRunner(service, probe_settings()).running() as runner,
        grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel,
    ):
        yield service, channel
    assert service.stopped


@pytest.mark.parametrize("name", sorted(DOMAIN_ERRORS))
async def test_domain_error_maps_to_its_code_with_its_message(
    probe: tuple[ProbeService, grpc.aio.Channel], name: str
) -> None:
    _, channel = probe
    _, code = DOMAIN_ERRORS[name]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(RAISE)(name.encode(), timeout=5)
    assert info.value.code() == code
    assert info.value.details() == f"{name}: the limit is 7"


async def test_unknown_error_is_internal_without_its_details(
    probe: tuple[ProbeService, grpc.aio.Channel],
) -> None:
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(RAISE)(b"RuntimeError", timeout=5)
    err = info.value
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal error" == INTERNAL_MESSAGE
    assert "secret detail" not in str(err)
    assert all("secret detail" not in str(v) for _, v in err.trailing_metadata() or ())


async def test_a_handlers_own_abort_passes_through(
    probe: tuple[ProbeService, grpc.aio.Channel],
) -> None:
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(RAISE)(b"Abort", timeout=5)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "aborted by the handler"


async def test_success_passes_through(probe: tuple[ProbeService, grpc.aio.Channel]) -> None:
    _, channel = probe
    assert await channel.unary_unary(RAISE)(b"ok", timeout=5) == b"ok"
    received = [item async for item in channel.unary_stream(STREAM)(b"ok", timeout=5)]
    assert received == [b"first", b"second"]


@pytest.mark.parametrize(
    ("name", "code", "details"),
    [
        ("InvalidArgument", grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument: the limit is 7"),
        ("Unavailable", grpc.StatusCode.UNAVAILABLE, "Unavailable: the limit is 7"),
        ("RuntimeError", grpc.StatusCode.INTERNAL, "internal error"),
    ],
)
async def test_a_stream_failing_midway_delivers_its_items_then_the_status(
    probe: tuple[ProbeService, grpc.aio.Channel],
    name: str,
    code: grpc.StatusCode,
    details: str,
) -> None:
    _, channel = probe
    call = channel.unary_stream(STREAM)(name.encode(), timeout=5)
    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for item in call:
            received.append(item)
    assert received == [b"first", b"second"]
    assert info.value.code() == code
    assert info.value.details() == details
    assert "secret detail" not in str(info.value)


#: ChatMessage.content (field 2) holding a UTF-16 surrogate; a tag with no field number.
UNPARSEABLE = (b"\x12\x03\xed\xa0\x80", b"\x00\x01")


@pytest.mark.parametrize("raw", UNPARSEABLE)
async def test_a_request_that_does_not_parse_is_invalid_argument(
    probe: tuple[ProbeService, grpc.aio.Channel], raw: bytes
) -> None:
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await channel.unary_unary(PARSE)(raw, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as stream:
        async for _ in channel.unary_stream(PARSE_STREAM)(raw, timeout=5):
            pass
    for err in (unary.value, stream.value):
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "the request is not a valid atalaya.common.v1.ChatMessage"
    ok = common_pb2.ChatMessage(content="hé").SerializeToString()
    assert await channel.unary_unary(PARSE)(ok, timeout=5) == "hé".encode()


def test_status_for_follows_the_class_hierarchy() -> None:
    assert status_for(SubNotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert status_for(errors.AtalayaError("x")) == grpc.StatusCode.INTERNAL


async def test_health_is_not_serving_and_rpcs_are_refused_while_starting() -> None:
    service = ProbeService()
    service.start_gate = asyncio.Event()
    runner = ServerRunner(service, probe_settings())
    starting = asyncio.create_task(runner.start())
    try:

        async def bound() -> bool:
            return runner.port != 0

        await async_wait_until(bound)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel:
            assert await health(channel) == NOT_SERVING
            assert await health(channel, SERVICE) == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(RAISE)(b"ok", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert info.value.details() == "service is starting"
            assert not starting.done()

            service.start_gate.set()
            assert await starting == runner.port

            assert await health(channel) == SERVING
            assert await health(channel, SERVICE) == SERVING
            assert await channel.unary_unary(RAISE)(b"ok", timeout=5) == b"ok"
    finally:
        if service.start_gate is not None:
            service.start_gate.set()
        await starting
        await runner.stop(grace=0.5)


async def test_health_follows_readiness(probe: tuple[ProbeService, grpc.aio.Channel]) -> None:
    service, channel = probe
    assert await health(channel) == SERVING

    service.is_ready = False

    async def not_serving() -> bool:
        return await health(channel) == NOT_SERVING

    await async_wait_until(not_serving)
    assert await health(channel, SERVICE) == NOT_SERVING

    service.is_ready = True

    async def serving() -> bool:
        return await health(channel) == SERVING

    await async_wait_until(serving)
    assert await health(channel, SERVICE) == SERVING


async def test_a_failing_readiness_check_means_not_serving(
    probe: tuple[ProbeService, grpc.aio.Channel],
) -> None:
    service, channel = probe
    assert await health(channel) == SERVING
    service.ready_error = RuntimeError("database went away")

    async def not_serving() -> bool:
        return await health(channel) == NOT_SERVING

    await async_wait_until(not_serving)
    service.ready_error = None

    async def serving() -> bool:
        return await health(channel) == SERVING

    await async_wait_until(serving)


async def test_health_for_an_unknown_service_is_not_found(
    probe: tuple[ProbeService, grpc.aio.Channel],
) -> None:
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health(channel, "atalaya.nope.v1.Nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_service(probe: tuple[ProbeService, grpc.aio.Channel]) -> None:
    _, channel = probe
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = [s.name async for response in call for s in response.list_services_response.service]
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names


async def test_resource_exhausted_with_a_delay_carries_retry_info(
    probe: tuple[ProbeService, grpc.aio.Channel],
) -> None:
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(RAISE)(b"Retry", timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "Retry: the limit is 7"
    assert retry_after_s(info.value) == 1.25
    call = channel.unary_stream(STREAM)(b"Retry", timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert retry_after_s(info.value) == 1.25
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(RAISE)(b"ResourceExhausted", timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_status.from_call(info.value) is None  # no delay known, no detail
    assert retry_after_s(info.value) is None


async def test_a_caller_passes_the_upstream_retry_delay_on(
    probe: tuple[ProbeService, grpc.aio.Channel],
) -> None:
    _, channel = probe
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(RAISE)(b"Retry", timeout=5)
    err = domain_error(info.value, "probe")
    assert isinstance(err, errors.ResourceExhausted)
    assert (str(err), err.retry_after_s) == ("probe: Retry: the limit is 7", 1.25)


class HeaderAuthenticator:
    """Believes `x-user`; refuses calls without it."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def authenticate(
        self, method: str, metadata: identity.Metadata, auth_context: identity.AuthContext
    ) -> identity.Identity:
        self.methods.append(method)
        user = dict(metadata).get("x-user")
        if not isinstance(user, str):
            raise errors.Unauthenticated("authentication required")
        return identity.Identity("acme", user, method="jwt")


async def test_an_authenticator_runs_before_the_handler_which_runs_as_its_identity() -> None:
    service, auth = ProbeService(), HeaderAuthenticator()
    async with (
        ServerRunner(service, probe_settings(), authenticator=auth).running() as runner,
        grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel,
    ):
        who = await channel.unary_unary(WHOAMI)(b"", metadata=(("x-user", "ana"),), timeout=5)
        assert who == b"acme/ana/jwt"
        stream = channel.unary_stream(WHO_STREAM)(b"", metadata=(("x-user", "bob"),), timeout=5)
        assert [item async for item in stream] == [b"acme/bob/jwt"] * 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(RAISE)(b"ok", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == "authentication required"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in channel.unary_stream(STREAM)(b"ok", timeout=5):
                pytest.fail("a refused stream yielded an item")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await health(channel) == SERVING  # health needs no credentials
        assert auth.methods == [WHOAMI, WHO_STREAM, RAISE, STREAM]


async def test_without_an_authenticator_handlers_run_as_anonymous(
    probe: tuple[ProbeService, grpc.aio.Channel],
) -> None:
    _, channel = probe
    assert await channel.unary_unary(WHOAMI)(b"", timeout=5) == b"default//none"


# -- authentication -----------------------------------------------------------


class ListAuthenticator:
    """Refuses with `refusal` (when set), else answers `identity`; records calls."""

    def __init__(self, refusal: errors.AtalayaError | None = None) -> None:
        self.refusal = refusal
        self.identity = Identity("acme", "ana", frozenset({"atalaya:chat"}), "jwt")
        self.calls: list[tuple[str, dict[str, str], str]] = []

    async def authenticate(
        self, method: str, metadata: Metadata, auth_context: AuthContext
    ) -> Identity:
        security = b"".join(auth_context.get("transport_security_type", ())).decode()
        self.calls.append((method, {k: str(v) for k, v in metadata}, security))
        if self.refusal is not None:
            raise self.refusal
        return self.identity


@contextlib.asynccontextmanager
async def whoami_server(
    authenticator: ListAuthenticator,
) -> AsyncIterator[tuple[WhoAmIService, grpc.aio.Channel]]:
    service = WhoAmIService()
    async with (
        ServerRunner(service, probe_settings(), authenticator=authenticator).running() as runner,
        grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel,
    ):
        yield service, channel


async def test_the_handler_runs_as_the_authenticated_identity() -> None:
    auth = ListAuthenticator()
    async with whoami_server(auth) as (_, channel):
        answer = await who(channel, metadata=(("authorization", "Bearer t0k"),))
        streamed = [
            json.loads(item) async for item in channel.unary_stream(WHOAMI_STREAM)(b"", timeout=5)
        ]
    expected = {"tenant": "acme", "user": "ana", "scopes": ["atalaya:chat"], "method": "jwt"}
    assert {k: answer[k] for k in expected} == expected
    assert [{k: s[k] for k in expected} for s in streamed] == [expected, expected]
    method, metadata, security = auth.calls[0]
    assert method == WHO
    assert metadata["authorization"] == "Bearer t0k"
    assert security == "insecure"
    assert [m for m, _, _ in auth.calls] == [WHO, WHOAMI_STREAM]
    assert identity.current() == identity.ANONYMOUS  # nothing leaks out of the RPC


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (errors.Unauthenticated("authentication required"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("gateway may not call x"), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_a_refused_caller_gets_its_code_and_the_handler_never_runs(
    refusal: errors.AtalayaError, code: grpc.StatusCode
) -> None:
    async with whoami_server(ListAuthenticator(refusal)) as (service, channel):
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await who(channel)
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            async for _ in channel.unary_stream(WHOAMI_STREAM)(b"", timeout=5):
                pass
        assert await health(channel) == SERVING  # health stays open
        reflection_stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in reflection_stub.ServerReflectionInfo(iter([request]))]
    assert unary.value.code() == stream.value.code() == code
    assert unary.value.details() == str(refusal)
    assert service.handled == 0
    assert WHOAMI_SERVICE in {s.name for s in replies[0].list_services_response.service}


async def test_without_an_authenticator_of_its_own_a_service_runs_as_anonymous() -> None:
    service = WhoAmIService()
    async with (
        ServerRunner(service, probe_settings()).running() as runner,
        grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel,
    ):
        answer = await who(channel)
    assert (answer["tenant"], answer["user"], answer["method"]) == ("default", "", "none")
    assert answer["scopes"] == [identity.ON_BEHALF_SCOPE]

"""What every client shares (services.client.base): TLS from its settings and the
bearer credential on every call, sent over TLS or in plaintext to loopback only;
status codes mapped to domain errors."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.client.base import BaseClient, domain_error
from services.common import errors
from services.common.server import ServerRunner
from services.common.settings import ServiceSettings, TLSSettings
from tests.support.certs import TestCA
from tests.support.whoami import WhoAmIService, who


class WhoClient(BaseClient):
    async def who(self) -> Any:
        return await who(self._channel, timeout=self._timeout(None))


@contextlib.asynccontextmanager
async def serving(host: str = "127.0.0.1", tls: TLSSettings | None = None) -> AsyncIterator[int]:
    settings = ServiceSettings(host=host, port=0, grace_period_s=0.5, tls=tls or TLSSettings())
    async with ServerRunner(WhoAmIService(), settings).running() as runner:
        yield runner.port


async def test_the_token_goes_as_a_bearer_credential_over_tls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    leaf = ca.issue("gateway", ["127.0.0.1"])
    async with (
        serving(tls=ca.server(leaf, mode="tls")) as port,
        WhoClient.connect(f"127.0.0.1:{port}", tls=ca.client(), token="t0k.en") as client,
    ):
        answer = await client.who()
    assert answer["metadata"]["authorization"] == "Bearer t0k.en"


async def test_plaintext_clients_send_the_token_to_loopback_and_nothing_without_one() -> None:
    async with serving() as port:
        async with WhoClient.connect(f"127.0.0.1:{port}", token="atk_local") as client:
            with_token = await client.who()
        async with WhoClient.connect(f"127.0.0.1:{port}") as client:
            without = await client.who()
    assert with_token["metadata"]["authorization"] == "Bearer atk_local"
    assert "authorization" not in without["metadata"]


def _own_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_a_token_never_travels_in_plaintext_off_the_machine() -> None:
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    async with serving(host="0.0.0.0") as port:
        async with WhoClient.connect(f"{address}:{port}", timeout_s=5) as client:
            assert (await client.who())["method"] == "none"  # reachable without a token
        async with WhoClient.connect(f"{address}:{port}", token="t", timeout_s=5) as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.who()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


class _Err(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
    ],
)
def test_refusals_keep_their_meaning_for_the_caller(
    code: grpc.StatusCode, cls: type[errors.AtalayaError]
) -> None:
    err = domain_error(_Err(code, "no"), "memory")
    assert type(err) is cls
    assert str(err) == "memory: no"

"""The whole stack under mTLS on real sockets (python -m services.stack --mtls):
certificates from the stack's local CA, every hop over TLS with client
certificates, each backend admitting only the callers of the call graph."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509

from services.cli.__main__ import main as cli_main
from services.client import GatewayClient, MemoryClient, TurnSettings
from services.common.settings import ChannelTLSSettings
from services.stack.pki import OPERATOR
from tests.support.polling import wait_until
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration

MESSAGE = "Hello! My name is Ana and I love sailing."
REPLY = "Nice to meet you, Ana! Sailing is great."


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sim = {
        "ATALAYA_GENERATION_BACKEND": "sim",
        "ATALAYA_GENERATION_SIM__ITL_MEAN_MS": "5",
        "ATALAYA_GENERATION_SIM__SCRIPTS": json.dumps({MESSAGE: REPLY}),
    }
    with running_stack(tmp_path_factory.mktemp("stack"), {"generation": sim}, security="mtls") as s:
        yield s


def client_tls(stack: Stack) -> ChannelTLSSettings:
    assert stack.tls is not None
    return stack.tls


def served_serial(target: str, tls: ChannelTLSSettings) -> int:
    """The serial number of the certificate a new TLS connection to `target` gets."""
    assert tls.ca_file and tls.cert_file and tls.key_file
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    context.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_chat_turn_works_end_to_end_over_mtls(stack: Stack) -> None:
    settings = TurnSettings(target=stack.target("gateway"), user_id="ana", session_id="m1")
    async with GatewayClient.connect(settings.target, tls=client_tls(stack)) as gateway:
        result = await gateway.chat(settings.request(MESSAGE, request_id="mtls-1"), timeout=60)
    assert result.answer == REPLY
    assert result.done is not None and result.done.memory.stored
    assert not result.done.memory.degraded  # memory (and embedding behind it) answered
    async with MemoryClient.connect(stack.target("memory"), tls=client_tls(stack)) as memory:
        history = await memory.get_history(user_id="ana", session_id="m1")
    assert [t.request_id for t in history.turns] == ["mtls-1"]


def test_the_cli_talks_to_the_stack_over_mtls(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = client_tls(stack)
    files = ["--ca-file", str(tls.ca_file), "--cert-file", str(tls.cert_file)]
    files += ["--key-file", str(tls.key_file)]
    targets = [f"--target={name}={stack.target(name)}" for name in stack.ports if name != "traces"]
    assert cli_main(["status", *targets, "--timeout", "5", *files]) == 0
    code = cli_main(["ask", "--target", stack.target("gateway"), "--user", "ana", *files, MESSAGE])
    assert code == 0
    assert REPLY in capsys.readouterr().out


@pytest.mark.parametrize("service", ["gateway", "memory"])
async def test_a_client_without_a_certificate_is_refused(stack: Stack, service: str) -> None:
    no_cert = ChannelTLSSettings(enabled=True, ca_file=client_tls(stack).ca_file)
    for tls in (no_cert, None):  # TLS without a client certificate; plaintext
        async with MemoryClient.connect(stack.target(service), tls=tls, timeout_s=10) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.get_history(user_id="ana", session_id="m1")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # no handshake, no call


async def test_a_certificate_the_call_graph_does_not_allow_is_denied(stack: Stack) -> None:
    pki = stack.certificates
    # embedding calls nothing: its certificate may not call memory.
    async with MemoryClient.connect(stack.target("memory"), tls=pki.client_tls("embedding")) as m:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await m.get_history(user_id="ana", session_id="m1")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The gateway calls memory: its certificate may.
    async with MemoryClient.connect(stack.target("memory"), tls=pki.client_tls("gateway")) as m:
        history = await m.get_history(user_id="ana", session_id="m1")
    assert [t.request_id for t in history.turns] == ["mtls-1"]


def test_a_certificate_rotated_on_disk_is_served_without_restart(stack: Stack) -> None:
    pki = stack.certificates
    operator = pki.client_tls(OPERATOR)
    target = stack.target("memory")
    before = served_serial(target, operator)
    assert before == pki.certificate("memory").serial_number

    rotated = pki.issue("memory").serial_number  # what cert-manager does: new files
    assert rotated != before
    wait_until(lambda: served_serial(target, operator) == rotated, timeout_s=30)
    assert stack.process.proc is not None and stack.process.proc.poll() is None

"""Transport security (services.common.tls) on real sockets with certificates made
here: TLS and mTLS servers, client certificates checked against the CA bundle, the
peer's name from its certificate, and certificates reloaded from disk without a
restart (a new connection sees the new serial; a half-written rotation is not taken)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from services.common import channel as channel_module
from services.common import tls
from services.common.channel import create_channel
from services.common.server import ServerRunner
from services.common.settings import (
    ChannelSettings,
    ChannelTLSSettings,
    ServiceSettings,
    TLSSettings,
)
from tests.support.certs import Leaf, TestCA
from tests.support.whoami import WHO, WhoAmIService, who

TD = "atalaya.local"


def ctx(uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> dict[str, list[bytes]]:
    """An auth_context as grpc gives it for a verified peer certificate."""
    out = {"transport_security_type": [b"ssl"]}
    if uris:
        out[tls.PEER_URI] = [u.encode() for u in uris]
    if dns:
        out[tls.PEER_DNS] = [d.encode() for d in dns]
    return out


@pytest.mark.parametrize(
    ("context", "name"),
    [
        (ctx(uris=(f"spiffe://{TD}/gateway",)), "gateway"),
        (ctx(uris=(f"spiffe://{TD}/ns/prod/sa/memory",)), "memory"),
        (ctx(uris=(f"spiffe://{TD}/ns/prod/sa/atalaya-memory",)), "memory"),
        (ctx(uris=(f"spiffe://{TD.upper()}/operator",)), "operator"),
        (ctx(dns=("atalaya-guardrail.prod.svc.cluster.local", "atalaya-guardrail")), "guardrail"),
        (ctx(dns=("embedding", "localhost", "*.embedding.prod.svc")), "embedding"),
        # The SPIFFE ID wins over DNS names.
        (ctx(uris=(f"spiffe://{TD}/memory",), dns=("gateway",)), "memory"),
        # Another trust domain's ID is no ID: the DNS name decides.
        (ctx(uris=("spiffe://elsewhere.example/gateway",), dns=("embedding",)), "embedding"),
    ],
)
def test_peer_name_from_the_certificates_names(context: dict[str, list[bytes]], name: str) -> None:
    assert tls.peer_name(context, TD) == name


@pytest.mark.parametrize(
    "context",
    [
        {"transport_security_type": [b"insecure"]},  # plaintext: no certificate
        ctx(uris=("spiffe://elsewhere.example/gateway",)),  # another trust domain only
        ctx(uris=(f"spiffe://{TD}/ns/prod/gateway",)),  # neither accepted path form
        ctx(uris=(f"spiffe://{TD}/a/b",)),
        ctx(uris=("https://gateway",)),
        ctx(dns=("gateway", "memory")),  # two workloads: ambiguous
        ctx(uris=(f"spiffe://{TD}/gateway", f"spiffe://{TD}/memory")),
        ctx(dns=("localhost",)),
    ],
)
def test_no_peer_name_when_the_certificate_names_no_one_workload(
    context: dict[str, list[bytes]],
) -> None:
    assert tls.peer_name(context, TD) is None


def test_settings_refuse_a_mode_without_its_files() -> None:
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TLSSettings(mode="tls")
    with pytest.raises(ValueError, match="ca_file"):
        TLSSettings(mode="mtls", cert_file=Path("c"), key_file=Path("k"))
    with pytest.raises(ValueError, match="go together"):
        ChannelTLSSettings(enabled=True, cert_file=Path("c"))


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    one, two = ca.issue("one", ["one"]), ca.issue("two", ["two"])
    assert tls.KeyPair.load(one.cert_file, one.key_file).certificate.serial_number == one.serial
    with pytest.raises(tls.TLSFileError, match="is not the key of"):
        tls.KeyPair.load(one.cert_file, two.key_file)
    with pytest.raises(tls.TLSFileError, match="cannot read"):
        tls.KeyPair.load(tmp_path / "missing.pem", one.key_file)
    with pytest.raises(tls.TLSFileError, match="no PEM certificate"):
        tls.load_ca(one.key_file)


# -- real servers --------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(
    tls_settings: TLSSettings, name: str = "memory"
) -> AsyncIterator[tuple[ServerRunner, str]]:
    settings = ServiceSettings(port=0, grace_period_s=0.5, tls=tls_settings)
    async with ServerRunner(WhoAmIService(name), settings).running() as runner:
        yield runner, f"127.0.0.1:{runner.port}"


async def call_who(target: str, client: ChannelTLSSettings | None) -> dict[str, object]:
    async with create_channel(ChannelSettings(target=target, tls=client, max_attempts=1)) as ch:
        answer: dict[str, object] = await who(ch, timeout=10)
        return answer


def served_serial(target: str, client: ChannelTLSSettings) -> int:
    """The serial of the certificate that a new TLS connection to `target` gets."""
    assert client.ca_file is not None
    context = ssl.create_default_context(cafile=str(client.ca_file))
    if client.cert_file and client.key_file:
        context.load_cert_chain(str(client.cert_file), str(client.key_file))
    context.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def service_cert(ca: TestCA, name: str) -> Leaf:
    return ca.issue(name, [name, "127.0.0.1", f"spiffe://{TD}/{name}"])


async def test_mtls_names_the_calling_service_from_its_certificate(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    async with serving(ca.server(service_cert(ca, "memory"))) as (_, target):
        answer = await call_who(target, ca.client(service_cert(ca, "gateway")))
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call_who(target, ca.client(service_cert(ca, "embedding")))
    assert {k: answer[k] for k in ("tenant", "user", "method", "service")} == {
        "tenant": "default",
        "user": "",
        "method": "mtls",
        "service": "gateway",
    }
    # The call graph: the gateway calls memory, the embedding service calls nothing.
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.details() == "embedding may not call memory"


async def test_mtls_refuses_callers_without_a_certificate_of_the_ca(tmp_path: Path) -> None:
    ca, other = TestCA(tmp_path / "ca"), TestCA(tmp_path / "other", "other CA")
    async with serving(ca.server(service_cert(ca, "memory"))) as (_, target):
        refusals = []
        stranger = other.issue("gateway", ["gateway", f"spiffe://{TD}/gateway"])
        for client in (
            ca.client(),  # TLS, no client certificate
            ChannelTLSSettings(
                enabled=True,
                ca_file=ca.ca_file,
                cert_file=stranger.cert_file,
                key_file=stranger.key_file,
            ),  # a certificate of another CA
            None,  # plaintext
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call_who(target, client)
            refusals.append(caught.value.code())
        allowed = await call_who(target, ca.client(service_cert(ca, "gateway")))
    assert refusals == [grpc.StatusCode.UNAVAILABLE] * 3
    assert allowed["method"] == "mtls" and allowed["service"] == "gateway"


async def test_tls_without_client_certificates_serves_any_tls_client(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    async with serving(ca.server(service_cert(ca, "memory"), mode="tls")) as (_, target):
        answer = await call_who(target, ca.client())
        with pytest.raises(grpc.aio.AioRpcError) as plaintext:
            await call_who(target, None)
    assert answer["method"] == "none"  # no mTLS: nobody is proven
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_name_override_checks_the_name_in_the_certificate(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    leaf = ca.issue("memory", ["memory.prod.svc"])  # no IP address: the target won't match
    async with serving(ca.server(leaf, mode="tls")) as (_, target):
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await call_who(target, ca.client())
        named = ca.client().model_copy(update={"server_name": "memory.prod.svc"})
        answer = await call_who(target, named)
    assert wrong.value.code() == grpc.StatusCode.UNAVAILABLE
    assert answer["tenant"] == "default"


async def test_a_rotated_certificate_serves_new_connections_without_restart(
    tmp_path: Path,
) -> None:
    ca = TestCA(tmp_path)
    first = service_cert(ca, "memory")
    gateway = ca.client(service_cert(ca, "gateway"))
    async with serving(ca.server(first)) as (runner, target):
        assert runner.certificates is not None
        assert served_serial(target, gateway) == first.serial == runner.certificates.serial

        second = service_cert(ca, "memory")  # new key and certificate, same paths
        assert served_serial(target, gateway) == second.serial != first.serial
        assert runner.certificates.serial == second.serial
        assert (await call_who(target, gateway))["service"] == "gateway"

        # Half a rotation: a new certificate whose key has not been written yet.
        loads = runner.certificates.loads
        third = ca.issue("third", ["memory", "127.0.0.1"])
        first.cert_file.write_bytes(third.cert_file.read_bytes())
        assert served_serial(target, gateway) == second.serial  # the last good pair
        assert runner.certificates.loads == loads
        first.key_file.write_bytes(third.key_file.read_bytes())  # the rotation completes
        assert served_serial(target, gateway) == third.serial


async def test_a_services_channel_shows_its_renewed_client_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channel_module, "RELOAD_CHECK_INTERVAL_S", 0.0)  # look at every call
    ca = TestCA(tmp_path)
    first = service_cert(ca, "gateway")
    client = ca.client(first)
    async with (
        serving(ca.server(service_cert(ca, "memory"))) as (_, target),
        create_channel(ChannelSettings(target=target, tls=client)) as channel,
    ):
        assert isinstance(channel, channel_module.ReloadingChannel)
        stub_call = channel.unary_unary(WHO)  # made once, as a stub does
        before = json.loads(await stub_call(b"", timeout=10))
        renewed = service_cert(ca, "gateway")  # rotated on disk, same paths
        after = json.loads(await stub_call(b"", timeout=10))
        # Half a rotation (a certificate without its key yet) keeps the last good pair.
        half = ca.issue("half", ["gateway", f"spiffe://{TD}/gateway"])
        first.cert_file.write_bytes(half.cert_file.read_bytes())
        during = json.loads(await stub_call(b"", timeout=10))
    assert before["peer_serial"] == format(first.serial, "x")
    assert after["peer_serial"] == format(renewed.serial, "x") != before["peer_serial"]
    assert during["peer_serial"] == after["peer_serial"]
    assert after["service"] == "gateway"
    assert channel.generation == 1

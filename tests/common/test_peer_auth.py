"""The services' authenticator (services.common.peer_auth): with mTLS the peer's
certificate and the call graph decide who may call, a forwarded identity is believed
only from an allowed peer; with mTLS off, today's trust (ANONYMOUS, or the forwarded
identity as is). Auth contexts here are what grpc gives for a verified certificate;
tests/common/test_tls.py runs the same over real mTLS sockets."""

from __future__ import annotations

import pytest

from services.common import errors, topology
from services.common.identity import (
    ADMIN_SCOPE,
    ANONYMOUS,
    ON_BEHALF_SCOPE,
    SCOPES_KEY,
    TENANT_KEY,
    USER_KEY,
    Identity,
)
from services.common.peer_auth import PeerAuthenticator, forwarded_identity
from services.common.server import default_authenticator
from services.common.settings import PeerSettings, ServiceSettings, TLSSettings
from services.common.tls import PEER_URI

METHOD = "/atalaya.memory.v1.MemoryService/Recall"
ANA = ((TENANT_KEY, "acme"), (USER_KEY, "ana"), (SCOPES_KEY, "atalaya:chat atalaya:x"))


def peer(name: str, domain: str = "atalaya.local") -> dict[str, list[bytes]]:
    return {"transport_security_type": [b"ssl"], PEER_URI: [f"spiffe://{domain}/{name}".encode()]}


NO_CERT: dict[str, list[bytes]] = {"transport_security_type": [b"insecure"]}


def memory(peers: PeerSettings | None = None) -> PeerAuthenticator:
    return PeerAuthenticator("memory", mtls=True, peers=peers)


@pytest.mark.parametrize("service", topology.NAMES)
def test_the_allowlist_is_the_call_graph(service: str) -> None:
    auth = PeerAuthenticator(service, mtls=True)
    callers = {caller for caller, callees in topology.call_graph().items() if service in callees}
    assert auth.allowed == callers == set(topology.callers_of(service))


def test_callers_of_reads_the_graph_backwards() -> None:
    assert topology.callers_of("embedding") == ("memory", "guardrail")
    assert topology.callers_of("memory") == ("gateway",)
    assert topology.callers_of("gateway") == ()
    with pytest.raises(ValueError, match="unknown service"):
        topology.callers_of("postgresql")


async def test_an_allowed_peer_without_a_forwarded_identity_acts_as_itself() -> None:
    who = await memory().authenticate(METHOD, (), peer("gateway"))
    assert who == Identity("default", "", frozenset({ON_BEHALF_SCOPE}), "mtls", "gateway")


async def test_an_allowed_peer_forwards_the_callers_identity() -> None:
    who = await memory().authenticate(METHOD, ANA, peer("ns/prod/sa/atalaya-gateway"))
    assert who == Identity(
        "acme", "ana", frozenset({"atalaya:chat", "atalaya:x"}), "mtls", "gateway"
    )


@pytest.mark.parametrize("name", ["embedding", "generation", "memory", "operator"])
async def test_a_peer_the_call_graph_does_not_allow_is_denied_whatever_it_forwards(
    name: str,
) -> None:
    for metadata in ((), ANA):
        with pytest.raises(errors.PermissionDenied, match=f"^{name} may not call memory$"):
            await memory().authenticate(METHOD, metadata, peer(name))


async def test_no_certificate_is_unauthenticated_and_an_unknown_one_denied() -> None:
    with pytest.raises(errors.Unauthenticated, match=r"^authentication required$"):
        await memory().authenticate(METHOD, ANA, NO_CERT)
    with pytest.raises(errors.PermissionDenied):
        await memory().authenticate(METHOD, ANA, peer("gateway", domain="elsewhere.example"))


async def test_extra_and_admin_callers_from_settings() -> None:
    auth = memory(
        PeerSettings(extra_callers=("agent",), admin_callers=("operator",), tenant="acme")
    )
    agent = await auth.authenticate(METHOD, (), peer("agent"))
    operator = await auth.authenticate(METHOD, (), peer("operator"))
    assert agent == Identity("acme", "", frozenset({ON_BEHALF_SCOPE}), "mtls", "agent")
    assert operator.scopes == {ON_BEHALF_SCOPE, ADMIN_SCOPE} and operator.is_admin
    assert (await auth.authenticate(METHOD, (), peer("gateway"))).service == "gateway"


async def test_a_forwarded_identity_needs_its_tenant() -> None:
    for metadata in (((USER_KEY, "ana"),), ((TENANT_KEY, ""), (USER_KEY, "ana"))):
        with pytest.raises(errors.Unauthenticated, match=r"^invalid credentials$"):
            await memory().authenticate(METHOD, metadata, peer("gateway"))
    with pytest.raises(errors.Unauthenticated):
        forwarded_identity(((TENANT_KEY, "t" * 2000),), method="none")


async def test_without_mtls_the_network_is_trusted_as_before() -> None:
    auth = PeerAuthenticator("memory", mtls=False)
    assert await auth.authenticate(METHOD, (), NO_CERT) == ANONYMOUS
    assert await auth.authenticate(METHOD, ((b"x-other", b"1"),), NO_CERT) == ANONYMOUS  # type: ignore[arg-type]
    forwarded = await auth.authenticate(METHOD, ANA, NO_CERT)
    assert (forwarded.tenant, forwarded.user, forwarded.method) == ("acme", "ana", "none")


def test_the_default_authenticator_follows_the_settings() -> None:
    off = default_authenticator("memory", ServiceSettings())
    mtls = TLSSettings(mode="mtls", cert_file="c.pem", key_file="k.pem", ca_file="ca.pem")  # type: ignore[arg-type]
    on = default_authenticator(
        "memory", ServiceSettings(tls=mtls, peers=PeerSettings(extra_callers=("agent",)))
    )
    assert isinstance(off, PeerAuthenticator) and not off.mtls
    assert isinstance(on, PeerAuthenticator) and on.mtls
    assert on.allowed == {"gateway", "agent"}

"""The authenticator of the services behind the gateway: who the calling service
is (its mTLS certificate), whether the call graph lets it call this service, and
whose identity it acts for.

With mTLS on (TLSSettings.mode == "mtls"):
  - the peer's certificate names a workload (services.common.tls.peer_name); it may
    call this service when topology.callers_of(this service) lists it, or the
    settings do (PeerSettings.extra_callers, admin_callers). Otherwise
    PERMISSION_DENIED; no usable certificate: UNAUTHENTICATED.
  - an identity the peer forwards (identity.TENANT_KEY, USER_KEY, SCOPES_KEY) is
    believed, because only allowed peers get this far; the RPC runs as it, method
    "mtls", service = the peer.
  - no forwarded identity: the peer acts as itself: tenant PeerSettings.tenant, no
    user, the on-behalf-of scope (a service of the call graph names the users it
    serves in its requests; the admin scope too for admin_callers), method "mtls".

With mTLS off (plaintext, the local default, or server-only TLS): no caller is
proven, so every process that reaches the port is trusted, as it always was: a
forwarded identity is taken as is, otherwise the RPC runs as identity.ANONYMOUS.
That is safe only where the network itself is the wall (loopback, a NetworkPolicy
that admits only the call graph, or a mesh that does mTLS for the pods)."""

from __future__ import annotations

from services.common import errors, tls, topology
from services.common.identity import (
    ADMIN_SCOPE,
    ANONYMOUS,
    ON_BEHALF_SCOPE,
    SCOPES_KEY,
    TENANT_KEY,
    USER_KEY,
    AuthContext,
    Identity,
    Metadata,
)
from services.common.settings import PeerSettings, ServiceSettings

UNAUTHENTICATED_MESSAGE = "authentication required"
INVALID_MESSAGE = "invalid credentials"
#: Longest tenant, user or scope list believed from metadata.
MAX_FORWARDED_CHARS = 1024


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def forwarded_identity(metadata: Metadata, *, method: str, service: str = "") -> Identity | None:
    """The identity a caller forwards in metadata, or None when it forwards none.
    A forwarded identity needs its tenant; one without is refused (UNAUTHENTICATED)."""
    values: dict[str, str] = {}
    for key, value in metadata:
        if key in (TENANT_KEY, USER_KEY, SCOPES_KEY):
            values[key] = _text(value)
    if not values:
        return None
    tenant = values.get(TENANT_KEY, "")
    if not tenant or any(len(v) > MAX_FORWARDED_CHARS for v in values.values()):
        raise errors.Unauthenticated(INVALID_MESSAGE)
    scopes = frozenset(values.get(SCOPES_KEY, "").split())
    return Identity(tenant, values.get(USER_KEY, ""), scopes, method, service)


class PeerAuthenticator:
    """identity.Authenticator of a service behind the gateway (see the module doc)."""

    def __init__(self, service: str, *, mtls: bool, peers: PeerSettings | None = None) -> None:
        peers = peers or PeerSettings()
        self.service = service
        self.mtls = mtls
        self._trust_domain = peers.trust_domain
        self._tenant = peers.tenant
        self._admins = frozenset(peers.admin_callers)
        graph = topology.callers_of(service) if service in topology.NAMES else ()
        self.allowed = frozenset(graph) | frozenset(peers.extra_callers) | self._admins

    @classmethod
    def from_settings(cls, service: str, settings: ServiceSettings) -> PeerAuthenticator:
        return cls(service, mtls=settings.tls.mode == "mtls", peers=settings.peers)

    def peer(self, auth_context: AuthContext) -> str:
        """The allowed peer that is calling; UNAUTHENTICATED / PERMISSION_DENIED otherwise."""
        name = tls.peer_name(auth_context, self._trust_domain)
        if name is None:
            if tls.has_certificate(auth_context):
                raise errors.PermissionDenied("the caller's certificate names no known workload")
            raise errors.Unauthenticated(UNAUTHENTICATED_MESSAGE)
        if name not in self.allowed:
            raise errors.PermissionDenied(f"{name} may not call {self.service}")
        return name

    async def authenticate(
        self, method: str, metadata: Metadata, auth_context: AuthContext
    ) -> Identity:
        if not self.mtls:
            return forwarded_identity(metadata, method="none") or ANONYMOUS
        peer = self.peer(auth_context)
        forwarded = forwarded_identity(metadata, method="mtls", service=peer)
        if forwarded is not None:
            return forwarded
        scopes = {ON_BEHALF_SCOPE} | ({ADMIN_SCOPE} if peer in self._admins else set())
        return Identity(self._tenant, "", frozenset(scopes), "mtls", peer)

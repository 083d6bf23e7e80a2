"""Who is calling: the identity every RPC runs as, whichever way it was proven.

At the edge (the gateway) a caller proves who it is with an OIDC/JWT bearer token
or an API key; between services, with its mTLS client certificate. Either way the
result is one `Identity`, set for the duration of the RPC by the server's auth
interceptor and read with `current()`. Cores take the tenant and user from it,
never from a request body.

A service that calls another on behalf of a caller (the gateway calling memory for
Ana) forwards the caller's identity in the metadata keys below. A backend believes
those keys only from a peer that the allowlist lets call it (with mTLS on, the
peer's certificate says which service it is; on plaintext loopback, the local
default, every local process is trusted, as it always was)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

#: Scope that may act for any user of its tenant (erasure, export) and any tenant's
#: quotas; held by operators' tokens and keys, never by end users.
ADMIN_SCOPE = "atalaya:admin"
#: Scope of a service that calls for its own users (names the user in the body).
ON_BEHALF_SCOPE = "atalaya:on-behalf-of"
#: The tenant of a deployment that has one (auth off, or a token without a tenant claim).
DEFAULT_TENANT = "default"

#: Metadata keys that carry a forwarded identity from one service to the next.
TENANT_KEY = "atalaya-tenant"
USER_KEY = "atalaya-user"
SCOPES_KEY = "atalaya-scopes"
#: Where a caller puts its credential: `authorization: Bearer <credential>`, the
#: credential being an OIDC/JWT token or an Atalaya API key (which starts with
#: API_KEY_PREFIX, so one header serves both).
AUTHORIZATION_KEY = "authorization"
API_KEY_PREFIX = "atk_"
#: How the identity was proven: "jwt", "api_key", "mtls" or "none" (auth off).
METHODS = frozenset({"jwt", "api_key", "mtls", "none"})


@dataclass(frozen=True)
class Identity:
    """A caller: its tenant, its user ("" for a service acting as itself), its
    scopes, how it was proven and, for a service, which one (from its certificate)."""

    tenant: str
    user: str = ""
    scopes: frozenset[str] = field(default_factory=frozenset)
    method: str = "none"
    service: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown authentication method {self.method!r}")
        if not self.tenant:
            raise ValueError("an identity needs a tenant")

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def may_act_for(self, user: str) -> bool:
        """True when this caller may name `user` in a request: it is that user, or
        it holds the admin or on-behalf-of scope."""
        return user == self.user or self.is_admin or ON_BEHALF_SCOPE in self.scopes

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The keys that forward this identity to the next service."""
        return (
            (TENANT_KEY, self.tenant),
            (USER_KEY, self.user),
            (SCOPES_KEY, " ".join(sorted(self.scopes))),
        )


#: The identity of a deployment with authentication off: one tenant, the caller
#: trusted to name its user (the behaviour before authentication existed).
ANONYMOUS = Identity(DEFAULT_TENANT, "", frozenset({ON_BEHALF_SCOPE}), "none")

_current: ContextVar[Identity] = ContextVar("atalaya_identity", default=ANONYMOUS)


def current() -> Identity:
    """The identity of the RPC being served (ANONYMOUS outside one, or with auth off)."""
    return _current.get()


@contextlib.contextmanager
def acting_as(identity: Identity) -> Iterator[Identity]:
    """Run the block as `identity` (what the auth interceptor does for each RPC)."""
    token = _current.set(identity)
    try:
        yield identity
    finally:
        _current.reset(token)


#: gRPC invocation metadata as a handler sees it.
Metadata = Sequence[tuple[str, str | bytes]]
#: A peer's transport properties as grpc's auth_context() gives them
#: (x509_common_name, x509_subject_alternative_name, transport_security_type, ...).
AuthContext = Mapping[str, Sequence[bytes]]


class Authenticator(Protocol):
    """Proves the identity of each RPC's caller; the server's interceptor calls it
    before the handler and runs the handler `acting_as` the result. Raises
    errors.Unauthenticated (no or bad credentials) or errors.PermissionDenied (a
    known caller that may not call `method`)."""

    async def authenticate(
        self, method: str, metadata: Metadata, auth_context: AuthContext
    ) -> Identity: ...


class AnonymousAuthenticator:
    """Every caller is ANONYMOUS, whatever its metadata says: the edge of a deployment
    with authentication off. Forwarded identity keys from outside are ignored, so a
    client cannot claim a tenant or a scope by writing a header."""

    async def authenticate(
        self, method: str, metadata: Metadata, auth_context: AuthContext
    ) -> Identity:
        return ANONYMOUS

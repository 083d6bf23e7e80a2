"""Who is calling at the edge: OIDC/JWT bearer tokens and Atalaya API keys, one
`identity.Authenticator` for the gateway (and any other front door).

A caller sends `authorization: Bearer <credential>`. A credential that starts with
`atk_` is an API key, checked against the key store (services.common.api_keys);
anything else is a JWT, verified with PyJWT against the issuer's keys: a JWKS file,
or the JWKS that the issuer's discovery document names (fetched by PyJWT's
PyJWKClient, cached for `jwks_cache_s`, refreshed once on an unknown key id, at
most every `jwks_refresh_cooldown_s`). Only RS256, ES256 and EdDSA signatures are
accepted; `iss`, `aud` and `exp` are required and checked, `nbf` when present, all
within `leeway_s`.

A caller without a credential gets UNAUTHENTICATED "authentication required", a bad
one "invalid credentials": never which check failed. That reason goes to the log
(`reason` in extra=, a code such as `expired` or `unknown_key`), never the credential."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import jwt
from pydantic import BaseModel, Field, model_validator

from services.common import errors, semconv
from services.common.api_keys import ApiKeyStore
from services.common.identity import (
    API_KEY_PREFIX,
    AUTHORIZATION_KEY,
    DEFAULT_TENANT,
    AuthContext,
    Identity,
    Metadata,
)
from services.common.telemetry import meter
from services.common.validation import MAX_ID_CHARS
from services.common.watch import WatchedFiles

log = logging.getLogger(__name__)

#: The signature algorithms a token may use: asymmetric only, so a verifier never
#: holds a secret that could mint tokens, and never "none".
ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: Longer credentials are refused before any parsing.
MAX_CREDENTIAL_CHARS = 16 * 1024
MISSING_MESSAGE = "authentication required"
INVALID_MESSAGE = "invalid credentials"
UNAVAILABLE_MESSAGE = "authentication is unavailable; retry later"
#: A failed discovery fetch is retried no sooner than this.
DISCOVERY_RETRY_S = 5.0
WELL_KNOWN = "/.well-known/openid-configuration"


class EdgeAuthSettings(BaseModel):
    """Authentication of callers at the edge (a service's `AUTH__*` variables, for
    the gateway ATALAYA_GATEWAY_AUTH__MODE=required and so on)."""

    model_config = {"frozen": True}

    mode: Literal["off", "required"] = Field(
        "off",
        description="off: every call runs as the anonymous identity (the local default); "
        "required: a valid JWT or API key on every call.",
    )
    issuer: str = Field("", description="The OIDC issuer (`iss`); empty: no JWTs accepted.")
    audience: str = Field("", description="The audience tokens must name (`aud`).")
    jwks_url: str = Field(
        "", description="The issuer's JWKS; empty: read from the issuer's discovery document."
    )
    jwks_file: Path | None = Field(None, description="A JWKS file instead of fetching one.")
    tenant_claim: str = Field(
        "tenant", min_length=1, description="Claim naming the tenant (absent: 'default')."
    )
    user_claim: str = Field("sub", min_length=1, description="Claim naming the user.")
    scope_claims: tuple[str, ...] = Field(
        ("scope", "scp"),
        description="Claims holding scopes: a space-separated string or a list.",
    )
    leeway_s: float = Field(30.0, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat.")
    jwks_cache_s: float = Field(300.0, gt=0, description="How long a fetched JWKS is kept.")
    token_cache_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="How long a verified token's identity is kept, so a client that "
        "reuses its token is not verified again on every call (never past the "
        "token's exp); 0 verifies every call. A key removed from the JWKS stops "
        "working for cached tokens after this long.",
    )
    token_cache_size: int = Field(10_000, ge=1, description="Most verified tokens kept.")
    jwks_refresh_cooldown_s: float = Field(
        30.0, ge=0, description="Unknown key ids refetch the JWKS at most this often."
    )
    http_timeout_s: float = Field(5.0, gt=0, description="Discovery and JWKS fetch timeout.")
    api_keys_file: Path | None = Field(
        None, description="The API key store (JSON, `atalaya keys`); empty: no API keys."
    )
    api_keys_check_s: float = Field(
        1.0, gt=0, description="How often the key file is checked for changes."
    )

    @model_validator(mode="after")
    def _consistent(self) -> EdgeAuthSettings:
        if self.issuer and not self.audience:
            raise ValueError("auth: an issuer needs an audience")
        if self.jwks_url and self.jwks_file:
            raise ValueError("auth: give jwks_url or jwks_file, not both")
        if self.jwks_url:
            require_safe_url(self.jwks_url)
        elif self.issuer and not self.jwks_file:
            require_safe_url(self.issuer)  # its discovery document is fetched
        if self.mode == "required" and not (self.issuer or self.api_keys_file):
            raise ValueError("auth: mode 'required' needs an issuer or an api_keys_file")
        return self


def require_safe_url(url: str) -> str:
    """`url` if it is https, or http to a loopback host (tests, a local IdP): keys
    fetched over plain http from elsewhere could be replaced on the way."""
    parsed = urlparse(url)
    if parsed.scheme == "https" and parsed.hostname:
        return url
    if parsed.scheme == "http" and parsed.hostname and _loopback(parsed.hostname):
        return url
    raise ValueError(f"auth: {url!r} must be https (http only on loopback)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Rejected(Exception):
    """A credential was refused; `reason` is the log's code for why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidIssuedAtError, "bad_iat"),
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.DecodeError, "malformed"),
    (jwt.InvalidKeyError, "bad_key"),
    (jwt.PyJWKError, "bad_key"),
    (jwt.InvalidTokenError, "invalid_token"),
)


def _reason(exc: Exception) -> str:
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "invalid_token"


# ---------------------------------------------------------------------- keys


class KeySource:
    """Where the issuer's public keys come from."""

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The signing key named `kid`; Rejected("unknown_key") when there is none,
        errors.Unavailable when the keys cannot be had now."""
        raise NotImplementedError


def _match(keys: jwt.PyJWKSet, kid: str | None) -> jwt.PyJWK | None:
    usable = [k for k in keys.keys if k.public_key_use in ("sig", None)]
    if kid is None:
        return usable[0] if len(usable) == 1 else None
    return next((k for k in usable if k.key_id == kid), None)


class FileKeys(KeySource):
    """A JWKS file, re-read when it changes (checked at most every `check_interval_s`)."""

    def __init__(
        self,
        path: Path,
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._watch = WatchedFiles(path, check_interval_s=check_interval_s, clock=clock)
        self._keys: jwt.PyJWKSet | None = None

    def _reload(self) -> None:
        changed, signature = self._watch.poll()
        if not changed:
            return
        try:
            self._keys = jwt.PyJWKSet.from_json(self._path.read_text(encoding="utf-8"))
            self._watch.seen(signature)  # unread (missing, broken): tried again next look
            log.info("jwks loaded", extra={"path": str(self._path), "count": len(self._keys.keys)})
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            log.error(
                "jwks file unreadable: keeping the keys read before",
                extra={"path": str(self._path), "reason": type(exc).__name__},
            )

    async def key(self, kid: str | None) -> jwt.PyJWK:
        self._reload()
        if self._keys is None:
            raise errors.Unavailable(UNAVAILABLE_MESSAGE)
        found = _match(self._keys, kid)
        if found is None:
            raise Rejected("unknown_key")
        return found


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class RemoteKeys(KeySource):
    """The issuer's JWKS over HTTP(S): `jwks_url`, or the `jwks_uri` of the issuer's
    discovery document. PyJWKClient caches the set and refetches it on an unknown
    kid (bounded by its cooldown); network I/O runs in a thread, a cached key is
    found without leaving the event loop."""

    def __init__(self, settings: EdgeAuthSettings) -> None:
        self._s = settings
        self._client: jwt.PyJWKClient | None = (
            self._new_client(settings.jwks_url) if settings.jwks_url else None
        )
        self._discovery_failed_at: float | None = None
        self._lock = asyncio.Lock()

    def _new_client(self, url: str) -> jwt.PyJWKClient:
        s = self._s
        return jwt.PyJWKClient(
            require_safe_url(url),
            cache_jwk_set=True,
            lifespan=s.jwks_cache_s,
            timeout=s.http_timeout_s,
            cooldown_duration=s.jwks_refresh_cooldown_s,
        )

    def _discover(self) -> str:
        """The issuer's jwks_uri (blocking: runs in a thread)."""
        url = self._s.issuer.rstrip("/") + WELL_KNOWN
        opener = urllib.request.build_opener(_NoRedirect())  # as PyJWKClient: no redirects
        with opener.open(url, timeout=self._s.http_timeout_s) as response:
            doc = json.load(response)
        if not isinstance(doc, dict) or doc.get("issuer") != self._s.issuer:
            raise ValueError("the discovery document names another issuer")
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the discovery document has no jwks_uri")
        return require_safe_url(jwks_uri)

    async def _ensure_client(self) -> jwt.PyJWKClient:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is not None:
                return self._client
            failed = self._discovery_failed_at
            if failed is not None and time.monotonic() - failed < DISCOVERY_RETRY_S:
                raise errors.Unavailable(UNAVAILABLE_MESSAGE)
            try:
                jwks_uri = await asyncio.to_thread(self._discover)
            except (OSError, ValueError) as exc:
                self._discovery_failed_at = time.monotonic()
                log.error("oidc discovery failed", extra={"reason": type(exc).__name__})
                raise errors.Unavailable(UNAVAILABLE_MESSAGE) from None
            self._client = self._new_client(jwks_uri)
            log.info("oidc discovery done")
            return self._client

    async def key(self, kid: str | None) -> jwt.PyJWK:
        client = await self._ensure_client()
        cache = client.jwk_set_cache
        cached = cache.get() if cache is not None else None
        if cached is not None and (found := _match(cached, kid)) is not None:
            return found
        if kid is None:
            raise Rejected("unknown_key")
        try:
            return await asyncio.to_thread(client.get_signing_key, kid)
        except jwt.PyJWKClientConnectionError:
            log.error("jwks fetch failed")
            raise errors.Unavailable(UNAVAILABLE_MESSAGE) from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError):
            raise Rejected("unknown_key") from None


# ---------------------------------------------------------------------- tokens


def _claim_id(claims: Mapping[str, Any], name: str, default: str) -> str:
    value = claims.get(name, default)
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS or not value.isprintable():
        raise Rejected("bad_claims")
    return value


def _scopes(claims: Mapping[str, Any], names: tuple[str, ...]) -> frozenset[str]:
    scopes: set[str] = set()
    for name in names:
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            scopes.update(value)
        else:
            raise Rejected("bad_claims")
    return frozenset(scopes)


class JwtVerifier:
    """Verifies a token's signature and registered claims and maps its claims to an
    Identity (tenant, user and scope claims named by the settings)."""

    def __init__(
        self, settings: EdgeAuthSettings, keys: KeySource, clock: Callable[[], float] = time.time
    ) -> None:
        self._s = settings
        self._keys = keys
        self._clock = clock
        # SHA-256 of a verified token -> (its identity, when to verify it again). An
        # LRU by insertion order; only tokens that passed every check enter it.
        self._verified: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()

    async def verify(self, token: str) -> Identity:
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(digest)
        now = self._clock()
        if cached is not None and now < cached[1]:
            return cached[0]
        self._verified.pop(digest, None)
        identity, expires = await self._verify(token)
        if self._s.token_cache_s > 0:
            self._verified[digest] = (identity, min(now + self._s.token_cache_s, expires))
            while len(self._verified) > self._s.token_cache_size:
                self._verified.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> tuple[Identity, float]:
        """The token's identity and its exp (a checked, required claim)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Rejected("malformed") from None
        if header.get("alg") not in ALGORITHMS:
            raise Rejected("bad_algorithm")  # before any key lookup: "none", HS256, ...
        key = await self._keys.key(header.get("kid"))
        if key.algorithm_name not in ALGORITHMS:
            raise Rejected("bad_algorithm")
        s = self._s
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(ALGORITHMS),
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Rejected(_reason(exc)) from None
        tenant = _claim_id(claims, s.tenant_claim, DEFAULT_TENANT)
        if not tenant:
            raise Rejected("bad_claims")
        user = _claim_id(claims, s.user_claim, "")
        identity = Identity(tenant, user, _scopes(claims, s.scope_claims), "jwt")
        return identity, float(claims["exp"])


# ---------------------------------------------------------------------- the authenticator


class EdgeAuthenticator:
    """identity.Authenticator for callers from outside: a JWT or an API key in the
    `authorization` metadata, nothing else."""

    def __init__(self, *, jwt_verifier: JwtVerifier | None, api_keys: ApiKeyStore | None) -> None:
        self._jwt = jwt_verifier
        self._keys = api_keys
        self._results = meter().create_counter(
            semconv.METRIC_EDGE_AUTH,
            description="Authentication results at the edge, by credential kind and result "
            "(ok or a reason code).",
        )

    async def authenticate(
        self, method: str, metadata: Metadata, auth_context: AuthContext
    ) -> Identity:
        kind = "none"
        try:
            credential = _credential(metadata)
            if credential.startswith(API_KEY_PREFIX):
                kind = "api_key"
                identity = self._api_key(credential)
            else:
                kind = "jwt"
                if self._jwt is None:
                    raise Rejected("jwt_disabled")
                identity = await self._jwt.verify(credential)
        except Rejected as exc:
            self._results.add(
                1, {semconv.ATALAYA_AUTH_KIND: kind, semconv.ATALAYA_AUTH_RESULT: exc.reason}
            )
            log.info(
                "authentication failed",
                extra={"method": method, "credential_kind": kind, "reason": exc.reason},
            )
            message = MISSING_MESSAGE if exc.reason == "missing" else INVALID_MESSAGE
            raise errors.Unauthenticated(message) from None
        self._results.add(1, {semconv.ATALAYA_AUTH_KIND: kind, semconv.ATALAYA_AUTH_RESULT: "ok"})
        return identity

    def _api_key(self, credential: str) -> Identity:
        if self._keys is None:
            raise Rejected("api_keys_disabled")
        record, reason = self._keys.verify(credential)
        if record is None:
            raise Rejected(reason)
        return record.identity()


def _credential(metadata: Metadata) -> str:
    values = [v for k, v in metadata if k == AUTHORIZATION_KEY]
    if not values:
        raise Rejected("missing")
    if len(values) > 1:
        raise Rejected("ambiguous")
    value = values[0]
    if not isinstance(value, str) or len(value) > MAX_CREDENTIAL_CHARS:
        raise Rejected("malformed")
    scheme, _, credential = value.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Rejected("malformed")
    return credential


def build_authenticator(settings: EdgeAuthSettings) -> EdgeAuthenticator | None:
    """The authenticator the settings ask for; None when authentication is off."""
    if settings.mode == "off":
        return None
    verifier = None
    if settings.issuer:
        keys: KeySource = (
            FileKeys(settings.jwks_file) if settings.jwks_file else RemoteKeys(settings)
        )
        verifier = JwtVerifier(settings, keys)
    store = (
        ApiKeyStore(settings.api_keys_file, check_interval_s=settings.api_keys_check_s)
        if settings.api_keys_file
        else None
    )
    return EdgeAuthenticator(jwt_verifier=verifier, api_keys=store)

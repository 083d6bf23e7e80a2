"""Edge authentication with real keys and a real issuer: RSA, EC and Ed25519 keys
made here, the discovery document and the JWKS served over HTTP on 127.0.0.1, tokens
signed with PyJWT. Every refusal is UNAUTHENTICATED with a generic message; the log
says why, never the token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from services.common import errors
from services.common.api_keys import ApiKeyStore
from services.common.edge_auth import (
    INVALID_MESSAGE,
    MISSING_MESSAGE,
    EdgeAuthenticator,
    EdgeAuthSettings,
    FileKeys,
    JwtVerifier,
    RemoteKeys,
    build_authenticator,
)
from services.common.identity import ADMIN_SCOPE, DEFAULT_TENANT, Identity

AUDIENCE = "atalaya-gateway"
METHOD = "/atalaya.gateway.v1.GatewayService/Chat"


# ---------------------------------------------------------------------- keys and tokens


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        to_jwk = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        data: dict[str, Any] = to_jwk.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **headers}
        )


def make_key(alg: str, kid: str) -> SigningKey:
    if alg == "RS256":
        return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if alg == "ES256":
        return SigningKey(kid, alg, ec.generate_private_key(ec.SECP256R1()))
    return SigningKey(kid, alg, ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {alg: make_key(alg, f"k-{alg}") for alg in ("RS256", "ES256", "EdDSA")}


# ---------------------------------------------------------------------- the issuer


@dataclass
class Issuer:
    """An OIDC issuer on 127.0.0.1: discovery document and JWKS, requests counted."""

    url: str = ""
    advertised: str | None = None  # the issuer the discovery document names: url
    jwks: list[dict[str, Any]] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, *keys: SigningKey) -> None:
        with self.lock:
            self.jwks = [k.jwk() for k in keys]

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": self.url, "aud": AUDIENCE, "sub": "ana", "tenant": "acme",
                "scope": "chat read", "iat": now, "exp": now + 300}  # fmt: skip
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    state = Issuer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] += 1
            if self.path == "/.well-known/openid-configuration":
                body = {
                    "issuer": state.advertised or state.url,
                    "jwks_uri": f"{state.url}/jwks.json",
                }
            elif self.path == "/jwks.json":
                with state.lock:
                    body = {"keys": list(state.jwks)}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def settings(issuer: Issuer, **kw: Any) -> EdgeAuthSettings:
    return EdgeAuthSettings(mode="required", issuer=issuer.url, audience=AUDIENCE, **kw)


def authenticator(issuer: Issuer, **kw: Any) -> EdgeAuthenticator:
    auth = build_authenticator(settings(issuer, **kw))
    assert auth is not None
    return auth


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def refused(auth: EdgeAuthenticator, metadata: list[tuple[str, Any]]) -> str:
    with pytest.raises(errors.Unauthenticated) as caught:
        await auth.authenticate(METHOD, metadata, {})
    return str(caught.value)


# ---------------------------------------------------------------------- valid tokens


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_a_valid_token_is_the_callers_identity(
    issuer: Issuer, keys: dict[str, SigningKey], alg: str
) -> None:
    issuer.publish(*keys.values())
    auth = authenticator(issuer)
    token = keys[alg].sign(issuer.claims())
    who = await auth.authenticate(METHOD, bearer(token), {})
    assert who == Identity("acme", "ana", frozenset({"chat", "read"}), "jwt")
    assert issuer.hits["/.well-known/openid-configuration"] == 1
    assert issuer.hits["/jwks.json"] == 1


async def test_claim_names_are_settings_and_scp_lists_count(
    issuer: Issuer, keys: dict[str, SigningKey]
) -> None:
    issuer.publish(keys["ES256"])
    auth = authenticator(issuer, tenant_claim="org", user_claim="email")
    claims = issuer.claims(org="globex", email="ana@globex.example", scope=None,
                           scp=[ADMIN_SCOPE, "chat"])  # fmt: skip
    who = await auth.authenticate(METHOD, bearer(keys["ES256"].sign(claims)), {})
    assert (who.tenant, who.user, who.scopes) == (
        "globex", "ana@globex.example", frozenset({ADMIN_SCOPE, "chat"}),
    )  # fmt: skip
    assert who.is_admin


async def test_a_token_without_a_tenant_claim_is_the_default_tenant(
    issuer: Issuer, keys: dict[str, SigningKey]
) -> None:
    issuer.publish(keys["RS256"])
    token = keys["RS256"].sign(issuer.claims(tenant=None))
    who = await authenticator(issuer).authenticate(METHOD, bearer(token), {})
    assert who.tenant == DEFAULT_TENANT and who.user == "ana"


async def test_the_cached_keys_serve_later_tokens_without_fetching(
    issuer: Issuer, keys: dict[str, SigningKey]
) -> None:
    issuer.publish(*keys.values())
    auth = authenticator(issuer)
    for alg in ("RS256", "ES256", "EdDSA", "RS256"):
        await auth.authenticate(METHOD, bearer(keys[alg].sign(issuer.claims())), {})
    assert issuer.hits["/jwks.json"] == 1 and issuer.hits["/.well-known/openid-configuration"] == 1


async def test_clock_skew_within_the_leeway_is_accepted(
    issuer: Issuer, keys: dict[str, SigningKey]
) -> None:
    issuer.publish(keys["ES256"])
    now = int(time.time())
    token = keys["ES256"].sign(issuer.claims(exp=now - 5, nbf=now + 5, iat=now + 5))
    who = await authenticator(issuer, leeway_s=30).authenticate(METHOD, bearer(token), {})
    assert who.user == "ana"


# ---------------------------------------------------------------------- refusals


def hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 token made by hand (PyJWT refuses to sign with a public key as the
    HMAC secret, which is the attack this stands for)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def unsigned(claims: dict[str, Any], kid: str) -> str:
    return jwt.encode(claims, None, algorithm="none", headers={"kid": kid})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired"),
        ("not_yet_valid", "not_yet_valid"),
        ("wrong_issuer", "bad_issuer"),
        ("wrong_audience", "bad_audience"),
        ("no_exp", "missing_claim"),
        ("wrong_key", "bad_signature"),
        ("alg_none", "bad_algorithm"),
        ("hs256_with_public_key", "bad_algorithm"),
        ("unknown_kid", "unknown_key"),
        ("not_a_jwt", "malformed"),
        ("tenant_not_a_string", "bad_claims"),
    ],
)
async def test_bad_tokens_are_refused_generically_and_logged_with_a_reason(
    issuer: Issuer,
    keys: dict[str, SigningKey],
    caplog: pytest.LogCaptureFixture,
    case: str,
    reason: str,
) -> None:
    rsa_key = keys["RS256"]
    issuer.publish(rsa_key)
    now = int(time.time())
    claims = issuer.claims()
    impostor = make_key("RS256", rsa_key.kid)  # same kid, another private key
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tokens = {
        "expired": lambda: rsa_key.sign(issuer.claims(exp=now - 3600, iat=now - 7200)),
        "not_yet_valid": lambda: rsa_key.sign(issuer.claims(nbf=now + 3600)),
        "wrong_issuer": lambda: rsa_key.sign(issuer.claims(iss="https://evil.example")),
        "wrong_audience": lambda: rsa_key.sign(issuer.claims(aud="another-app")),
        "no_exp": lambda: rsa_key.sign(issuer.claims(exp=None)),
        "wrong_key": lambda: impostor.sign(claims),
        "alg_none": lambda: unsigned(claims, rsa_key.kid),
        "hs256_with_public_key": lambda: hs256(claims, public_pem, rsa_key.kid),
        "unknown_kid": lambda: make_key("ES256", "k-unknown").sign(claims),
        "not_a_jwt": lambda: "not.a.jwt",
        "tenant_not_a_string": lambda: rsa_key.sign(issuer.claims(tenant=["acme"])),
    }
    token = tokens[case]()
    auth = authenticator(issuer, leeway_s=10)
    with caplog.at_level(logging.INFO, logger="services.common.edge_auth"):
        assert await refused(auth, bearer(token)) == INVALID_MESSAGE
    records = [r for r in caplog.records if r.getMessage() == "authentication failed"]
    assert [getattr(r, "reason", None) for r in records] == [reason]
    assert getattr(records[0], "credential_kind", None) == "jwt"
    assert token not in caplog.text


async def test_a_refused_algorithm_fetches_no_keys(
    issuer: Issuer, keys: dict[str, SigningKey]
) -> None:
    issuer.publish(keys["RS256"])
    auth = authenticator(issuer)
    await refused(auth, bearer(unsigned(issuer.claims(), "k-RS256")))
    assert issuer.hits["/jwks.json"] == 0


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], MISSING_MESSAGE),
        ([("x-other", "Bearer abc")], MISSING_MESSAGE),
        ([("authorization", "Basic YW5hOnNlY3JldA==")], INVALID_MESSAGE),
        ([("authorization", "Bearer ")], INVALID_MESSAGE),
        ([("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")], INVALID_MESSAGE),
        ([("authorization", b"Bearer a.b.c")], INVALID_MESSAGE),
        ([("authorization", "Bearer " + "a" * 20_000)], INVALID_MESSAGE),
    ],
)
async def test_missing_or_garbled_headers_are_refused(
    issuer: Issuer, metadata: list[tuple[str, Any]], message: str
) -> None:
    assert await refused(authenticator(issuer), metadata) == message
    assert issuer.hits["/jwks.json"] == 0


# ---------------------------------------------------------------------- key rotation


async def test_an_unknown_kid_refetches_the_jwks_once(
    issuer: Issuer, keys: dict[str, SigningKey]
) -> None:
    old, new = keys["RS256"], keys["ES256"]
    issuer.publish(old)
    auth = authenticator(issuer, jwks_refresh_cooldown_s=0)
    await auth.authenticate(METHOD, bearer(old.sign(issuer.claims())), {})
    assert issuer.hits["/jwks.json"] == 1
    issuer.publish(old, new)  # the issuer rotates in a new key
    who = await auth.authenticate(METHOD, bearer(new.sign(issuer.claims())), {})
    assert who.user == "ana" and issuer.hits["/jwks.json"] == 2
    await refused(auth, bearer(make_key("ES256", "k-nobody").sign(issuer.claims())))
    assert issuer.hits["/jwks.json"] == 3  # one refetch for the unknown kid, no more


async def test_refetches_for_unknown_kids_are_bounded_by_the_cooldown(
    issuer: Issuer, keys: dict[str, SigningKey]
) -> None:
    issuer.publish(keys["RS256"])
    auth = authenticator(issuer, jwks_refresh_cooldown_s=3600)
    await auth.authenticate(METHOD, bearer(keys["RS256"].sign(issuer.claims())), {})
    for i in range(5):
        await refused(auth, bearer(make_key("ES256", f"k-random-{i}").sign(issuer.claims())))
    assert issuer.hits["/jwks.json"] == 1


async def test_an_unreachable_issuer_is_unavailable_not_unauthenticated(
    keys: dict[str, SigningKey],
) -> None:
    s = EdgeAuthSettings(mode="required", issuer="http://127.0.0.1:9", audience=AUDIENCE,
                         http_timeout_s=2)  # fmt: skip
    verifier = JwtVerifier(s, RemoteKeys(s))
    auth = EdgeAuthenticator(jwt_verifier=verifier, api_keys=None)
    token = keys["ES256"].sign({"iss": s.issuer, "aud": AUDIENCE, "exp": time.time() + 60})
    with pytest.raises(errors.Unavailable):
        await auth.authenticate(METHOD, bearer(token), {})


async def test_a_discovery_document_for_another_issuer_is_not_believed(
    issuer: Issuer, keys: dict[str, SigningKey]
) -> None:
    issuer.publish(keys["ES256"])
    issuer.advertised = "https://evil.example"
    with pytest.raises(errors.Unavailable):
        await authenticator(issuer).authenticate(
            METHOD, bearer(keys["ES256"].sign(issuer.claims())), {}
        )
    assert issuer.hits["/jwks.json"] == 0


async def test_a_jwks_file_is_reread_when_it_changes(
    tmp_path: Path, keys: dict[str, SigningKey]
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keys["EdDSA"].jwk()]}))
    s = EdgeAuthSettings(
        mode="required",
        issuer="atalaya-test",
        audience=AUDIENCE,
        jwks_file=path,
        token_cache_s=0,  # every call verified: the key's removal shows at once
    )
    auth = EdgeAuthenticator(
        jwt_verifier=JwtVerifier(s, FileKeys(path, check_interval_s=0)), api_keys=None
    )
    claims = {"iss": "atalaya-test", "aud": AUDIENCE, "sub": "ana", "exp": time.time() + 60}
    assert (await auth.authenticate(METHOD, bearer(keys["EdDSA"].sign(claims)), {})).user == "ana"
    rs_token = keys["RS256"].sign(claims)
    await refused(auth, bearer(rs_token))
    path.write_text(json.dumps({"keys": [keys["RS256"].jwk()]}))
    assert (await auth.authenticate(METHOD, bearer(rs_token), {})).user == "ana"
    await refused(auth, bearer(keys["EdDSA"].sign(claims)))


async def test_a_verified_token_is_kept_until_the_cache_time_or_its_exp(
    tmp_path: Path, keys: dict[str, SigningKey]
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [keys["RS256"].jwk()]}))
    s = EdgeAuthSettings(
        mode="required", issuer="atalaya-test", audience=AUDIENCE, jwks_file=path, token_cache_s=60
    )
    now = [time.time()]
    verifier = JwtVerifier(s, FileKeys(path, check_interval_s=0), clock=lambda: now[0])
    auth = EdgeAuthenticator(jwt_verifier=verifier, api_keys=None)
    claims = {"iss": "atalaya-test", "aud": AUDIENCE, "sub": "ana"}
    long_lived = keys["RS256"].sign({**claims, "exp": now[0] + 3600})
    short_lived = keys["RS256"].sign({**claims, "sub": "bob", "exp": now[0] + 10})
    assert (await auth.authenticate(METHOD, bearer(long_lived), {})).user == "ana"
    assert (await auth.authenticate(METHOD, bearer(short_lived), {})).user == "bob"
    path.write_text(json.dumps({"keys": [keys["EdDSA"].jwk()]}))  # the RS256 key is gone
    # Within the cache time both are still known without their key...
    assert (await auth.authenticate(METHOD, bearer(long_lived), {})).user == "ana"
    assert (await auth.authenticate(METHOD, bearer(short_lived), {})).user == "bob"
    # ...the short-lived one never past its exp, the other not past the cache time.
    now[0] += 11
    await refused(auth, bearer(short_lived))
    assert (await auth.authenticate(METHOD, bearer(long_lived), {})).user == "ana"
    now[0] += 50
    await refused(auth, bearer(long_lived))


# ---------------------------------------------------------------------- API keys


async def test_api_keys_authenticate_through_the_same_header(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    record, key = ApiKeyStore(path).create(tenant="acme", scopes=["atalaya:on-behalf-of"],
                                           name="ingest")  # fmt: skip
    auth = build_authenticator(EdgeAuthSettings(mode="required", api_keys_file=path))
    assert auth is not None
    who = await auth.authenticate(METHOD, bearer(key), {})
    assert who == Identity("acme", "", frozenset({"atalaya:on-behalf-of"}), "api_key")
    assert await refused(auth, bearer(key[:-2] + "zz")) == INVALID_MESSAGE
    assert await refused(auth, bearer("eyJhbGciOiJub25lIn0.e30.")) == INVALID_MESSAGE  # no JWTs
    ApiKeyStore(path).revoke(record.id)
    no_keys = EdgeAuthenticator(jwt_verifier=None, api_keys=None)
    assert await refused(no_keys, bearer(key)) == INVALID_MESSAGE


# ---------------------------------------------------------------------- settings


def test_authentication_is_off_by_default() -> None:
    assert EdgeAuthSettings().mode == "off"
    assert build_authenticator(EdgeAuthSettings()) is None


@pytest.mark.parametrize(
    "kw",
    [
        {"mode": "required"},  # nothing to check credentials against
        {"issuer": "https://id.example", "audience": ""},
        {"issuer": "http://id.example", "audience": "a"},  # discovery over plain http
        {"issuer": "i", "audience": "a", "jwks_url": "http://10.0.0.1/jwks"},
        {"issuer": "i", "audience": "a", "jwks_url": "https://x/j", "jwks_file": "/j.json"},
    ],
)
def test_unsafe_or_incomplete_settings_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EdgeAuthSettings(**kw)

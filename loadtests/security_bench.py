"""Security figures for `make bench` (loadtests/figures.py has the output format).

auth_overhead   time to first token of a gateway turn that verifies a JWT, p50 in
    ms; baseline: the same turn on a second gateway with authentication off, p50,
    in the same run. Both gateways call one generation service (the simulator at
    0 ms TTFT) and one guardrail (pii alone on the input), optimistic moderation,
    no memory, one turn at a time, as gateway_turn_overhead. Both get the same
    `authorization: Bearer` header: an RS256 token (iss, aud, exp, tenant, sub;
    a 2048-bit key made with `cryptography` in the work directory) that the one
    with ATALAYA_GATEWAY_AUTH__MODE=required verifies against a JWKS file, and
    the other ignores. The two alternate turn by turn (which goes first swaps
    every turn), --auth-turns turns each, so that drifts of the machine's speed
    hit both alike. Goal: ratio <= 1.05. Extras: the p99s, and
    `authenticate()` alone in this process (us per call: header, key lookup,
    RS256 signature, claims).
tls_throughput  texts/s through an embedding service serving mTLS, 32 concurrent
    one-sentence callers on one channel (embedding_throughput's driver), the
    client showing the certificate of a caller the allowlist admits (memory);
    baseline: the same callers against a second embedding service in plaintext.
    Certificates from the local stack's PKI (services/stack/pki.py, ECDSA P-256),
    made in the work directory. Windows on the two services alternate in
    --rounds rounds (first side swapped each round), one side idle while the
    other is driven. Goal: ratio >= 0.9. Each side's channel connects during the
    warm-up: the figure is the per-call cost of encryption and the peer check,
    not of handshakes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import numpy as np
from atalaya.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from cryptography.hazmat.primitives.asymmetric import rsa

from loadtests.embedding_bench import RAMP_S, TEXTS, Drive, drive_window, embedding_env
from loadtests.figures import Figure, Output, Samples, progress, ratio, rounded
from loadtests.gateway_bench import chat_request, ttft_samples
from loadtests.processes import running
from loadtests.sentences import make_sentences
from services.client import EmbeddingClient
from services.common import topology
from services.common.edge_auth import EdgeAuthSettings, build_authenticator
from services.common.identity import AUTHORIZATION_KEY
from services.common.process import HOST, free_port
from services.common.settings import ChannelTLSSettings
from services.stack.pki import LocalPKI

AUTH_FIGURE = "auth_overhead"
TLS_FIGURE = "tls_throughput"
SECURITY_FIGURES = (AUTH_FIGURE, TLS_FIGURE)
AUTH_GOAL_MAX = 1.05
TLS_GOAL_MIN = 0.9

ISSUER = "https://issuer.bench.invalid"
AUDIENCE = "atalaya-bench"
TENANT = "bench"
KEY_ID = "bench-rs256"
RSA_BITS = 2048
TOKEN_LIFETIME_S = 3600
MAX_TOKENS = 8
OPTIMISTIC = gateway_pb2.MODERATION_MODE_OPTIMISTIC
#: In-process authenticate() calls timed (after a tenth as many untimed ones).
AUTHENTICATE_CALLS = 2000
#: The workload whose certificate the mTLS callers show: one that the embedding
#: service's allowlist admits.
TLS_CALLER = topology.callers_of("embedding")[0]
AUTH_SIDES = ("off", "required")
TLS_SIDES = ("plaintext", "mtls")


# ------------------------------------------------------------------ auth_overhead


@dataclass(frozen=True)
class Issuer:
    """An issuer's JWKS file and a token it signed for the bench's user."""

    settings: EdgeAuthSettings
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTHORIZATION_KEY, f"Bearer {self.token}"),)

    def gateway_env(self) -> dict[str, str]:
        """The gateway settings that require and verify its tokens."""
        s = self.settings
        prefix = f"{topology.service('gateway').env_prefix}AUTH__"
        return {
            f"{prefix}MODE": s.mode,
            f"{prefix}ISSUER": s.issuer,
            f"{prefix}AUDIENCE": s.audience,
            f"{prefix}JWKS_FILE": str(s.jwks_file),
            f"{prefix}TENANT_CLAIM": s.tenant_claim,
            f"{prefix}USER_CLAIM": s.user_claim,
        }


def make_issuer(folder: Path, user: str) -> Issuer:
    """A new RSA key: its public half as a JWKS file in `folder`, a token for `user`."""
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=KEY_ID, alg="RS256", use="sig")
    jwks_file = folder / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    settings = EdgeAuthSettings(
        mode="required", issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_file
    )
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        settings.user_claim: user,
        settings.tenant_claim: TENANT,
        "iat": now,
        "exp": now + TOKEN_LIFETIME_S,
    }
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": KEY_ID})
    return Issuer(settings, token)


def _turn(i: int) -> gateway_pb2.ChatRequest:
    return chat_request(i, MAX_TOKENS, OPTIMISTIC)


def _is_delta(event: Any) -> bool:
    return bool(event.HasField("delta"))


@contextlib.contextmanager
def _gateways(workdir: Path, issuer: Issuer) -> Iterator[dict[str, str]]:
    """Generation (simulator), guardrail (pii) and two gateways calling them: their
    targets by auth mode, "off" and "required" (the issuer's tokens)."""
    with contextlib.ExitStack() as stack:

        def start(name: str, label: str, settings: dict[str, str]) -> str:
            def env(port: int) -> dict[str, str]:
                return {**topology.listen_env(name, HOST, port), **settings}

            return stack.enter_context(running(f"services.{name}", env, workdir, label))

        upstreams = {
            "generation": start(
                "generation", "sec-generation", {"ATALAYA_GENERATION_BACKEND": "sim"}
            ),
            "guardrail": start(
                "guardrail",
                "sec-guardrail",
                {
                    "ATALAYA_GUARDRAIL_DETECTORS": '["pii"]',
                    "ATALAYA_GUARDRAIL_DEFAULT_POLICY": "pii",
                },
            ),
            "memory": f"{HOST}:{free_port()}",  # not called: no memory in these turns
        }
        gateway = {
            **topology.upstream_env("gateway", upstreams),
            "ATALAYA_GATEWAY_INPUT_POLICY": "pii",
            "ATALAYA_GATEWAY_MAX_PARALLEL_CHECKS": "4",
        }
        yield {
            "off": start("gateway", "sec-gateway", gateway),
            "required": start("gateway", "sec-gateway-auth", {**gateway, **issuer.gateway_env()}),
        }


def _order(sides: tuple[str, str], step: int) -> tuple[str, str]:
    """Both sides, which goes first swapped at every step (a turn, a round)."""
    return sides if step % 2 == 0 else (sides[1], sides[0])


async def _enforced(target: str) -> None:
    """Fail the bench unless the gateway refuses a turn without a token: the
    figure would otherwise time a gateway that verifies nothing."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            async for _ in gateway_pb2_grpc.GatewayServiceStub(channel).Chat(_turn(0), timeout=30):
                pass
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                return
            raise
    raise RuntimeError(f"the gateway on {target} served a turn without a token")


async def measure_turns(targets: dict[str, str], issuer: Issuer, turns: int) -> dict[str, Samples]:
    """TTFT of `turns` turns on each gateway, every call with the token. The two
    alternate turn by turn (which goes first swaps every turn), so both see the
    same moments of a shared, drifting machine."""
    await _enforced(targets["required"])
    seconds: dict[str, list[float]] = {side: [] for side in AUTH_SIDES}
    note_every = max(1, turns // 5)
    async with contextlib.AsyncExitStack() as stack:
        chats = {}
        for side in AUTH_SIDES:
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(targets[side]))
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            chats[side] = functools.partial(stub.Chat, metadata=issuer.metadata)
            await ttft_samples(chats[side], _turn, 0, _is_delta)  # the untimed warm-up
        for i in range(turns):
            for side in _order(AUTH_SIDES, i):
                seconds[side] += await ttft_samples(chats[side], _turn, 1, _is_delta, warmup=0)
            if (i + 1) % note_every == 0:
                p50 = {side: Samples.ms(seconds[side]).p50 for side in AUTH_SIDES}
                progress(
                    f"{i + 1}/{turns} turns each: TTFT p50 auth off {p50['off']:.2f} ms, "
                    f"required {p50['required']:.2f} ms"
                )
    return {side: Samples.ms(seconds[side]) for side in AUTH_SIDES}


async def measure_authenticate(issuer: Issuer, calls: int) -> Samples:
    """Seconds per authenticate() of the token in this process, as the gateway's
    interceptor calls it (the JWKS file read once, then cached)."""
    authenticator = build_authenticator(issuer.settings)
    assert authenticator is not None
    method = f"/{topology.service('gateway').grpc_service}/Chat"
    seconds = []
    for i in range(calls + calls // 10):
        started = time.perf_counter()
        await authenticator.authenticate(method, issuer.metadata, {})
        if i >= calls // 10:
            seconds.append(time.perf_counter() - started)
    return Samples.of(seconds, 1e6)


@dataclass(frozen=True)
class AuthRun:
    turns: dict[str, Samples]  # ms, by auth mode
    authenticate_us: Samples


def _measure_auth(args: argparse.Namespace, workdir: Path) -> AuthRun:
    issuer = make_issuer(workdir / "jwt", _turn(0).user_id)
    authenticate_us = asyncio.run(measure_authenticate(issuer, AUTHENTICATE_CALLS))
    progress(f"authenticate() in-process: p50 {authenticate_us.p50:.0f} us")
    with _gateways(workdir, issuer) as targets:
        progress(f"auth_overhead: {args.auth_turns} turns per gateway, alternating")
        turns = asyncio.run(measure_turns(targets, issuer, args.auth_turns))
    return AuthRun(turns, authenticate_us)


def _auth_figure(run: AuthRun) -> Figure:
    on, off = run.turns["required"], run.turns["off"]
    achieved = ratio(on.p50, off.p50)
    return Figure(
        AUTH_FIGURE,
        on.p50,
        off.p50,
        "ms",
        {
            "goal": f"ratio <= {AUTH_GOAL_MAX}",
            "goal_met": achieved is not None and achieved <= AUTH_GOAL_MAX,
            "p99": rounded(on.p99),
            "baseline_p99": rounded(off.p99),
            "p99_ratio": _rounded_ratio(on.p99, off.p99),
            "overhead_p50_ms": rounded(on.p50 - off.p50),
            "authenticate_us": run.authenticate_us.summary(),
            "service_ms": on.summary(),
            "baseline_ms": off.summary(),
            "turns": len(on),
            "notes": "time to first token of one turn at a time through a gateway with "
            "AUTH__MODE=required (RS256 JWT, 2048-bit key, JWKS file) against a gateway "
            "with auth off, both sent the same token, the two alternating turn by turn; "
            "simulator at 0 ms TTFT, pii guard, optimistic moderation, no memory; "
            "authenticate_us: the authenticator alone in the bench's process",
        },
    )


# ----------------------------------------------------------------- tls_throughput


@dataclass(frozen=True)
class TlsRun:
    drives: dict[str, Drive]  # by TLS mode
    rounds: int
    concurrency: int


async def measure_tls_throughput(
    targets: dict[str, tuple[str, ChannelTLSSettings | None]],
    texts: Sequence[str],
    args: argparse.Namespace,
) -> dict[str, Drive]:
    """Windows of `args.concurrency` callers on each service, alternating in
    `args.rounds` rounds, after a warm-up of each."""
    window_s = args.duration / args.rounds
    drives = {side: Drive() for side in TLS_SIDES}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            side: await stack.enter_async_context(EmbeddingClient.connect(target, tls=tls))
            for side, (target, tls) in targets.items()
        }

        async def window(side: str, ramp_s: float, measured_s: float, into: Drive) -> None:
            await drive_window(
                clients[side],
                texts,
                concurrency=args.concurrency,
                ramp_s=ramp_s,
                window_s=measured_s,
                into=into,
            )

        for side in TLS_SIDES:
            await window(side, args.warmup, 0.0, Drive())
        for r in range(args.rounds):
            for side in _order(TLS_SIDES, r):
                await window(side, RAMP_S, window_s, drives[side])
            rates = ", ".join(f"{side} {drives[side].tally.rate:.1f}" for side in TLS_SIDES)
            progress(f"round {r + 1}/{args.rounds}: texts/s {rates} (running)")
    return drives


def _measure_tls(args: argparse.Namespace, workdir: Path) -> TlsRun:
    pki = LocalPKI(workdir / "tls").ensure(["embedding", TLS_CALLER])
    client_tls = pki.client_tls(TLS_CALLER)
    texts = make_sentences(TEXTS, np.random.default_rng(args.seed))
    overrides = dict(args.set)

    def mtls_env(port: int) -> dict[str, str]:
        return {**embedding_env(port), **pki.service_env("embedding", "mtls")}

    with (
        running("services.embedding", embedding_env, workdir, "sec-embedding", overrides) as plain,
        running(
            "services.embedding", mtls_env, workdir, "sec-embedding-mtls", overrides, tls=client_tls
        ) as mtls,
    ):
        progress(
            f"tls_throughput: {args.concurrency} callers, warm-up {args.warmup:.0f}s each, "
            f"{args.duration:.0f}s measured per side in {args.rounds} rounds"
        )
        targets = {"plaintext": (plain, None), "mtls": (mtls, client_tls)}
        drives = asyncio.run(measure_tls_throughput(targets, texts, args))
    return TlsRun(drives, args.rounds, args.concurrency)


def _latency(drive: Drive) -> dict[str, float] | None:
    return Samples.ms(drive.samples).summary() if drive.samples else None


def _tls_figure(run: TlsRun) -> Figure:
    mtls, plain = run.drives["mtls"], run.drives["plaintext"]
    achieved = ratio(mtls.tally.rate, plain.tally.rate)
    return Figure(
        TLS_FIGURE,
        mtls.tally.rate,
        plain.tally.rate,
        "texts/s",
        {
            "goal": f"ratio >= {TLS_GOAL_MIN}",
            "goal_met": achieved is not None and achieved >= TLS_GOAL_MIN,
            "concurrency": run.concurrency,
            "rounds": run.rounds,
            "duration_s": {side: rounded(d.tally.seconds) for side, d in run.drives.items()},
            "completed": {side: d.tally.texts for side, d in run.drives.items()},
            "errors": {side: d.errors for side, d in run.drives.items()},
            "call_latency_ms": _latency(mtls),
            "baseline_call_latency_ms": _latency(plain),
            "notes": "unary Embed of one sentence per call, one channel per side: an "
            "embedding service with TLS__MODE=mtls (local CA, ECDSA P-256; the client "
            f"shows the {TLS_CALLER} service's certificate) against one in plaintext, "
            "default settings otherwise; their windows alternate in rounds, never overlapping",
        },
    )


def _rounded_ratio(value: float, baseline: float) -> float | None:
    r = ratio(value, baseline)
    return None if r is None else round(r, 4)


def bench_security(args: argparse.Namespace, workdir: Path, out: Output) -> None:
    if AUTH_FIGURE in out.selected:
        out.emit(_auth_figure(_measure_auth(args, workdir)))
    if TLS_FIGURE in out.selected:
        out.emit(_tls_figure(_measure_tls(args, workdir)))

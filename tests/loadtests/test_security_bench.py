"""The security bench (loadtests/security_bench.py): its token is one the gateway's
authenticator accepts, and at a tiny size both figures come out well formed, named
and in their units, on real processes. Timing values are never judged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from loadtests.bench import parse_args
from loadtests.figures import Output
from loadtests.security_bench import (
    AUTH_FIGURE,
    TLS_FIGURE,
    TLS_SIDES,
    bench_security,
    make_issuer,
)
from services.common import errors
from services.common.edge_auth import build_authenticator
from services.common.identity import AUTHORIZATION_KEY

SUMMARY_KEYS = {"p50", "p90", "p99", "mean"}
METHOD = "/atalaya.gateway.v1.GatewayService/Chat"


def test_security_is_a_group_of_both_figures() -> None:
    assert parse_args(["--only", "security"]).selected == {AUTH_FIGURE, TLS_FIGURE}
    assert parse_args(["--only", TLS_FIGURE]).selected == {TLS_FIGURE}


def test_the_benchs_token_is_what_the_gateway_accepts(tmp_path: Path) -> None:
    issuer = make_issuer(tmp_path, "ana")
    authenticator = build_authenticator(issuer.settings)
    assert authenticator is not None
    who = asyncio.run(authenticator.authenticate(METHOD, issuer.metadata, {}))
    assert (who.tenant, who.user, who.method) == ("bench", "ana", "jwt")
    # The gateway's settings name the same JWKS file the token was signed for.
    env = issuer.gateway_env()
    assert env["ATALAYA_GATEWAY_AUTH__MODE"] == "required"
    assert Path(env["ATALAYA_GATEWAY_AUTH__JWKS_FILE"]) == tmp_path / "jwks.json"
    # A token of another key is refused: the JWKS file really is what verifies.
    other = make_issuer(tmp_path / "other", "ana")
    forged = ((AUTHORIZATION_KEY, f"Bearer {other.token}"),)
    with pytest.raises(errors.Unauthenticated):
        asyncio.run(authenticator.authenticate(METHOD, forged, {}))


def _figures(argv: list[str], workdir: Path, capsys: pytest.CaptureFixture[str]) -> list[Any]:
    args = parse_args(argv)
    bench_security(args, workdir, Output(args.selected, {"run": "test"}))
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _well_formed(figure: dict[str, Any], name: str, unit: str) -> None:
    assert (figure["name"], figure["unit"], figure["run"]) == (name, unit, "test")
    assert isinstance(figure["value"], float) and isinstance(figure["baseline"], float)
    if figure["baseline"] > 0:
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"], rel=1e-3)
    assert isinstance(figure["goal"], str) and isinstance(figure["goal_met"], bool)


@pytest.mark.integration
def test_auth_overhead_at_a_tiny_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [figure] = _figures(["--only", AUTH_FIGURE, "--auth-turns", "3"], tmp_path, capsys)
    _well_formed(figure, AUTH_FIGURE, "ms")
    assert figure["turns"] == 3  # every turn of the auth gateway streamed a reply
    assert set(figure["service_ms"]) == set(figure["baseline_ms"]) == SUMMARY_KEYS
    assert set(figure["authenticate_us"]) == SUMMARY_KEYS
    assert {"p99", "baseline_p99", "p99_ratio", "overhead_p50_ms"} <= figure.keys()


@pytest.mark.integration
def test_tls_throughput_at_a_tiny_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--only", TLS_FIGURE, "--duration", "1", "--rounds", "2", "--warmup", "0.2"]
    [figure] = _figures([*argv, "--concurrency", "4"], tmp_path, capsys)
    _well_formed(figure, TLS_FIGURE, "texts/s")
    assert (figure["concurrency"], figure["rounds"]) == (4, 2)
    # No call failed on either side: the mTLS client's certificate was admitted.
    assert figure["errors"] == dict.fromkeys(TLS_SIDES, 0)
    assert set(figure["completed"]) == set(figure["duration_s"]) == set(TLS_SIDES)
    assert (tmp_path / "tls" / "ca.pem").exists()  # the certificates were made in the workdir

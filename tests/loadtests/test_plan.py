"""The capacity and cost plan's arithmetic, with the seed's examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.plan import (
    MODELS,
    PlanInputs,
    hosted_cost_per_user_day,
    main,
    plan,
    replicas_needed,
    self_hosted_cost_per_user_day,
    users_per_replica,
    vram,
)


def test_seed_cost_example_035_per_user() -> None:
    # The seed: a 5,000-token prompt, 10 calls per user, GPT-4o. At GPT-4o's launch
    # prices ($5 per million input tokens, $15 per million output tokens) the input
    # alone is 5,000 x 10 x $5/M = $0.25; with about 667 output tokens per call
    # (10 x 667 x $15/M = $0.10) the day costs $0.35.
    assert pytest.approx(0.25) == 5_000 * 10 * 5 / 1e6
    cost = hosted_cost_per_user_day(10, 5_000, 667, input_usd_per_m=5.0, output_usd_per_m=15.0)
    assert cost == pytest.approx(0.35, abs=0.001)
    # The same use at today's GPT-4o list prices ($2.50 / $10 per million): $0.19.
    today = hosted_cost_per_user_day(10, 5_000, 667, input_usd_per_m=2.5, output_usd_per_m=10.0)
    assert today == pytest.approx(0.125 + 0.0667, abs=0.001)


def test_vram_reproduces_the_seed_figures() -> None:
    # 7B at 16-bit: the weights alone are 7e9 x 2 bytes = 14 GB; a short context adds little.
    assert vram(MODELS["7b"], "fp16").weights_gb == pytest.approx(14.0)
    small = vram(MODELS["7b"], "fp16", context_tokens=1024, concurrency=1)
    assert small.kv_cache_gb == pytest.approx(2 * 32 * 32 * 128 * 2 * 1024 / 1e9)
    assert small.total_gb == pytest.approx(14.0, rel=0.05)
    # 70B at 16-bit: 140 GB of weights + the KV cache of 8 sequences of 8k tokens
    # (2 x 80 layers x 8 KV heads x 128 x 2 bytes = 327,680 bytes per token) ~ 160 GB.
    big = vram(MODELS["70b"], "bf16", context_tokens=8192, concurrency=8)
    assert big.weights_gb == pytest.approx(140.0)
    assert big.kv_cache_gb == pytest.approx(327_680 * 8192 * 8 / 1e9)
    assert big.total_gb == pytest.approx(160.0, rel=0.03)
    # Lower precision halves the weights; an overhead fraction adds to them.
    assert vram(MODELS["70b"], "int8").weights_gb == pytest.approx(70.0)
    assert vram(MODELS["70b"], "int4").weights_gb == pytest.approx(35.0)
    assert vram(MODELS["7b"], "fp16", overhead_fraction=0.1).total_gb == pytest.approx(15.4)


def test_replicas_and_self_hosted_cost() -> None:
    assert replicas_needed(100, 2.0, 8) == 25
    assert replicas_needed(100, 1.0, 8) == 13
    assert replicas_needed(1, 1.0, 8) == 1
    with pytest.raises(ValueError):
        replicas_needed(10, 1.0, 0)
    # 25 replicas x 1 GPU x $2.50/h x 24 h = $1,500/day over 1,000 users = $1.50 each.
    assert self_hosted_cost_per_user_day(25, 1, 2.5, 1000) == pytest.approx(1.5)


SUMMARY = {
    "chat": {"input_tokens_mean": 400.0, "output_tokens_mean": 100.0},
    "by_users": [
        {"users": 2, "throughput_rps": 1.0, "goodput_rps": 1.0, "slo_p95_met": True},
        {"users": 4, "throughput_rps": 2.0, "goodput_rps": 1.9, "slo_p95_met": True},
        {"users": 6, "throughput_rps": 2.5, "goodput_rps": 1.0, "slo_p95_met": False},
    ],
}


def test_users_per_replica_from_a_summary() -> None:
    capacity = users_per_replica(SUMMARY)
    assert capacity.users_per_replica == 4 and not capacity.lower_bound
    only_good = {"by_users": SUMMARY["by_users"][:2]}
    assert users_per_replica(only_good).lower_bound  # the knee was not reached
    assert users_per_replica({"by_users": SUMMARY["by_users"][2:]}).users_per_replica == 0


def test_plan_from_a_summary() -> None:
    p = plan(SUMMARY, PlanInputs(concurrent_users=100, peak_factor=2, daily_users=1000))
    assert p["users_per_replica"] == 4
    assert p["replicas"] == 50
    assert p["tokens_per_call"] == {"input": 400.0, "output": 100.0}
    assert p["hosted_usd_per_user_day"] == pytest.approx(10 * (400 * 2.5 + 100 * 10) / 1e6)
    assert p["self_hosted_usd_per_user_day"] == pytest.approx(50 * 2.5 * 24 / 1000)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(SUMMARY))
    assert main(["--summary", str(path), "--users", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replicas"] == 20 and out["users_per_replica"] == 4
    assert main(["--summary", str(path), "--model", "70b", "--context", "8192",
                 "--concurrency", "8"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "users per replica at the SLO: 4" in text and "161.5 GB" in text
    assert main(["--summary", str(tmp_path / "missing.json")]) == 1


def test_atalaya_plan_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli.__main__ import main as atalaya

    code = atalaya(["plan", "--users-per-replica", "8", "--users", "100", "--input-tokens",
                    "5000", "--output-tokens", "667", "--input-usd-per-m", "5",
                    "--output-usd-per-m", "15", "--json"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replicas"] == 25
    assert out["hosted_usd_per_user_day"] == pytest.approx(0.35, abs=0.001)

"""Capacity and cost plan from a load test's summary.json (`atalaya plan`, `make plan`).

    python -m loadtests.plan --summary .state/loadtest/<ts>/summary.json \
        --users 500 --peak-factor 2 --calls-per-user 10 --gpu-hour-usd 2.5 \
        --model 8b --precision fp16 --context 8192 --concurrency 16

What it computes (see loadtests/README.md for the reasoning and the checks):

* users per replica: the most running users at which the load test met every SLO at
  p95 (TTFT, TPOT, E2E), from the summary's per-level table; "at least" when even
  the highest level measured met them (the test did not reach the knee).
* replicas = ceil(concurrent users x peak factor / users per replica).
* hosted API cost per user per day = calls x (input tokens x input price + output
  tokens x output price) / 1e6 (prices per million tokens).
* self-hosting cost per user per day = replicas x GPUs per replica x $/GPU-hour x 24
  / daily users (replicas sized for the peak, kept all day).
* VRAM = parameters x bytes per parameter + KV cache, where the KV cache holds
  2 (K and V) x layers x KV heads x head dim x bytes per element for every token of
  context x concurrent sequences; plus an optional overhead fraction of the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GB = 1e9  # decimal gigabytes, as GPU memory and the seed's rule of thumb are quoted

#: Bytes per parameter (or per KV-cache element) by precision.
BYTES_PER_VALUE = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "16bit": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "8bit": 1.0,
    "int4": 0.5,
    "4bit": 0.5,
}


@dataclass(frozen=True)
class ModelSpec:
    """What the memory estimate needs from a model: parameters (billions, nominal as
    in the model's name) and the attention shape that sizes its KV cache."""

    params_b: float
    layers: int
    kv_heads: int
    head_dim: int

    def kv_bytes_per_token(self, kv_precision: str = "fp16") -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * BYTES_PER_VALUE[kv_precision]


#: Presets with the published shapes of well-known models of each size.
MODELS = {
    "135m": ModelSpec(0.135, 30, 3, 64),  # SmolLM2-135M (the local model)
    "1b": ModelSpec(1.0, 16, 8, 64),  # Llama 3.2 1B / Llama Guard 3 1B
    "3b": ModelSpec(3.0, 28, 8, 128),  # Llama 3.2 3B
    "7b": ModelSpec(7.0, 32, 32, 128),  # Llama 2 7B (multi-head attention)
    "8b": ModelSpec(8.0, 32, 8, 128),  # Llama 3.1 8B / Llama Guard 3 8B (GQA)
    "13b": ModelSpec(13.0, 40, 40, 128),  # Llama 2 13B
    "70b": ModelSpec(70.0, 80, 8, 128),  # Llama 2/3 70B (GQA)
}


@dataclass(frozen=True)
class Vram:
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.kv_cache_gb + self.overhead_gb


def vram(
    model: ModelSpec,
    precision: str = "fp16",
    *,
    context_tokens: int = 0,
    concurrency: int = 1,
    kv_precision: str = "fp16",
    overhead_fraction: float = 0.0,
) -> Vram:
    """GPU memory for the weights and the KV cache of `concurrency` sequences of
    `context_tokens` tokens each."""
    weights = model.params_b * 1e9 * BYTES_PER_VALUE[precision]
    kv = model.kv_bytes_per_token(kv_precision) * context_tokens * concurrency
    return Vram(weights / GB, kv / GB, weights * overhead_fraction / GB)


def hosted_cost_per_user_day(
    calls_per_user: float,
    input_tokens: float,
    output_tokens: float,
    input_usd_per_m: float,
    output_usd_per_m: float,
) -> float:
    """A hosted API's cost of one user's day: every call pays its prompt and reply."""
    return (
        calls_per_user * (input_tokens * input_usd_per_m + output_tokens * output_usd_per_m) / 1e6
    )


def replicas_needed(concurrent_users: float, peak_factor: float, users_per_replica: float) -> int:
    if users_per_replica <= 0:
        raise ValueError("users per replica must be > 0 (no level of the test met the SLOs)")
    return max(1, math.ceil(concurrent_users * peak_factor / users_per_replica - 1e-9))


def self_hosted_cost_per_user_day(
    replicas: int, gpus_per_replica: float, gpu_hour_usd: float, daily_users: float
) -> float:
    """Replicas sized for the peak and kept all day, shared by the day's users."""
    return replicas * gpus_per_replica * gpu_hour_usd * 24.0 / daily_users


@dataclass(frozen=True)
class Capacity:
    users_per_replica: int
    lower_bound: bool  # True when the highest level measured still met the SLOs
    levels: list[dict[str, Any]]


def users_per_replica(summary: dict[str, Any]) -> Capacity:
    """The most running users at which the test met every SLO at p95."""
    levels = [
        {k: row.get(k) for k in ("users", "throughput_rps", "goodput_rps", "slo_p95_met")}
        for row in summary.get("by_users", [])
    ]
    met = [row["users"] for row in levels if row["slo_p95_met"]]
    if not met:
        return Capacity(0, False, levels)
    best = max(met)
    return Capacity(best, best == max(row["users"] for row in levels), levels)


@dataclass(frozen=True)
class PlanInputs:
    concurrent_users: float = 100.0
    peak_factor: float = 2.0
    daily_users: float = 0.0  # 0: the same as concurrent_users
    calls_per_user: float = 10.0
    input_tokens: float = 0.0  # 0: the summary's mean per chat turn
    output_tokens: float = 0.0
    input_usd_per_m: float = 2.5  # GPT-4o list price per million input tokens
    output_usd_per_m: float = 10.0  # ... and output tokens
    gpu_hour_usd: float = 2.5
    gpus_per_replica: float = 1.0
    users_per_replica: int = 0  # 0: from the summary
    model: str = "8b"
    precision: str = "fp16"
    context_tokens: int = 8192
    concurrency: int = 16
    overhead_fraction: float = 0.0


def plan(summary: dict[str, Any] | None, inputs: PlanInputs) -> dict[str, Any]:
    chat = (summary or {}).get("chat", {})
    capacity = users_per_replica(summary) if summary else Capacity(0, False, [])
    upr = inputs.users_per_replica or capacity.users_per_replica
    daily = inputs.daily_users or inputs.concurrent_users
    input_tokens = inputs.input_tokens or float(chat.get("input_tokens_mean") or 0.0)
    output_tokens = inputs.output_tokens or float(chat.get("output_tokens_mean") or 0.0)
    replicas = replicas_needed(inputs.concurrent_users, inputs.peak_factor, upr) if upr else None
    memory = vram(
        MODELS[inputs.model],
        inputs.precision,
        context_tokens=inputs.context_tokens,
        concurrency=inputs.concurrency,
        overhead_fraction=inputs.overhead_fraction,
    )
    return {
        "inputs": asdict(inputs),
        "users_per_replica": upr,
        "users_per_replica_is_lower_bound": capacity.lower_bound and not inputs.users_per_replica,
        "levels": capacity.levels,
        "replicas": replicas,
        "tokens_per_call": {"input": input_tokens, "output": output_tokens},
        "hosted_usd_per_user_day": hosted_cost_per_user_day(
            inputs.calls_per_user,
            input_tokens,
            output_tokens,
            inputs.input_usd_per_m,
            inputs.output_usd_per_m,
        ),
        "self_hosted_usd_per_user_day": (
            self_hosted_cost_per_user_day(
                replicas, inputs.gpus_per_replica, inputs.gpu_hour_usd, daily
            )
            if replicas
            else None
        ),
        "vram_gb": {**asdict(memory), "total_gb": memory.total_gb},
        "vram_table_gb": {
            name: {p: round(vram(spec, p).weights_gb, 1) for p in ("fp16", "int8", "int4")}
            for name, spec in MODELS.items()
        },
    }


def format_plan(p: dict[str, Any]) -> str:
    i = p["inputs"]
    upr = p["users_per_replica"]
    at_least = "at least " if p["users_per_replica_is_lower_bound"] else ""
    measured = sorted(row["users"] for row in p["levels"])
    found = (
        f"{at_least}{upr}"
        if upr
        else f"no level met the SLO (levels measured: {measured or 'none'}; test fewer "
        "users, a step ramp, or give --users-per-replica)"
    )
    lines = [
        "Capacity",
        f"  users per replica at the SLO: {found}",
        f"  replicas for {i['concurrent_users']:g} concurrent users x peak {i['peak_factor']:g}: "
        f"{p['replicas'] if p['replicas'] is not None else '-'}",
        "Cost per user per day",
        f"  hosted API: ${p['hosted_usd_per_user_day']:.4f} ({i['calls_per_user']:g} calls x "
        f"{p['tokens_per_call']['input']:.0f} in / {p['tokens_per_call']['output']:.0f} out "
        f"tokens at ${i['input_usd_per_m']:g} / ${i['output_usd_per_m']:g} per M)",
    ]
    if p["self_hosted_usd_per_user_day"] is not None:
        lines.append(
            f"  self-hosted: ${p['self_hosted_usd_per_user_day']:.4f} ({p['replicas']} replicas x "
            f"{i['gpus_per_replica']:g} GPU x ${i['gpu_hour_usd']:g}/h x 24 h / "
            f"{i['daily_users'] or i['concurrent_users']:g} users)"
        )
    v = p["vram_gb"]
    lines += [
        f"VRAM for {i['model']} at {i['precision']}, {i['context_tokens']} tokens x "
        f"{i['concurrency']} sequences: {v['total_gb']:.1f} GB (weights {v['weights_gb']:.1f}"
        f" + KV cache {v['kv_cache_gb']:.1f} + overhead {v['overhead_gb']:.1f})",
        "Weights only (GB): "
        + ", ".join(
            f"{n} {t['fp16']}/{t['int8']}/{t['int4']}" for n, t in p["vram_table_gb"].items()
        )
        + " (fp16/int8/int4)",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PlanInputs()
    parser.add_argument("--summary", type=Path, help="a load test's summary.json")
    parser.add_argument("--users", dest="concurrent_users", type=float, default=d.concurrent_users,
                        help="concurrent users to serve (default %(default)s)")  # fmt: skip
    parser.add_argument("--peak-factor", type=float, default=d.peak_factor)
    parser.add_argument("--daily-users", type=float, default=d.daily_users,
                        help="users per day for the per-user cost (default: --users)")  # fmt: skip
    parser.add_argument("--calls-per-user", type=float, default=d.calls_per_user)
    parser.add_argument("--input-tokens", type=float, default=d.input_tokens,
                        help="per call (default: the summary's mean)")  # fmt: skip
    parser.add_argument("--output-tokens", type=float, default=d.output_tokens)
    parser.add_argument("--input-usd-per-m", type=float, default=d.input_usd_per_m)
    parser.add_argument("--output-usd-per-m", type=float, default=d.output_usd_per_m)
    parser.add_argument("--gpu-hour-usd", type=float, default=d.gpu_hour_usd)
    parser.add_argument("--gpus-per-replica", type=float, default=d.gpus_per_replica)
    parser.add_argument("--users-per-replica", type=int, default=0,
                        help="instead of the summary's (default: from --summary)")  # fmt: skip
    parser.add_argument("--model", choices=sorted(MODELS), default=d.model)
    parser.add_argument("--precision", choices=sorted(BYTES_PER_VALUE), default=d.precision)
    parser.add_argument("--context", dest="context_tokens", type=int, default=d.context_tokens)
    parser.add_argument("--concurrency", type=int, default=d.concurrency)
    parser.add_argument("--overhead-fraction", type=float, default=d.overhead_fraction)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    summary = None
    if args.summary is not None:
        try:
            summary = json.loads(Path(args.summary).read_text())
        except (OSError, ValueError) as exc:
            print(f"plan: cannot read {args.summary}: {exc}", file=sys.stderr)
            return 1
    names = set(PlanInputs.__dataclass_fields__)
    inputs = PlanInputs(**{k: v for k, v in vars(args).items() if k in names})
    result = plan(summary, inputs)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atalaya plan", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

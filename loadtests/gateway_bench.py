"""Gateway figures for `make bench` (loadtests/figures.py has the output format).

gateway_turn_overhead  time to first token through the gateway minus straight
    from generation, p50 in ms (p99 as an extra), one turn at a time: the
    simulator at 0 ms TTFT, the pii-only guard on the input, optimistic output
    moderation (buffered mode holds the first window by design; its TTFT is an
    extra), no memory. The same with speculative_generation on (generation
    starts alongside the input check) is an extra too. Baseline: a raw grpc.aio
    unary echo's p50 in the same
    run (no Atalaya code on that path); the ratio is overhead / echo, goal <= 4.
gateway_token_overhead  32 streams at once, 256 tokens each, simulator at full
    speed: microseconds per token the gateway adds (its output checks included)
    over the same streams straight from generation, p50 over streams. Goal:
    <= 1000 us.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from atalaya.generation.v1 import generation_pb2, generation_pb2_grpc

from loadtests.echo import echo_latencies
from loadtests.figures import Figure, Output, Samples
from services.common.health import SERVING
from services.common.process import HOST, ServiceProcess, free_port, wait_for_status

TURN_FIGURE = "gateway_turn_overhead"
TOKEN_FIGURE = "gateway_token_overhead"  # noqa: S105 - a figure name
GATEWAY_FIGURES = (TURN_FIGURE, TOKEN_FIGURE)
STREAMS = 32
TOKENS_PER_STREAM = 256
MESSAGE = "Tell me about lighthouses."


def chat_request(
    i: int, max_tokens: int, mode: gateway_pb2.ModerationMode.ValueType
) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        request_id=f"bench-turn-{i}",
        user_id="bench",
        session_id="bench",
        message=MESSAGE,
        options=gateway_pb2.ChatOptions(
            max_tokens=max_tokens,
            moderation_mode=mode,
            use_memory=False,
            remember=False,
            seed=i,
        ),
    )


def _generate(i: int, max_tokens: int) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        request_id=f"bench-gen-{i}",
        chat=generation_pb2.Conversation(
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=MESSAGE)]
        ),
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, seed=i),
    )


async def ttft_samples(
    stub: Any, make: Any, calls: int, is_delta: Any, *, warmup: int = 10
) -> list[float]:
    """Seconds to the first event that `is_delta` accepts, of `calls` streams one
    after another (`make(i)` is the i-th request), after `warmup` untimed ones."""
    samples = []
    for i in range(calls + warmup):
        started = time.perf_counter()
        first: float | None = None
        async for event in stub(make(i), timeout=30):
            if first is None and is_delta(event):
                first = time.perf_counter() - started
        if i >= warmup and first is not None:
            samples.append(first)
    return samples


async def _streams(stub: Any, make: Any, count_tokens: Any) -> list[float]:
    """Seconds per token of each of STREAMS concurrent streams."""

    async def one(i: int) -> float:
        started = time.perf_counter()
        tokens = 0
        async for event in stub(make(i), timeout=120):
            tokens += count_tokens(event)
        return (time.perf_counter() - started) / max(tokens, 1)

    return list(await asyncio.gather(*(one(i) for i in range(STREAMS))))


@contextlib.contextmanager
def _services(workdir: Path) -> Iterator[dict[str, str]]:
    gen_port, guard_port, gw_port, spec_port, echo_port = (free_port() for _ in range(5))
    generation = ServiceProcess(
        "services.generation",
        gen_port,
        {
            "ATALAYA_GENERATION_BACKEND": "sim",
            "ATALAYA_GENERATION_SIM__MAX_CONCURRENT_SEQUENCES": str(STREAMS),
            "ATALAYA_GENERATION_SIM__MAX_QUEUED_REQUESTS": str(STREAMS),
        },
        workdir / "gw-generation.log",
    )
    guard = ServiceProcess(
        "services.guardrail",
        guard_port,
        {"ATALAYA_GUARDRAIL_DETECTORS": '["pii"]', "ATALAYA_GUARDRAIL_DEFAULT_POLICY": "pii"},
        workdir / "gw-guardrail.log",
    )
    gateway_env = {
        "ATALAYA_GATEWAY_GUARDRAIL__TARGET": f"{HOST}:{guard_port}",
        "ATALAYA_GATEWAY_GENERATION__TARGET": f"{HOST}:{gen_port}",
        "ATALAYA_GATEWAY_MEMORY__TARGET": f"{HOST}:{free_port()}",  # not called
        "ATALAYA_GATEWAY_INPUT_POLICY": "pii",
        "ATALAYA_GATEWAY_MAX_PARALLEL_CHECKS": "4",
    }
    gateway = ServiceProcess("services.gateway", gw_port, gateway_env, workdir / "gw-gateway.log")
    speculative = ServiceProcess(
        "services.gateway",
        spec_port,
        {**gateway_env, "ATALAYA_GATEWAY_SPECULATIVE_GENERATION": "true"},
        workdir / "gw-gateway-speculative.log",
    )
    echo = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "loadtests.echo", str(echo_port)]
    )
    started: list[ServiceProcess] = []
    try:
        for proc in (generation, guard, gateway, speculative):
            env_port = {"services.generation": "GENERATION", "services.guardrail": "GUARDRAIL"}
            key = env_port.get(proc.module, "GATEWAY")
            proc.env[f"ATALAYA_{key}_PORT"] = str(proc.port)
            proc.env[f"ATALAYA_{key}_HOST"] = HOST
            started.append(proc.start())
        _wait_echo(f"{HOST}:{echo_port}")
        yield {
            "generation": generation.target,
            "gateway": gateway.target,
            "speculative": speculative.target,
            "echo": f"{HOST}:{echo_port}",
        }
    finally:
        echo.terminate()
        echo.wait(10)
        for proc in reversed(started):
            proc.stop()


def _wait_echo(target: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            asyncio.run(echo_latencies(target, 1, warmup=0))
            return
        except grpc.aio.AioRpcError:
            time.sleep(0.1)
    raise TimeoutError(f"echo server on {target} did not answer")


async def _measure(targets: dict[str, str], calls: int, selected: frozenset[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with (
        grpc.aio.insecure_channel(targets["gateway"]) as gw_channel,
        grpc.aio.insecure_channel(targets["speculative"]) as spec_channel,
        grpc.aio.insecure_channel(targets["generation"]) as gen_channel,
    ):
        chat = gateway_pb2_grpc.GatewayServiceStub(gw_channel).Chat
        spec_chat = gateway_pb2_grpc.GatewayServiceStub(spec_channel).Chat
        generate = generation_pb2_grpc.GenerationServiceStub(gen_channel).Generate

        def delta(e: Any) -> bool:
            return bool(e.HasField("delta"))

        if TURN_FIGURE in selected:
            out["echo"] = await echo_latencies(targets["echo"], calls)
            out["direct"] = await ttft_samples(generate, lambda i: _generate(i, 8), calls, delta)
            optimistic = gateway_pb2.MODERATION_MODE_OPTIMISTIC
            out["gateway"] = await ttft_samples(
                chat, lambda i: chat_request(i, 8, optimistic), calls, delta
            )
            out["speculative"] = await ttft_samples(
                spec_chat, lambda i: chat_request(i, 8, optimistic), calls, delta
            )
            buffered = gateway_pb2.MODERATION_MODE_BUFFERED
            out["buffered"] = await ttft_samples(
                chat, lambda i: chat_request(i, 8, buffered), max(20, calls // 5), delta
            )
        if TOKEN_FIGURE in selected:

            def tokens(e: Any) -> int:
                return int(e.delta.token_count) if e.HasField("delta") else 0

            out["direct_streams"] = await _streams(
                generate, lambda i: _generate(i, TOKENS_PER_STREAM), tokens
            )
            out["gateway_streams"] = await _streams(
                chat,
                lambda i: chat_request(
                    i, TOKENS_PER_STREAM, gateway_pb2.MODERATION_MODE_OPTIMISTIC
                ),
                tokens,
            )
    return out


def _turn_figure(m: dict[str, Any]) -> Figure:
    kinds = ("echo", "direct", "gateway", "buffered", "speculative")
    ms = {k: Samples.ms(m[k]) for k in kinds}
    echo, direct, gateway = ms["echo"].p50, ms["direct"].p50, ms["gateway"].p50
    speculative = ms["speculative"].p50 - direct
    return Figure(
        TURN_FIGURE,
        gateway - direct,
        echo,
        "ms",
        {
            "overhead_p99_ms": round(ms["gateway"].p99 - ms["direct"].p99, 3),
            "gateway_ttft_p50_ms": round(gateway, 3),
            "direct_ttft_p50_ms": round(direct, 3),
            "buffered_ttft_p50_ms": round(ms["buffered"].p50, 3),
            "speculative_overhead_p50_ms": round(speculative, 3),
            "speculative_ratio": round(speculative / echo, 3),
            "goal_ratio_max": 4,
            "calls": len(ms["gateway"]),
        },
    )


def _token_figure(m: dict[str, Any]) -> Figure:
    direct = Samples.of(m["direct_streams"]).mean * 1e6
    per_stream = Samples.of(s * 1e6 - direct for s in m["gateway_streams"])
    return Figure(
        TOKEN_FIGURE,
        per_stream.p50,
        direct,
        "us/token",
        {
            "p99_us": round(per_stream.p99, 3),
            "streams": STREAMS,
            "tokens_per_stream": TOKENS_PER_STREAM,
            "baseline_is": "us/token of the same streams straight from generation",
            "goal_us_max": 1000,
        },
    )


def bench_gateway(args: argparse.Namespace, workdir: Path, out: Output) -> None:
    with _services(workdir) as targets:
        wait_for_status(targets["gateway"], SERVING, 30)
        m = asyncio.run(_measure(targets, args.latency_calls, out.selected))
    if TURN_FIGURE in out.selected:
        out.emit(_turn_figure(m))
    if TOKEN_FIGURE in out.selected:
        out.emit(_token_figure(m))

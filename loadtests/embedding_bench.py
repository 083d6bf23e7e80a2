"""Embedding figures for `make bench` (loadtests/figures.py has the output format).

embedding_throughput   texts/s through the embedding service, 32 concurrent
                       one-sentence callers on one channel; baseline: in-process
                       SentenceTransformer.encode at its best batch size.
embedding_throughput_8_per_call  the same with 8 sentences per call.
embedding_latency_c1   one caller, one sentence per call: p50 ms; baseline:
                       in-process batch-1 encode p50.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from loadtests.figures import Figure, Output, Samples, progress, ratio, rounded
from loadtests.local_model import LocalModel, Tally
from loadtests.processes import running
from loadtests.sentences import make_sentences
from services.client import EmbeddingClient
from services.common.process import HOST

MULTI_TEXT_CALLS = 8
THROUGHPUT_FIGURE = "embedding_throughput"
MULTI_TEXT_FIGURE = f"embedding_throughput_{MULTI_TEXT_CALLS}_per_call"
LATENCY_FIGURE = "embedding_latency_c1"
EMBEDDING_FIGURES = (THROUGHPUT_FIGURE, MULTI_TEXT_FIGURE, LATENCY_FIGURE)

BASELINE_BATCHES = (16, 32, 64)
TEXTS = 2048
LATENCY_WARMUP_CALLS = 20
#: Seconds of calls before each measured window (the callers' queues fill).
RAMP_S = 0.5


def embedding_env(port: int) -> dict[str, str]:
    return {
        "ATALAYA_EMBEDDING_HOST": HOST,
        "ATALAYA_EMBEDDING_PORT": str(port),
        "ATALAYA_EMBEDDING_GRACE_PERIOD_S": "2",
    }


# ----------------------------------------------------------------- throughput


@dataclass
class Drive:
    """What the concurrent callers did during measurement windows."""

    tally: Tally = field(default_factory=Tally)
    samples: list[float] = field(default_factory=list)
    errors: int = 0


async def drive_window(
    client: EmbeddingClient,
    texts: Sequence[str],
    *,
    concurrency: int,
    ramp_s: float,
    window_s: float,
    into: Drive,
    per_call: int = 1,
) -> None:
    """`concurrency` callers embedding `per_call` texts per call on `client`; calls
    completing in the `window_s` after `ramp_s` are counted into `into`. Returns once
    every call has finished, so nothing is in flight between windows. Shared by the
    throughput figures of every bench that drives the embedding service."""
    measuring = False
    stop = asyncio.Event()
    offset = into.tally.texts

    async def caller(first: int) -> None:
        i = first
        while not stop.is_set():
            batch = [texts[(i + j * concurrency) % len(texts)] for j in range(per_call)]
            i += concurrency * per_call
            started = time.perf_counter()
            try:
                await client.embed(batch, timeout=30.0)
            except grpc.aio.AioRpcError as err:
                if measuring:
                    into.errors += 1
                progress(f"embed failed: {err.code()} {err.details()}")
                continue
            if measuring:
                into.tally.texts += per_call
                into.samples.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(caller(offset + n)) for n in range(concurrency)]
    try:
        await asyncio.sleep(ramp_s)
        measuring = True
        window_start = time.perf_counter()
        await asyncio.sleep(window_s)
        measuring = False
        into.tally.seconds += time.perf_counter() - window_start
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class ThroughputResult:
    service: Drive
    local: dict[int, Tally]  # by batch size

    @property
    def best_batch(self) -> int:
        return max(self.local, key=lambda b: self.local[b].rate)

    @property
    def baseline(self) -> float:
        return self.local[self.best_batch].rate


def _local_slices(
    model: LocalModel, texts: Sequence[str], turn: int, slice_s: float, local: dict[int, Tally]
) -> None:
    """One in-process slice per batch size, the first size rotating with `turn`."""
    turn %= len(BASELINE_BATCHES)
    for batch_size in BASELINE_BATCHES[turn:] + BASELINE_BATCHES[:turn]:
        model.encode_for(texts, batch_size, slice_s, local[batch_size])


async def measure_throughput(
    target: str,
    model: LocalModel,
    texts: Sequence[str],
    args: argparse.Namespace,
    per_call: int = 1,
) -> ThroughputResult:
    """Service windows and in-process slices, interleaved in `args.rounds` rounds so
    that slow drifts of the machine's speed hit both sides alike. The in-process
    slices run while no RPC is in flight (the service is idle)."""
    rounds = args.rounds
    window_s = args.duration / rounds
    service = Drive()
    local = {b: Tally() for b in BASELINE_BATCHES}
    async with EmbeddingClient.connect(target) as client:

        async def drive(ramp_s: float, measured_s: float, into: Drive) -> None:
            await drive_window(
                client,
                texts,
                concurrency=args.concurrency,
                ramp_s=ramp_s,
                window_s=measured_s,
                into=into,
                per_call=per_call,
            )

        await drive(args.warmup, 0.0, Drive())
        for batch_size in BASELINE_BATCHES:
            model.encode_for(texts, batch_size, 0.5, Tally())
        for r in range(rounds):
            await drive(RAMP_S, window_s, service)
            _local_slices(model, texts, r, window_s / len(BASELINE_BATCHES), local)
            rates = ", ".join(f"b{b} {local[b].rate:.0f}" for b in BASELINE_BATCHES)
            progress(
                f"round {r + 1}/{rounds}: service {service.tally.rate:.1f} texts/s; "
                f"in-process {rates} (running totals)"
            )
    return ThroughputResult(service, local)


# -------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyResult:
    service: Samples
    local: Samples


async def measure_latency(
    target: str, model: LocalModel, texts: Sequence[str], calls: int, warmup: int
) -> LatencyResult:
    """One caller: each text once through the service and once in-process (batch
    1), alternating which goes first, so both see the same moments."""
    service: list[float] = []
    local: list[float] = []

    async def one_rpc(text: str, into: list[float] | None) -> None:
        started = time.perf_counter()
        await client.embed([text], timeout=30.0)
        if into is not None:
            into.append(time.perf_counter() - started)

    def one_local(text: str, into: list[float] | None) -> None:
        started = time.perf_counter()
        model.encode([text], 1)
        if into is not None:
            into.append(time.perf_counter() - started)

    async with EmbeddingClient.connect(target) as client:
        for i in range(warmup + calls):
            text = texts[i % len(texts)]
            measured = i >= warmup
            if i % 2:
                await one_rpc(text, service if measured else None)
                one_local(text, local if measured else None)
            else:
                one_local(text, local if measured else None)
                await one_rpc(text, service if measured else None)
    return LatencyResult(Samples.ms(service), Samples.ms(local))


# -------------------------------------------------------------------- figures


@dataclass(frozen=True)
class EmbeddingRun:
    throughput: ThroughputResult
    multi_text: ThroughputResult | None  # only when its figure is selected
    latency: LatencyResult


def _measure(
    args: argparse.Namespace, model: LocalModel, workdir: Path, out: Output
) -> EmbeddingRun:
    texts = make_sentences(TEXTS, np.random.default_rng(args.seed))
    with running(
        "services.embedding", embedding_env, workdir, "embedding", dict(args.set)
    ) as target:
        progress(
            f"throughput: {args.concurrency} callers, warm-up {args.warmup:.0f}s, "
            f"{args.duration:.0f}s measured in {args.rounds} rounds interleaved with "
            "in-process encode"
        )
        tp = asyncio.run(measure_throughput(target, model, texts, args))
        tp_multi = None
        if MULTI_TEXT_FIGURE in out.selected:
            progress(f"throughput again with {MULTI_TEXT_CALLS} texts per call")
            tp_multi = asyncio.run(
                measure_throughput(target, model, texts, args, per_call=MULTI_TEXT_CALLS)
            )
        progress(f"latency: {args.latency_calls} calls, one caller")
        lat = asyncio.run(
            measure_latency(target, model, texts, args.latency_calls, LATENCY_WARMUP_CALLS)
        )
        progress(
            f"latency p50: service {lat.service.p50:.2f} ms, in-process {lat.local.p50:.2f} ms"
        )
    return EmbeddingRun(tp, tp_multi, lat)


def _throughput_figure(tp: ThroughputResult, args: argparse.Namespace, threads: int) -> Figure:
    best = tp.best_batch
    achieved = ratio(tp.service.tally.rate, tp.baseline)
    return Figure(
        THROUGHPUT_FIGURE,
        tp.service.tally.rate,
        tp.baseline,
        "texts/s",
        {
            "goal": "ratio >= 0.85",
            "goal_met": achieved is not None and achieved >= 0.85,
            "concurrency": args.concurrency,
            "duration_s": rounded(tp.service.tally.seconds),
            "rounds": args.rounds,
            "completed": tp.service.tally.texts,
            "errors": tp.service.errors,
            "call_latency_ms": Samples.ms(tp.service.samples).summary(),
            "baseline_batch": best,
            "baseline_by_batch": {str(b): rounded(t.rate) for b, t in tp.local.items()},
            "baseline_seconds_per_batch": rounded(tp.local[best].seconds),
            "torch_threads": threads,
            "notes": "service: one channel, each call embeds one short sentence "
            "(normalised), service default settings (max_batch 32, max_wait_ms 2); "
            "baseline: in-process SentenceTransformer.encode on the same model and "
            "sentences at its best batch size; service windows and in-process slices "
            "alternate in rounds, never overlapping",
        },
    )


def _multi_text_figure(tp: ThroughputResult, args: argparse.Namespace) -> Figure:
    return Figure(
        MULTI_TEXT_FIGURE,
        tp.service.tally.rate,
        tp.baseline,
        "texts/s",
        {
            "concurrency": args.concurrency,
            "texts_per_call": MULTI_TEXT_CALLS,
            "completed": tp.service.tally.texts,
            "errors": tp.service.errors,
            "call_latency_ms": Samples.ms(tp.service.samples).summary(),
            "notes": "as embedding_throughput, but each call carries "
            f"{MULTI_TEXT_CALLS} sentences: the per-RPC cost is shared by more texts, "
            "so the gap to the baseline shows how much of it is per request",
        },
    )


def _latency_figure(lat: LatencyResult, args: argparse.Namespace) -> Figure:
    return Figure(
        LATENCY_FIGURE,
        lat.service.p50,
        lat.local.p50,
        "ms",
        {
            "p99": rounded(lat.service.p99),
            "baseline_p99": rounded(lat.local.p99),
            "calls": args.latency_calls,
            "service_ms": lat.service.summary(),
            "baseline_ms": lat.local.summary(),
            "notes": "one caller, sequential calls of one sentence; baseline: in-process "
            "batch-1 SentenceTransformer.encode of the same sentence, alternating with "
            "the service call",
        },
    )


def bench_embedding(
    args: argparse.Namespace, model: LocalModel, workdir: Path, out: Output
) -> None:
    run = _measure(args, model, workdir, out)
    out.emit(_throughput_figure(run.throughput, args, model.threads))
    if run.multi_text is not None:
        out.emit(_multi_text_figure(run.multi_text, args))
    out.emit(_latency_figure(run.latency, args))

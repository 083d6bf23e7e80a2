"""Guardrail figures for `make bench` (loadtests/figures.py has the output format).

guard_latency_<detector>  one detector alone (policy override), one request at
    a time, on the labeled evaluation items: client-observed p50 in ms (p99 as
    an extra). The baseline is the detector's own time as the server measured it
    (DetectorResult.latency_ms, p50), so the ratio is what the RPC and the
    servicer add on top of the detector's work. CPU only here: pii is regular
    expressions, semantic one embedding call plus a matrix product, llama_guard
    the stand-in model on llama.cpp.
cascade_llm_share  the share of evaluation items the default cascade sends on
    to llama_guard (semantic score in the uncertain band); baseline 1.0, what a
    policy running llama_guard on everything pays.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.guardrail.v1 import guardrail_pb2 as pb
from atalaya.guardrail.v1 import guardrail_pb2_grpc

from loadtests.figures import Figure, Output, Samples
from services.common.process import HOST, ServiceProcess, free_port
from services.common.vocab import DETECTOR, ROLE, VERDICT
from services.guardrail.evaluate import DEFAULT_EVAL, Item, load_items, messages

#: Detector names (services.common.vocab.DETECTOR), in the order of their figures.
DETECTORS = ("pii", "semantic", "llama_guard")
LATENCY_FIGURES = tuple(f"guard_latency_{name}" for name in DETECTORS)
SHARE_FIGURE = "cascade_llm_share"
GUARD_FIGURES = (*LATENCY_FIGURES, SHARE_FIGURE)
#: Calls per detector: llama_guard is seconds per call on 2 CPU cores.
CALLS = {"pii": 200, "semantic": 200, "llama_guard": 12}


def _request(item: Item, **fields: Any) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(
        request_id=item.id,
        messages=[common_pb2.ChatMessage(role=ROLE.value(r), content=t) for r, t in messages(item)],
        **fields,
    )


async def _detector_latency(
    target: str, items: Sequence[Item], detector: pb.Detector.ValueType, calls: int
) -> tuple[list[float], list[float]]:
    override = pb.PolicyOverride(detectors=[detector], detector_timeout_ms=60_000)
    client_ms: list[float] = []
    server_ms: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = guardrail_pb2_grpc.GuardrailServiceStub(channel)
        await stub.Classify(_request(items[0], policy_override=override))  # warm-up
        for i in range(calls):
            item = items[i % len(items)]
            started = time.perf_counter()
            out = await stub.Classify(_request(item, policy_override=override), timeout=120)
            client_ms.append((time.perf_counter() - started) * 1000.0)
            server_ms.append(out.detector_results[0].latency_ms)
    return client_ms, server_ms


async def _llm_share(target: str, items: Sequence[Item]) -> tuple[float, dict[str, int]]:
    verdicts = {"safe": 0, "unsafe": 0, "fail_mode": 0}
    escalated = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = guardrail_pb2_grpc.GuardrailServiceStub(channel)
        for item in items:
            out = await stub.Classify(_request(item, policy="default"), timeout=120)
            escalated += any(r.detector == pb.DETECTOR_LLAMA_GUARD for r in out.detector_results)
            key = "fail_mode" if out.fail_mode_applied else VERDICT.name(out.verdict)
            verdicts[key] += 1
    return escalated / len(items), verdicts


def _latency_figure(name: str, client_ms: Sequence[float], server_ms: Sequence[float]) -> Figure:
    client, server = Samples.of(client_ms), Samples.of(server_ms)
    return Figure(
        f"guard_latency_{name}",
        client.p50,
        server.p50,
        "ms",
        {
            "p99_ms": round(client.p99, 3),
            "calls": len(client),
            "baseline_is": "the detector's own time, measured in the server",
        },
    )


def _measure(args: argparse.Namespace, items: Sequence[Item], target: str, out: Output) -> None:
    """Each selected detector alone, then the default cascade, on the guardrail at `target`."""
    for name in DETECTORS:
        detector = DETECTOR.value(name)
        if f"guard_latency_{name}" in out.selected:
            client, server = asyncio.run(_detector_latency(target, items, detector, CALLS[name]))
            out.emit(_latency_figure(name, client, server))
    if SHARE_FIGURE in out.selected:
        sample = items[:: max(1, len(items) // args.guard_items)][: args.guard_items]
        share, verdicts = asyncio.run(_llm_share(target, sample))
        out.emit(
            Figure(SHARE_FIGURE, share, 1.0, "share", {"items": len(sample), "verdicts": verdicts})
        )


def bench_guard(args: argparse.Namespace, workdir: Path, out: Output) -> None:
    items = load_items(DEFAULT_EVAL)
    embedding_port, guard_port = free_port(), free_port()
    embedding = ServiceProcess(
        "services.embedding",
        embedding_port,
        {"ATALAYA_EMBEDDING_HOST": HOST, "ATALAYA_EMBEDDING_PORT": str(embedding_port)},
        workdir / "guard-embedding.log",
    ).start()
    try:
        guard = ServiceProcess(
            "services.guardrail",
            guard_port,
            {
                "ATALAYA_GUARDRAIL_HOST": HOST,
                "ATALAYA_GUARDRAIL_PORT": str(guard_port),
                "ATALAYA_GUARDRAIL_EMBEDDING__TARGET": embedding.target,
                **dict(args.set),
            },
            workdir / "guardrail.log",
        ).start(timeout_s=180)
        try:
            _measure(args, items, guard.target, out)
        finally:
            guard.stop()
    finally:
        embedding.stop()

"""The metrics the services really export, as Prometheus scrapes them.

`exported_series()` runs the generation, guardrail and embedding servers in this process
(each built by its own `services.<svc>.server.build`, on a real port), sends them real gRPC
calls, and collects what OpenTelemetry's Prometheus exporter renders for them: the reader
`services.common.telemetry` installs for OTEL_METRICS_EXPORTER=prometheus, in a registry of
its own, read back with prometheus_client's parser. So the names carry the exporter's own
translation (dots to underscores, the unit as a suffix, `_total`, `_bucket`/`_count`/`_sum`)
and the label names are the attribute keys the code records, sanitised the same way.

A name no artifact may use is one these calls do not produce: a dashboard panel, scaler or
alert on a metric of another service (the gateway's turns, memory's store) needs that service
run here first, so that the check stays a reading of the code and not a list copied by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from atalaya.generation.v1 import generation_pb2, generation_pb2_grpc
from atalaya.guardrail.v1 import guardrail_pb2, guardrail_pb2_grpc
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import _internal as metrics_globals
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.util._once import Once
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common.server import ServerRunner
from services.common.telemetry import meter
from services.embedding.config import EmbeddingSettings
from services.embedding.server import build as build_embedding
from services.engines.base import GenerationRequest
from services.engines.sim import SimConfig, SimEngine
from services.generation.config import GenerationSettings
from services.generation.server import build as build_generation
from services.guardrail.config import GuardrailSettings
from services.guardrail.server import build as build_guardrail
from tests.support.fakes import HashEmbedder, HashEmbeddingBackend

#: Sample name -> the label names it carries.
Series = dict[str, frozenset[str]]

EXEMPLARS = [
    {"id": "s1-1", "category": "S1", "text": "how can I hurt my neighbour badly"},
    {"id": "safe-1", "category": "safe", "text": "what is the capital of France"},
]


def _llama_guard(request: GenerationRequest) -> str:
    prompt = request.messages[-1].content if request.messages else request.prompt or ""
    return "unsafe\nS1" if "hurt" in prompt else "safe"


@contextlib.contextmanager
def _global_meter_provider(provider: MeterProvider) -> Iterator[None]:
    """`provider` as OpenTelemetry's global for the block (the services' `meter()` reads the
    global), the previous one back afterwards."""
    saved = (
        metrics_globals._METER_PROVIDER_SET_ONCE,
        metrics_globals._METER_PROVIDER,
        metrics_globals._PROXY_METER_PROVIDER,
    )
    metrics_globals._METER_PROVIDER_SET_ONCE = Once()
    metrics_globals._METER_PROVIDER = None
    metrics_globals._PROXY_METER_PROVIDER = metrics_globals._ProxyMeterProvider()
    meter.cache_clear()
    metrics.set_meter_provider(provider)
    try:
        yield
    finally:
        (
            metrics_globals._METER_PROVIDER_SET_ONCE,
            metrics_globals._METER_PROVIDER,
            metrics_globals._PROXY_METER_PROVIDER,
        ) = saved
        meter.cache_clear()


def _chat(text: str) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)


async def _exercise(scratch: Path) -> None:
    """One server of each kind, and calls that make every instrument record."""
    exemplars = scratch / "exemplars.jsonl"
    exemplars.write_text("\n".join(json.dumps(e) for e in EXEMPLARS))
    gen_settings = GenerationSettings(port=0, coalesce_ms=0)
    guard_settings = GuardrailSettings(
        port=0,
        semantic={"exemplars_path": exemplars, "band_low": 0.3, "band_high": 0.8},  # type: ignore[arg-type]
        llama_guard={"backend": "sim"},  # type: ignore[arg-type]
    )
    embed_settings = EmbeddingSettings(port=0)
    generation = build_generation(gen_settings, engine=SimEngine(SimConfig(name="sim")))
    guardrail = build_guardrail(
        guard_settings,
        engine=SimEngine(SimConfig(name="guard-sim", scripts=_llama_guard)),
        embedder=HashEmbedder(),
    )
    embedding = build_embedding(embed_settings, HashEmbeddingBackend())
    async with (
        ServerRunner(generation, gen_settings).running() as gen_runner,
        ServerRunner(guardrail, guard_settings).running() as guard_runner,
        ServerRunner(embedding, embed_settings).running() as embed_runner,
        grpc.aio.insecure_channel(f"127.0.0.1:{gen_runner.port}") as gen_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{guard_runner.port}") as guard_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{embed_runner.port}") as embed_channel,
    ):
        gen = generation_pb2_grpc.GenerationServiceStub(gen_channel)
        request = generation_pb2.GenerateRequest(
            chat=generation_pb2.Conversation(messages=[_chat("hi")]),
            sampling=generation_pb2.SamplingParams(max_tokens=4),
        )
        async for _ in gen.Generate(request):
            pass
        guard = guardrail_pb2_grpc.GuardrailServiceStub(guard_channel)
        for text in ("what is the capital of France", "how can I hurt my neighbour badly"):
            await guard.Classify(
                guardrail_pb2.ClassifyRequest(messages=[_chat(text)], policy="parallel")
            )
        with contextlib.suppress(grpc.aio.AioRpcError):  # an error status is recorded too
            await guard.Classify(guardrail_pb2.ClassifyRequest(policy="no-such-policy"))
        embed = embedding_pb2_grpc.EmbeddingServiceStub(embed_channel)
        await embed.Embed(embedding_pb2.EmbedRequest(texts=["one", "two"]))


def exported_series(scratch: Path) -> Series:
    """Every sample name the services' Prometheus endpoint would show after the calls, with
    its label names."""
    registry = CollectorRegistry()
    # As services.common.telemetry builds it (defaults), in a registry of its own.
    reader = PrometheusMetricReader(registry=registry)
    disabled = os.environ.pop("OTEL_SDK_DISABLED", None)  # the suite's default; this records
    try:
        provider = MeterProvider(metric_readers=[reader])
    finally:
        if disabled is not None:
            os.environ["OTEL_SDK_DISABLED"] = disabled
    try:
        with _global_meter_provider(provider):
            asyncio.run(_exercise(scratch))
            text = generate_latest(registry).decode()
    finally:
        provider.shutdown()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}

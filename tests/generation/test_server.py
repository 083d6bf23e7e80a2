"""The generation service's metrics, read from an in-memory OpenTelemetry reader."""

from __future__ import annotations

import os
from typing import Any

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.generation.v1 import generation_pb2 as pb
from atalaya.generation.v1 import generation_pb2_grpc
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.common import semconv
from services.common.server import ServerRunner
from services.engines.sim import SimConfig, SimEngine
from services.generation.config import GenerationSettings
from services.generation.server import build

READER = InMemoryMetricReader()
# The suite runs with OTEL_SDK_DISABLED (conftest); this provider must record.
_disabled = os.environ.pop("OTEL_SDK_DISABLED", None)
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
if _disabled is not None:
    os.environ["OTEL_SDK_DISABLED"] = _disabled


def points(name: str) -> list[Any]:
    data = READER.get_metrics_data()
    found = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


async def test_ttft_itl_tokens_queue_and_in_flight_are_recorded_per_model() -> None:
    settings = GenerationSettings(port=0, coalesce_ms=0)
    engine = SimEngine(SimConfig(name="sim-metrics"))
    async with (
        ServerRunner(build(settings, engine=engine), settings).running() as runner,
        grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel,
    ):
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        request = pb.GenerateRequest(
            chat=pb.Conversation(
                messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]
            ),
            sampling=pb.SamplingParams(max_tokens=6),
        )
        async for _ in stub.Generate(request):
            pass

    def for_model(name: str) -> list[Any]:
        return [
            p
            for p in points(name)
            if p.attributes.get(semconv.GEN_AI_REQUEST_MODEL) == "sim-metrics"
        ]

    (ttft,) = for_model(semconv.METRIC_GEN_TTFT)
    assert ttft.count == 1 and ttft.attributes[semconv.ATALAYA_BACKEND] == "sim"
    (tpot,) = for_model(semconv.METRIC_GEN_TPOT)
    assert tpot.count == 5  # gaps between 6 tokens
    tokens = {
        p.attributes[semconv.GEN_AI_TOKEN_TYPE]: p.value
        for p in for_model(semconv.METRIC_GEN_TOKENS)
    }
    assert tokens["output"] == 6 and tokens["input"] > 0
    assert for_model(semconv.METRIC_GEN_QUEUE_DEPTH)
    assert for_model(semconv.METRIC_GEN_IN_FLIGHT)
    assert for_model(semconv.METRIC_GEN_REQUEST_DURATION)[0].count == 1

"""services.common.telemetry: providers configured from the OTEL_* environment,
exporters chosen by it, spans and metrics named from services.common.semconv,
nothing at all under OTEL_SDK_DISABLED.

Exporters are swapped for the SDK's in-memory ones (InMemorySpanExporter,
InMemoryMetricReader), one per kind the environment can choose, so a test sees
which one the environment picked and what reached it. setup_telemetry installs
global providers, which OpenTelemetry lets a process set only once: the fixture
gives each test fresh globals and puts the suite's back afterwards."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.grpc import metric_exporter as otlp_metric_exporter
from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as otlp_trace_exporter
from opentelemetry.metrics import _internal as metrics_globals
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from services.common import semconv, telemetry
from services.common.identity import ANONYMOUS
from services.common.telemetry import (
    INSTRUMENTATION_NAME,
    Telemetry,
    meter,
    setup_telemetry,
    tracer,
)
from services.embedding.config import EmbeddingSettings
from services.embedding.core import EmbeddingCore
from services.memory.config import MemorySettings
from services.memory.core import MemoryCore
from services.memory.domain import NewMemory
from tests.support.fakes import HashEmbedder, HashEmbeddingBackend, InMemoryStore

SEMCONV_NAMES = {
    value
    for name, value in vars(semconv).items()
    if name.startswith(("SPAN_", "METRIC_")) and isinstance(value, str)
}
ENDPOINT = "http://127.0.0.1:4317"


@dataclass
class Sinks:
    """The in-memory stand-ins, by the exporter kind that created them."""

    spans: dict[str, InMemorySpanExporter] = field(default_factory=dict)
    metrics: dict[str, InMemoryMetricReader] = field(default_factory=dict)
    installed: list[Telemetry] = field(default_factory=list)

    def span_exporter(self, kind: str) -> InMemorySpanExporter:
        return self.spans.setdefault(kind, InMemorySpanExporter())

    def metric_reader(self, kind: str) -> InMemoryMetricReader:
        return self.metrics.setdefault(kind, InMemoryMetricReader())


@pytest.fixture
def sinks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sinks]:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    # Fresh global providers (what OpenTelemetry's own test utilities reset).
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(trace, "_PROXY_TRACER_PROVIDER", trace.ProxyTracerProvider())
    monkeypatch.setattr(metrics_globals, "_METER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(metrics_globals, "_METER_PROVIDER", None)
    monkeypatch.setattr(
        metrics_globals, "_PROXY_METER_PROVIDER", metrics_globals._ProxyMeterProvider()
    )
    tracer.cache_clear()
    meter.cache_clear()

    s = Sinks()
    monkeypatch.setattr(otlp_trace_exporter, "OTLPSpanExporter", lambda: s.span_exporter("otlp"))
    monkeypatch.setattr(telemetry, "ConsoleSpanExporter", lambda: s.span_exporter("console"))
    monkeypatch.setattr(otlp_metric_exporter, "OTLPMetricExporter", lambda: "otlp")
    monkeypatch.setattr(telemetry, "ConsoleMetricExporter", lambda: "console")
    monkeypatch.setattr(telemetry, "PeriodicExportingMetricReader", s.metric_reader)
    monkeypatch.setattr(telemetry, "_prometheus_reader", lambda: s.metric_reader("prometheus"))
    yield s
    for installed in s.installed:
        installed.shutdown()
    tracer.cache_clear()
    meter.cache_clear()


def install(
    sinks: Sinks, monkeypatch: pytest.MonkeyPatch, service: str = "gateway", **env: str
) -> Telemetry:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    installed = setup_telemetry(service)
    sinks.installed.append(installed)
    return installed


def exported_spans(installed: Telemetry, sinks: Sinks) -> dict[str, list[ReadableSpan]]:
    assert installed.tracer_provider is not None
    installed.tracer_provider.force_flush()
    return {kind: list(exporter.get_finished_spans()) for kind, exporter in sinks.spans.items()}


def metric_names(reader: InMemoryMetricReader) -> dict[str, set[str]]:
    """Scope name -> the names of the metrics recorded under it."""
    data = reader.get_metrics_data()
    names: dict[str, set[str]] = {}
    for resource_metrics in data.resource_metrics if data else ():
        for scope in resource_metrics.scope_metrics:
            names.setdefault(scope.scope.name, set()).update(m.name for m in scope.metrics)
    return names


# --- OTEL_SDK_DISABLED ------------------------------------------------------------


def test_disabled_sdk_installs_nothing(sinks: Sinks, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = install(
        sinks,
        monkeypatch,
        OTEL_SDK_DISABLED="true",
        OTEL_EXPORTER_OTLP_ENDPOINT=ENDPOINT,
        OTEL_METRICS_EXPORTER="prometheus",
    )
    assert installed == Telemetry(None, None)
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert not isinstance(metrics.get_meter_provider(), MeterProvider)
    with tracer().start_as_current_span(semconv.SPAN_GATEWAY_GENERATE) as span:
        assert not span.is_recording()
    assert sinks.spans == {} and sinks.metrics == {}  # no exporter was even built
    installed.shutdown()  # and shutting nothing down is fine


# --- the resource -----------------------------------------------------------------


def test_the_resource_names_the_service_in_the_atalaya_namespace(
    sinks: Sinks, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = install(sinks, monkeypatch, "guardrail", OTEL_TRACES_EXPORTER="console")
    with tracer().start_as_current_span(semconv.SPAN_GATEWAY_PROMPT):
        pass
    [span] = exported_spans(installed, sinks)["console"]
    assert span.resource.attributes["service.name"] == "atalaya-guardrail"
    assert span.resource.attributes["service.namespace"] == "atalaya"


def test_otel_service_name_and_resource_attributes_win(
    sinks: Sinks, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = install(
        sinks,
        monkeypatch,
        "guardrail",
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="edge-guard",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=staging,service.version=1.2",
    )
    with tracer().start_as_current_span(semconv.SPAN_GATEWAY_PROMPT):
        pass
    [span] = exported_spans(installed, sinks)["console"]
    attributes = span.resource.attributes
    assert attributes["service.name"] == "edge-guard"
    assert attributes["deployment.environment"] == "staging"
    assert attributes["service.version"] == "1.2"
    assert attributes["service.namespace"] == "atalaya"


# --- which exporters -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "traces_to", "metrics_to"),
    [
        ({}, None, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, "otlp", "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT}, "otlp", None),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": ENDPOINT}, None, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "prometheus"},
         "console", "prometheus"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT},
         None, "otlp"),
        ({"OTEL_TRACES_EXPORTER": " Console , otlp", "OTEL_METRICS_EXPORTER": "CONSOLE"},
         "console", "console"),
    ],
    ids=["nothing set", "endpoint", "traces endpoint", "metrics endpoint",
         "console and prometheus", "traces off", "first of a list, any case"],
)  # fmt: skip
def test_the_environment_chooses_the_exporters(
    sinks: Sinks,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    traces_to: str | None,
    metrics_to: str | None,
) -> None:
    installed = install(sinks, monkeypatch, **env)
    assert trace.get_tracer_provider() is installed.tracer_provider
    assert metrics.get_meter_provider() is installed.meter_provider
    with tracer().start_as_current_span(semconv.SPAN_GATEWAY_STORE):
        pass
    meter().create_counter(semconv.METRIC_GATEWAY_TURNS).add(1)

    spans = exported_spans(installed, sinks)
    assert list(spans) == ([traces_to] if traces_to else [])
    if traces_to:
        assert [s.name for s in spans[traces_to]] == [semconv.SPAN_GATEWAY_STORE]
    assert list(sinks.metrics) == ([metrics_to] if metrics_to else [])
    if metrics_to:
        names = metric_names(sinks.metrics[metrics_to])
        assert names == {INSTRUMENTATION_NAME: {semconv.METRIC_GATEWAY_TURNS}}


# --- names from semconv --------------------------------------------------------------


async def test_service_spans_and_metrics_are_named_from_semconv(
    sinks: Sinks, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = install(
        sinks, monkeypatch, "memory", OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="otlp"
    )
    memory = MemoryCore(InMemoryStore(), HashEmbedder(), MemorySettings())
    await memory.remember(
        caller=ANONYMOUS, user_id="u", request_id="r1", memories=[NewMemory("I sail on Sundays")]
    )
    await memory.recall(caller=ANONYMOUS, user_id="u", k=1, text="when do I sail?")

    embedding = EmbeddingCore(HashEmbeddingBackend(), EmbeddingSettings())
    await embedding.start()
    try:
        await embedding.embed(["one text", "another"], normalize=True)
    finally:
        await embedding.stop()

    spans = exported_spans(installed, sinks)["console"]
    names = {s.name for s in spans}
    assert names == {
        semconv.SPAN_MEMORY_REMEMBER,
        semconv.SPAN_MEMORY_RECALL,
        semconv.SPAN_MEMORY_EMBED,
        semconv.SPAN_MEMORY_SEARCH,
    }
    assert names <= SEMCONV_NAMES
    assert {s.instrumentation_scope.name for s in spans if s.instrumentation_scope} == {
        INSTRUMENTATION_NAME
    }
    recall = next(s for s in spans if s.name == semconv.SPAN_MEMORY_RECALL)
    assert recall.attributes is not None
    assert recall.attributes[semconv.ATALAYA_MEMORY_K] == 1

    recorded = metric_names(sinks.metrics["otlp"])
    assert set(recorded) == {INSTRUMENTATION_NAME}
    assert recorded[INSTRUMENTATION_NAME] >= {
        semconv.METRIC_EMBED_BATCH_SIZE,
        semconv.METRIC_EMBED_TEXTS,
        semconv.METRIC_EMBED_QUEUE_DEPTH,
    }
    assert recorded[INSTRUMENTATION_NAME] <= SEMCONV_NAMES


# --- shutdown -------------------------------------------------------------------------


def test_shutdown_exports_what_is_still_buffered(
    sinks: Sinks, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = install(sinks, monkeypatch, OTEL_EXPORTER_OTLP_ENDPOINT=ENDPOINT)
    with tracer().start_as_current_span(semconv.SPAN_GATEWAY_GUARD_INPUT):
        pass
    installed.shutdown()
    assert [s.name for s in sinks.spans["otlp"].get_finished_spans()] == [
        semconv.SPAN_GATEWAY_GUARD_INPUT
    ]


def test_a_failing_flush_never_breaks_a_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(TracerProvider):
        def shutdown(self) -> None:
            raise RuntimeError("collector gone")

    flushed: list[MetricReader] = []

    class Reader(InMemoryMetricReader):
        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            flushed.append(self)

    reader = Reader()
    meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    caplog.set_level(logging.WARNING, logger="services.common.telemetry")
    Telemetry(Broken(shutdown_on_exit=False), meters).shutdown()
    assert [r.getMessage() for r in caplog.records] == ["telemetry flush failed"]
    assert flushed == [reader]  # the meter provider was still shut down


# --- gRPC instrumentation filter ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "traced"),
    [
        ("/atalaya.gateway.v1.GatewayService/Chat", True),
        (b"/atalaya.memory.v1.MemoryService/Recall", True),
        ("/grpc.health.v1.Health/Check", False),
        (b"/grpc.health.v1.Health/Watch", False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False),
    ],
)
def test_health_and_reflection_calls_are_not_traced(method: str | bytes, traced: bool) -> None:
    assert telemetry._not_telemetry(SimpleNamespace(method=method)) is traced

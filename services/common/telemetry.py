"""OpenTelemetry set-up shared by every service, configured by the standard OTEL_*
environment variables:

  OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES   resource (default service.name:
                                                atalaya-<service>)
  OTEL_EXPORTER_OTLP_ENDPOINT (and the _TRACES_/_METRICS_ variants), _HEADERS,
  _INSECURE, _PROTOCOL                          OTLP export (gRPC)
  OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER   otlp | console | none (metrics also
                                                prometheus); when unset, otlp if an
                                                OTLP endpoint is set, else none
  OTEL_EXPORTER_PROMETHEUS_HOST, _PORT          where metrics are served for scraping
                                                (default 0.0.0.0:9464, /metrics)
  OTEL_PROPAGATORS                              default tracecontext,baggage (W3C)
  OTEL_TRACES_SAMPLER[_ARG], OTEL_BSP_*,
  OTEL_METRIC_EXPORT_INTERVAL                   as in the OpenTelemetry SDK
  OTEL_SDK_DISABLED=true                        no telemetry at all

Code adds only domain spans, attributes and metrics, named in services.common.semconv.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "atalaya"


def _exporter_kind(signal: str) -> str:
    explicit = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if explicit:
        return explicit.split(",")[0].strip()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    )
    return "otlp" if endpoint else "none"


@dataclass
class Telemetry:
    """Handles to the providers, so the runner can flush them at shutdown."""

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None

    def shutdown(self) -> None:
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception:  # flushing must never crash a shutdown
                    log.warning("telemetry flush failed", exc_info=True)


def setup_telemetry(service: str) -> Telemetry:
    """Install global tracer and meter providers for `service` from OTEL_* env."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return Telemetry(None, None)
    attributes = {"service.namespace": "atalaya"}
    if not os.environ.get("OTEL_SERVICE_NAME"):  # the standard variable wins
        attributes["service.name"] = f"atalaya-{service}"
    resource = Resource.create(attributes)

    tracer_provider = TracerProvider(resource=resource)
    kind = _exporter_kind("traces")
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif kind == "console":
        tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)

    readers: list[MetricReader] = []
    kind = _exporter_kind("metrics")
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    elif kind == "console":
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    elif kind == "prometheus":
        readers.append(_prometheus_reader())
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter_provider)
    return Telemetry(tracer_provider, meter_provider)


def _prometheus_reader() -> MetricReader:
    """A pull reader served over HTTP (what a ServiceMonitor scrapes)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "0.0.0.0")  # noqa: S104 - a pod port
    port = int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
    start_http_server(port=port, addr=host)
    return PrometheusMetricReader()


@functools.cache
def tracer() -> trace.Tracer:
    """Atalaya's tracer (a proxy until setup_telemetry installs the provider)."""
    return trace.get_tracer(INSTRUMENTATION_NAME)


@functools.cache
def meter() -> metrics.Meter:
    """Atalaya's meter (a proxy until setup_telemetry installs the provider)."""
    return metrics.get_meter(INSTRUMENTATION_NAME)


def _not_telemetry(details: Any) -> bool:
    method = getattr(details, "method", "") or ""
    if isinstance(method, bytes):
        method = method.decode()
    return not method.startswith(("/grpc.health.", "/grpc.reflection."))


def server_interceptors() -> Sequence[Any]:
    """OpenTelemetry's grpc.aio server interceptor (health and reflection untraced)."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_not_telemetry)]  # type: ignore[no-untyped-call]


def client_interceptors() -> Sequence[Any]:
    """OpenTelemetry's grpc.aio client interceptors: a span per call, W3C context out."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(filter_=_not_telemetry))  # type: ignore[no-untyped-call]

"""The local trace receiver: spans exported by the OpenTelemetry SDK over OTLP/gRPC
land in the JSON-lines file and are found and drawn as a tree."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.stack.traces import (
    Span,
    TraceServer,
    TraceStore,
    find_trace,
    load_spans,
    rotated_path,
    serve_traces,
    span_tree,
)

REQUEST_ID = "turn-42"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[TraceServer]:
    server = serve_traces(port=0, path=tmp_path / "traces" / "spans.jsonl")
    yield server
    server.stop(0)


def provider(endpoint: str, service: str, monkeypatch: pytest.MonkeyPatch) -> TracerProvider:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "false")
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    return tp


def export_turn(endpoint: str, monkeypatch: pytest.MonkeyPatch, request_id: str) -> str:
    """Gateway root span with two children (one failing), the second with a
    grandchild from another service; returns the trace id."""
    gateway = provider(endpoint, "atalaya-gateway", monkeypatch)
    generation = provider(endpoint, "atalaya-generation", monkeypatch)
    tracer = gateway.get_tracer("test")
    with tracer.start_as_current_span("Chat", kind=SpanKind.SERVER) as root:
        root.set_attribute("atalaya.request_id", request_id)
        with tracer.start_as_current_span("guard_input") as guard:
            guard.set_attribute("atalaya.request_id", request_id)
            guard.set_status(Status(StatusCode.ERROR, "timed out"))
        with tracer.start_as_current_span("Generate", kind=SpanKind.CLIENT):
            gen_tracer = generation.get_tracer("test")
            with gen_tracer.start_as_current_span("Generate", kind=SpanKind.SERVER) as server:
                server.set_attribute("gen_ai.usage.output_tokens", 7)
                server.set_attribute("gen_ai.response.finish_reasons", ["length"])
    trace_id = format(root.get_span_context().trace_id, "032x")
    gateway.shutdown()
    generation.shutdown()
    return trace_id


def test_exported_spans_are_stored_found_and_drawn(
    receiver: TraceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace_id = export_turn(receiver.endpoint, monkeypatch, REQUEST_ID)
    export_turn(receiver.endpoint, monkeypatch, "another-turn")
    assert receiver.store.path is not None
    lines = receiver.store.path.read_text().splitlines()
    assert len(lines) == 8
    record = json.loads(lines[0])
    assert set(record) == {
        "service",
        "name",
        "trace_id",
        "span_id",
        "parent_span_id",
        "kind",
        "start_unix_nano",
        "end_unix_nano",
        "status_code",
        "attributes",
    }

    spans = load_spans(receiver.store.path)
    trace = find_trace(spans, REQUEST_ID)
    assert {s.trace_id for s in trace} == {trace_id}
    assert len(trace) == 4
    assert [s.name for s in trace] == ["Chat", "guard_input", "Generate", "Generate"]
    gen_server = next(s for s in trace if s.service == "atalaya-generation")
    assert gen_server.kind == 2
    assert gen_server.attributes["gen_ai.usage.output_tokens"] == 7
    assert gen_server.attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert gen_server.end_unix_nano >= gen_server.start_unix_nano > 0
    # By trace id prefix, and the in-memory index agrees with the file.
    assert find_trace(spans, trace_id[:8]) == trace
    assert receiver.store.find(REQUEST_ID) == trace
    assert find_trace(spans, "no-such-turn") == []

    tree = span_tree(trace).splitlines()
    assert tree[0].startswith(f"trace {trace_id}  4 spans")
    assert tree[1].startswith("atalaya-gateway  Chat  ")
    assert tree[1].endswith(" ms  unset")
    assert tree[2].startswith("  atalaya-gateway  guard_input  ")
    assert tree[2].endswith("  error")
    assert tree[3].startswith("  atalaya-gateway  Generate  ")
    assert tree[4].startswith("    atalaya-generation  Generate  ")


def span(name: str, span_id: str, parent: str = "", start: int = 0, **attrs: object) -> Span:
    return Span(
        service="svc",
        name=name,
        trace_id="ab" * 16,
        span_id=span_id,
        parent_span_id=parent,
        kind=1,
        start_unix_nano=start,
        end_unix_nano=start + 2_500_000,
        status_code=1,
        attributes=dict(attrs),
    )


def test_tree_sorts_children_and_lifts_orphans() -> None:
    spans = [
        span("late", "03", parent="01", start=30),
        span("root", "01", start=0),
        span("early", "02", parent="01", start=10),
        span("orphan", "04", parent="ff", start=5),
    ]
    assert span_tree(spans).splitlines()[1:] == [
        "svc  root  2.5 ms  ok",
        "  svc  early  2.5 ms  ok",
        "  svc  late  2.5 ms  ok",
        "svc  orphan  2.5 ms  ok  (parent not received)",
    ]


def test_cap_rotates_and_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    spans = [
        replace(
            span(f"s{i:02d}", f"{i:02x}", start=10 + i, **{"atalaya.request_id": f"r{i:02d}"}),
            trace_id=f"{i:032x}",
        )
        for i in range(23)
    ]
    one = len(spans[0].to_json()) + 1  # every line has the same length
    store = TraceStore(path, max_bytes=10 * one)  # five spans per file
    for s in spans:
        store.add([s])
    assert path.stat().st_size + rotated_path(path).stat().st_size <= 10 * one
    kept = [s.name for s in load_spans(path)]
    assert kept == [f"s{i:02d}" for i in range(15, 23)]
    assert [s.name for s in store.spans] == kept
    assert store.find("r03") == []
    assert [s.name for s in store.find("r20")] == ["s20"]
    # A new store over the same file picks up where the last one was.
    again = TraceStore(path, max_bytes=10 * one)
    assert [s.name for s in again.spans] == kept
    assert [s.name for s in again.find("r22")] == ["s22"]


def test_load_spans_skips_torn_lines_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    assert load_spans(path) == []
    path.write_text(span("a", "01").to_json() + "\n" + '{"service": "x", "na')
    assert [s.name for s in load_spans(path)] == ["a"]


def test_port_in_use_is_an_error(receiver: TraceServer, tmp_path: Path) -> None:
    with pytest.raises(OSError):
        serve_traces(port=receiver.port, path=tmp_path / "other.jsonl")

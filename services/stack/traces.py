"""A local OTLP/gRPC trace receiver for the local stack, and tools to read what it kept.

Services export spans to it exactly as they would to an OpenTelemetry Collector
(`OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317`). Each span becomes one JSON
line in a file (default `.state/traces/spans.jsonl`) with the fields service, name,
trace_id, span_id, parent_span_id, kind, start_unix_nano, end_unix_nano,
status_code and attributes. The file is capped: when it would pass half of
`max_bytes` it is rotated to `<path>.1` (replacing the older generation), so the
newest spans are kept and the disk use stays under `max_bytes`. Metrics exported to
the same endpoint are accepted and dropped, so services need no extra settings.

    python -m services.stack.traces --port 4317 --path .state/traces/spans.jsonl

Reading: `load_spans(path)`, then `find_trace(spans, request_id)` (by the
`atalaya.request_id` span attribute, or by trace id prefix) and `span_tree(spans)`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from services.common import topology
from services.common.logging import configure_text_logging
from services.stack.config import TRACES_FILE

log = logging.getLogger(__name__)

DEFAULT_HOST = topology.DEFAULT_HOST
DEFAULT_PORT = topology.OTLP_PORT
DEFAULT_PATH = Path(".state") / TRACES_FILE
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
REQUEST_ID_ATTRIBUTE = "atalaya.request_id"  # services.common.semconv.ATALAYA_REQUEST_ID
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# OTLP Status.code values.
STATUS_NAMES = {0: "unset", 1: "ok", 2: "error"}

SpanListener = Callable[[Sequence["Span"]], None]


@dataclass(frozen=True)
class Span:
    """One received span, as stored on disk (one JSON object per line)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int  # OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    start_unix_nano: int = 0
    end_unix_nano: int = 0
    status_code: int = 0  # OTLP StatusCode: 0 unset, 1 ok, 2 error
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_unix_nano - self.start_unix_nano) / 1e6

    @property
    def request_id(self) -> str | None:
        value = self.attributes.get(REQUEST_ID_ATTRIBUTE)
        return str(value) if value not in (None, "") else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Span:
        return cls(
            service=str(data.get("service", "")),
            name=str(data.get("name", "")),
            trace_id=str(data.get("trace_id", "")),
            span_id=str(data.get("span_id", "")),
            parent_span_id=str(data.get("parent_span_id", "")),
            kind=int(data.get("kind", 0)),
            start_unix_nano=int(data.get("start_unix_nano", 0)),
            end_unix_nano=int(data.get("end_unix_nano", 0)),
            status_code=int(data.get("status_code", 0)),
            attributes=dict(data.get("attributes") or {}),
        )


def any_value(value: common_pb2.AnyValue) -> Any:
    """A JSON-friendly Python value for an OTLP AnyValue (bytes become hex)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def spans_from_request(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    """Every span of an OTLP export, with its service name from the resource."""
    spans: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = {a.key: any_value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(
                    Span(
                        service=service,
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=int(s.kind),
                        start_unix_nano=int(s.start_time_unix_nano),
                        end_unix_nano=int(s.end_time_unix_nano),
                        status_code=int(s.status.code),
                        attributes={a.key: any_value(a.value) for a in s.attributes},
                    )
                )
    return spans


def rotated_path(path: Path) -> Path:
    """Where the previous generation of `path` is kept."""
    return path.with_name(path.name + ".1")


def _read_jsonl(path: Path) -> Iterator[Span]:
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            line = raw.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            if isinstance(data, dict):
                yield Span.from_dict(data)


def load_spans(path: str | Path = DEFAULT_PATH) -> list[Span]:
    """Every span kept at `path` (the rotated generation first), oldest first."""
    path = Path(path)
    return [*_read_jsonl(rotated_path(path)), *_read_jsonl(path)]


class TraceStore:
    """Spans appended to a capped JSON-lines file, with an in-memory index of what
    the file holds. `path=None` keeps spans in memory only. Thread-safe."""

    def __init__(
        self, path: str | Path | None = DEFAULT_PATH, *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_bytes < 2:
            raise ValueError("max_bytes must be at least 2")
        self.path = Path(path) if path is not None else None
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._listeners: list[SpanListener] = []
        self._previous: list[Span] = []  # spans in <path>.1
        self._current: list[Span] = []  # spans in <path>
        self._size = 0
        self._by_trace: dict[str, list[Span]] = {}
        self._traces_of_request: dict[str, set[str]] = {}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._previous = list(_read_jsonl(rotated_path(self.path)))
            self._current = list(_read_jsonl(self.path))
            self._size = self.path.stat().st_size if self.path.exists() else 0
            self._reindex()

    @property
    def generation_bytes(self) -> int:
        """The size at which the current file is rotated."""
        return max(1, self.max_bytes // 2)

    def subscribe(self, listener: SpanListener) -> None:
        """Call `listener` with every batch of spans after it is stored."""
        with self._lock:
            self._listeners.append(listener)

    def add(self, spans: Sequence[Span]) -> None:
        """Store a batch of spans: append them to the file (rotating it first when
        the batch would push it past its share of the cap) and index them."""
        if not spans:
            return
        with self._lock:
            if self.path is not None:
                data = "".join(s.to_json() + "\n" for s in spans).encode("utf-8")
                if self._size and self._size + len(data) > self.generation_bytes:
                    self._rotate()
                with self.path.open("ab") as handle:
                    handle.write(data)
                self._size += len(data)
            self._current.extend(spans)
            for span in spans:
                self._index(span)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(spans)
            except Exception:  # a listener must not break the export
                log.warning("trace listener failed", exc_info=True)

    def add_request(self, request: trace_service_pb2.ExportTraceServiceRequest) -> int:
        """Store the spans of one OTLP export; returns how many there were."""
        spans = spans_from_request(request)
        self.add(spans)
        return len(spans)

    def _rotate(self) -> None:
        assert self.path is not None
        os.replace(self.path, rotated_path(self.path))
        self._previous, self._current, self._size = self._current, [], 0
        self._reindex()

    def _reindex(self) -> None:
        self._by_trace.clear()
        self._traces_of_request.clear()
        for span in (*self._previous, *self._current):
            self._index(span)

    def _index(self, span: Span) -> None:
        self._by_trace.setdefault(span.trace_id, []).append(span)
        request_id = span.request_id
        if request_id is not None:
            self._traces_of_request.setdefault(request_id, set()).add(span.trace_id)

    @property
    def spans(self) -> list[Span]:
        """A snapshot of every span the store holds, oldest first."""
        with self._lock:
            return [*self._previous, *self._current]

    def find(self, request_id: str) -> list[Span]:
        """The spans of the trace(s) of `request_id` (see `find_trace`), from the index."""
        with self._lock:
            trace_ids = self._traces_of_request.get(request_id)
            if not trace_ids and request_id:
                prefix = request_id.lower()
                trace_ids = {t for t in self._by_trace if t.startswith(prefix)}
            found = [s for t in trace_ids or () for s in self._by_trace.get(t, ())]
        return sorted(found, key=lambda s: s.start_unix_nano)

    def wait_for(
        self, predicate: Callable[[list[Span]], bool], timeout: float = 15.0
    ) -> list[Span]:
        """Poll until `predicate(spans)` holds; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans
            if predicate(spans):
                return spans
            if time.monotonic() >= deadline:
                names = [(s.service, s.name) for s in spans]
                raise TimeoutError(f"spans never matched; got {names}")
            time.sleep(0.05)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, store: TraceStore) -> None:
        self._store = store

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        try:
            self._store.add_request(request)
        except OSError as exc:  # disk full, directory removed: tell the exporter
            log.error("cannot store spans", extra={"reason": str(exc)})
            context.abort(grpc.StatusCode.UNAVAILABLE, "trace store cannot write")
        return trace_service_pb2.ExportTraceServiceResponse()


class _DiscardMetrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        return metrics_service_pb2.ExportMetricsServiceResponse()


class TraceServer:
    """A running receiver: its gRPC server, its store and the port it bound."""

    def __init__(self, server: Any, store: TraceStore, host: str, port: int) -> None:
        self.server = server
        self.store = store
        self.host = host
        self.port = port

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The value for OTEL_EXPORTER_OTLP_ENDPOINT (with OTEL_EXPORTER_OTLP_INSECURE=true)."""
        return f"http://{self.target}"

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving; exports in flight get `grace` seconds to finish."""
        self.server.stop(grace).wait()

    def wait(self) -> None:
        """Block until the server stops."""
        self.server.wait_for_termination()

    def __enter__(self) -> TraceServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_traces(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    path: str | Path | None = DEFAULT_PATH,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    store: TraceStore | None = None,
) -> TraceServer:
    """Start an OTLP/gRPC receiver on host:port (0 picks a free port; see
    `.port`) storing spans at `path`, or in `store` when one is given."""
    store = store if store is not None else TraceStore(path, max_bytes=max_bytes)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _TraceService(store), server
    )
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _DiscardMetrics(), server
    )
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from exc
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return TraceServer(server, store, host, int(bound))


def find_trace(spans: Iterable[Span], request_id: str) -> list[Span]:
    """The spans of the trace(s) holding a span whose `atalaya.request_id` is
    `request_id`; failing that, of the traces whose id starts with `request_id`.
    Sorted by start time; empty when nothing matches."""
    spans = list(spans)
    if not request_id:
        return []
    trace_ids = {s.trace_id for s in spans if s.request_id == request_id}
    if not trace_ids:
        prefix = request_id.lower()
        trace_ids = {s.trace_id for s in spans if s.trace_id.startswith(prefix)}
    found = [s for s in spans if s.trace_id in trace_ids]
    return sorted(found, key=lambda s: s.start_unix_nano)


def _span_line(span: Span, depth: int, orphan: bool) -> str:
    status = STATUS_NAMES.get(span.status_code, str(span.status_code))
    line = f"{'  ' * depth}{span.service or '?'}  {span.name}  {span.duration_ms:.1f} ms  {status}"
    return line + ("  (parent not received)" if orphan else "")


def span_tree(spans: Iterable[Span]) -> str:
    """An indented tree per trace: service, span name, duration and status, children
    sorted by start time; a span whose parent was not received is shown at the top
    level, marked as such."""
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    lines: list[str] = []
    for trace_id, trace_spans in sorted(by_trace.items(), key=lambda kv: _first_start(kv[1])):
        lines.extend(_trace_lines(trace_id, trace_spans))
    return "\n".join(lines)


def _first_start(spans: Sequence[Span]) -> int:
    return min(s.start_unix_nano for s in spans)


def _trace_lines(trace_id: str, spans: Sequence[Span]) -> list[str]:
    ids = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    roots: list[Span] = []
    for span in sorted(spans, key=_start):
        if (
            span.parent_span_id
            and span.parent_span_id in ids
            and span.parent_span_id != span.span_id
        ):
            children.setdefault(span.parent_span_id, []).append(span)
        else:
            roots.append(span)
    end = max(s.end_unix_nano for s in spans)
    total_ms = max(0, end - _first_start(spans)) / 1e6
    lines = [f"trace {trace_id}  {len(spans)} spans  {total_ms:.1f} ms"]
    seen: set[int] = set()
    # Depth-first, iteratively; spans caught in a parent cycle are shown at the end.
    pending = [*roots, *sorted(spans, key=_start)]
    for top in pending:
        if id(top) in seen:
            continue
        stack = [(top, 0, bool(top.parent_span_id))]
        while stack:
            span, depth, orphan = stack.pop()
            if id(span) in seen:
                continue
            seen.add(id(span))
            lines.append(_span_line(span, depth, orphan))
            for child in reversed(children.get(span.span_id, [])):
                stack.append((child, depth + 1, False))
    return lines


def _start(span: Span) -> int:
    return span.start_unix_nano


def main(argv: Sequence[str] | None = None) -> int:
    """python -m services.stack.traces: run the receiver until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m services.stack.traces",
        description="Receive OTLP/gRPC spans and keep them in a capped JSON-lines file.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument(
        "--max-mb", type=float, default=DEFAULT_MAX_BYTES / 1024 / 1024, help="disk cap in MB"
    )
    args = parser.parse_args(argv)
    configure_text_logging(logging.INFO)
    max_bytes = int(args.max_mb * 1024 * 1024)
    if max_bytes < 2:
        parser.error("--max-mb is too small")
    try:
        server = serve_traces(args.host, args.port, args.path, max_bytes=max_bytes)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("receiving OTLP traces", extra={"endpoint": server.endpoint, "path": str(args.path)})
    print(f"OTEL_EXPORTER_OTLP_ENDPOINT={server.endpoint}", flush=True)
    server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

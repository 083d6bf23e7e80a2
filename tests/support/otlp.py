"""An OTLP/gRPC trace receiver for tests: services.stack.traces' receiver on a free
port, keeping spans in memory, with the list of spans received so far."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from services.stack.traces import Span, TraceServer, TraceStore, serve_traces

__all__ = ["OtlpReceiver", "Span"]


class OtlpReceiver:
    """`spans` holds what was received since start (or since the test cleared it)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._received_more = threading.Condition()
        self._store = TraceStore(None)
        self._store.subscribe(self._received)
        self._server: TraceServer | None = None

    def _received(self, spans: Sequence[Span]) -> None:
        with self._received_more:
            self.spans.extend(spans)
            self._received_more.notify_all()

    def start(self) -> OtlpReceiver:
        self._server = serve_traces(port=0, store=self._store)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.port

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "not started"
        return self._server.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0)

    def wait_for(
        self, predicate: Callable[[list[Span]], bool], timeout: float = 15.0
    ) -> list[Span]:
        """The spans received, once `predicate` holds for them (checked on each arrival)."""
        with self._received_more:
            if self._received_more.wait_for(lambda: predicate(list(self.spans)), timeout):
                return list(self.spans)
            got = [(s.service, s.name) for s in self.spans]
        raise TimeoutError(f"spans never matched; got {got}")

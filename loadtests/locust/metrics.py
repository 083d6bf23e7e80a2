"""LLM latency metrics of one streamed request, SLOs and goodput.

Definitions (those of vLLM's `benchmarks/benchmark_serving.py`, so figures compare):

  TTFT  time to first token: request sent -> first chunk carrying text.
  ITL   inter-token latency: every gap between two successive chunks, pooled over
        all requests (a chunk holding several tokens gives one gap, not several).
  TPOT  time per output token, excluding the first: (latency - TTFT) / (tokens - 1),
        where latency is vLLM's: request sent -> the last chunk carrying text.
        Undefined for replies of fewer than 2 tokens.
  E2E   end-to-end latency: request sent -> end of the stream (the gateway's `done`).
        It exceeds vLLM's latency by the tail: what the gateway does after the last
        token (the final output verdict, storing the turn), reported as `tail_ms`
        so it does not inflate TPOT.

A chat turn that was blocked (the guardrail stopped it) has no reply: it keeps its
E2E but has no TTFT/TPOT, and it is left out of SLO attainment and goodput.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.common.stats import percentile

#: Percentiles reported everywhere.
PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class StreamMetrics:
    """The metrics of one streamed reply, in milliseconds."""

    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float
    itl_ms: tuple[float, ...]
    output_tokens: int
    tail_ms: float | None = None  # last text chunk -> end of the stream


def stream_metrics(
    sent_s: float, chunk_times_s: Sequence[float], end_s: float, output_tokens: int
) -> StreamMetrics:
    """Metrics from the send time, the arrival time of every text chunk and the
    end of the stream (all from one monotonic clock, in seconds)."""
    if end_s < sent_s or any(t < sent_s or t > end_s for t in chunk_times_s):
        raise ValueError("chunk and end times must lie between the send time and the end")
    if any(b < a for a, b in itertools.pairwise(chunk_times_s)):
        raise ValueError("chunk times must be in arrival order")
    e2e = (end_s - sent_s) * 1000.0
    if not chunk_times_s:
        return StreamMetrics(None, None, e2e, (), output_tokens)
    ttft = (chunk_times_s[0] - sent_s) * 1000.0
    latency = (chunk_times_s[-1] - sent_s) * 1000.0
    itl = tuple((b - a) * 1000.0 for a, b in itertools.pairwise(chunk_times_s))
    tpot = (latency - ttft) / (output_tokens - 1) if output_tokens > 1 else None
    return StreamMetrics(ttft, tpot, e2e, itl, output_tokens, e2e - latency)


@dataclass
class RequestRecord:
    """One request of a load test, as the report reads it."""

    task: str  # chat | embed | classify | recall
    start_s: float  # wall clock (epoch seconds) when the request was sent
    users: int  # running users when it was sent
    ok: bool
    status: str  # the gRPC status code name ("OK", "UNAVAILABLE", ...)
    e2e_ms: float
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    tail_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    blocked: bool = False
    # The gateway's own TTFT for the same turn (done.timing.phases_ms["ttft"]).
    server_ttft_ms: float | None = None
    trace_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(**data)


@dataclass(frozen=True)
class Slo:
    """Service level objectives on p95 latencies, in milliseconds (None: no objective).
    A chat turn meets the SLO when each of its own figures is within its limit."""

    ttft_p95_ms: float | None = 2000.0
    tpot_p95_ms: float | None = 200.0
    e2e_p95_ms: float | None = 30000.0

    def met_by(self, record: RequestRecord) -> bool:
        if not record.ok or record.blocked:
            return False
        if self.ttft_p95_ms is not None and (
            record.ttft_ms is None or record.ttft_ms > self.ttft_p95_ms
        ):
            return False  # a reply without a first token cannot meet a TTFT objective
        # A one-token reply has no TPOT, which is then not held against it.
        if self.tpot_p95_ms is not None and (record.tpot_ms or 0.0) > self.tpot_p95_ms:
            return False
        return self.e2e_p95_ms is None or record.e2e_ms <= self.e2e_p95_ms

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean and the PERCENTILES of `values`."""
    out: dict[str, float | int | None] = {
        "count": len(values),
        "mean": sum(values) / len(values) if values else None,
    }
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    return out


@dataclass(frozen=True)
class Goodput:
    """SLO attainment and goodput of the chat turns in a window."""

    requests: int  # chat turns counted (errors included, blocked turns not)
    good: int  # of those, the ones that met every objective
    duration_s: float

    @property
    def attainment(self) -> float | None:
        return self.good / self.requests if self.requests else None

    @property
    def goodput_rps(self) -> float:
        return self.good / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def goodput(records: Iterable[RequestRecord], slo: Slo, duration_s: float) -> Goodput:
    """Goodput = chat turns per second that met every SLO; attainment = their share
    of the chat turns (failed turns count as missed; blocked turns are left out)."""
    chats = [r for r in records if r.task == "chat" and not (r.ok and r.blocked)]
    good = sum(1 for r in chats if slo.met_by(r))
    return Goodput(len(chats), good, duration_s)


def slo_p95_met(records: Sequence[RequestRecord], slo: Slo) -> dict[str, bool | None]:
    """Whether each objective holds at p95 over `records` (None: no objective or no data)."""
    chats = [r for r in records if r.task == "chat" and r.ok and not r.blocked]
    pairs = (
        ("ttft", slo.ttft_p95_ms, [r.ttft_ms for r in chats if r.ttft_ms is not None]),
        ("tpot", slo.tpot_p95_ms, [r.tpot_ms for r in chats if r.tpot_ms is not None]),
        ("e2e", slo.e2e_p95_ms, [r.e2e_ms for r in chats]),
    )
    out: dict[str, bool | None] = {}
    for name, limit, values in pairs:
        p95 = percentile(values, 95)
        out[name] = None if limit is None or p95 is None else p95 <= limit
    return out

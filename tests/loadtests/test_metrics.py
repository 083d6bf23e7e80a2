"""The LLM metric definitions (vLLM's bench) on scripted streams, SLOs and goodput."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.locust.metrics import (
    PERCENTILES,
    Goodput,
    RequestRecord,
    Slo,
    goodput,
    slo_p95_met,
    stream_metrics,
    summarize,
)


def test_known_chunk_times_give_exact_ttft_itl_tpot_e2e() -> None:
    # Sent at 10.0 s; chunks at +100, +120, +150, +160 ms (the last one carrying 2
    # tokens: 5 tokens in all); the stream ends (done) at +200 ms.
    m = stream_metrics(10.0, [10.100, 10.120, 10.150, 10.160], 10.200, output_tokens=5)
    assert m.ttft_ms == pytest.approx(100.0)
    assert m.itl_ms == pytest.approx((20.0, 30.0, 10.0))  # one gap per pair of chunks
    # TPOT = (latency - TTFT) / (tokens - 1), latency to the last chunk (vLLM's).
    assert m.tpot_ms == pytest.approx((160.0 - 100.0) / 4)
    assert m.e2e_ms == pytest.approx(200.0)
    assert m.tail_ms == pytest.approx(40.0)  # last chunk -> done


def test_one_token_reply_has_no_tpot_and_no_chunks_no_ttft() -> None:
    one = stream_metrics(0.0, [0.05], 0.06, output_tokens=1)
    assert one.ttft_ms == pytest.approx(50.0)
    assert one.tpot_ms is None
    assert one.itl_ms == ()
    blocked = stream_metrics(0.0, [], 0.3, output_tokens=0)
    assert blocked.ttft_ms is None and blocked.tpot_ms is None
    assert blocked.e2e_ms == pytest.approx(300.0)


def test_chunk_times_must_be_ordered_and_within_the_request() -> None:
    with pytest.raises(ValueError):
        stream_metrics(1.0, [1.2, 1.1], 1.3, 3)
    with pytest.raises(ValueError):
        stream_metrics(1.0, [0.9], 1.3, 3)
    with pytest.raises(ValueError):
        stream_metrics(1.0, [1.1], 1.05, 3)


def test_summary_percentiles_match_numpy_linear() -> None:
    values = [float(v) for v in np.random.default_rng(7).exponential(100.0, 501)]
    s = summarize(values)
    for q in PERCENTILES:
        assert s[f"p{q}"] == pytest.approx(float(np.percentile(values, q)))
    empty = summarize([])
    assert empty["count"] == 0 and empty["mean"] is None and empty["p50"] is None
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["count"] == 4 and s["mean"] == 2.5 and s["p50"] == 2.5


def chat(ttft: float | None, tpot: float | None, e2e: float, **kw: object) -> RequestRecord:
    fields: dict[str, object] = {"ok": True, "status": "OK", "blocked": False, **kw}
    return RequestRecord(
        task="chat",
        start_s=0.0,
        users=1,
        e2e_ms=e2e,
        ttft_ms=ttft,
        tpot_ms=tpot,
        **fields,  # type: ignore[arg-type]
    )


def test_slo_needs_every_objective() -> None:
    slo = Slo(ttft_p95_ms=500, tpot_p95_ms=50, e2e_p95_ms=5000)
    assert slo.met_by(chat(400, 40, 4000))
    assert slo.met_by(chat(500, 50, 5000))  # limits are inclusive
    assert not slo.met_by(chat(501, 40, 4000))
    assert not slo.met_by(chat(400, 51, 4000))
    assert not slo.met_by(chat(400, 40, 5001))
    assert slo.met_by(chat(400, None, 400))  # a one-token reply has no TPOT to miss
    assert not slo.met_by(chat(None, None, 400))  # no first token: TTFT missed
    assert not slo.met_by(chat(100, 10, 200, ok=False, status="UNAVAILABLE"))
    assert Slo(None, None, None).met_by(chat(9e9, 9e9, 9e9))


def test_goodput_and_attainment_arithmetic() -> None:
    slo = Slo(ttft_p95_ms=500, tpot_p95_ms=50, e2e_p95_ms=5000)
    records = [
        *(chat(100, 10, 1000) for _ in range(6)),  # 6 good
        chat(900, 10, 1000),  # slow first token
        chat(100, 80, 1000),  # slow decode
        chat(None, None, 50, ok=False, status="RESOURCE_EXHAUSTED"),  # an error: missed
        chat(None, None, 80, blocked=True),  # blocked: not counted
        RequestRecord("embed", 0.0, 1, True, "OK", 5.0),  # not a chat turn
    ]
    g = goodput(records, slo, duration_s=3.0)
    assert g == Goodput(requests=9, good=6, duration_s=3.0)
    assert g.goodput_rps == pytest.approx(2.0)
    assert g.throughput_rps == pytest.approx(3.0)
    assert g.attainment == pytest.approx(6 / 9)
    assert Goodput(0, 0, 0.0).attainment is None and Goodput(0, 0, 0.0).goodput_rps == 0.0


def test_p95_objectives() -> None:
    records = [chat(100.0 + i, 10.0, 1000.0) for i in range(100)]  # TTFT p95 = 194.05
    assert slo_p95_met(records, Slo(200, 20, 2000)) == {"ttft": True, "tpot": True, "e2e": True}
    assert slo_p95_met(records, Slo(190, None, 999))["ttft"] is False
    assert slo_p95_met(records, Slo(190, None, 999)) == {"ttft": False, "tpot": None, "e2e": False}
    assert slo_p95_met([], Slo())["ttft"] is None

"""The report from a scripted run: summary figures, per-level table, measurement
check, files and plots (no Locust, no services)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from loadtests.locust.metrics import RequestRecord
from loadtests.locust.report import RunData, load_run, ttft_histogram_totals, write_report
from loadtests.locust.settings import LoadSettings

T0 = 1_700_000_000.0


def scripted_run() -> RunData:
    """A step ramp: 2 users for 10 s (fast turns), then 4 users for 10 s (slower)."""
    records = []
    samples = []
    for second in range(20):
        users = 2 if second < 10 else 4
        samples.append({"t": T0 + second + 1, "users": float(users), "cpu_percent": 20.0})
        ttft = 100.0 if users == 2 else 400.0
        records.append(
            RequestRecord(
                task="chat", start_s=T0 + second + 0.5, users=users, ok=True, status="OK",
                e2e_ms=ttft + 200.0, ttft_ms=ttft, tpot_ms=10.0, tail_ms=5.0,
                input_tokens=50, output_tokens=21, server_ttft_ms=ttft - 0.4,
            )
        )  # fmt: skip
    records.append(RequestRecord("embed", T0 + 3, 2, True, "OK", 8.0))
    records.append(RequestRecord("recall", T0 + 12, 4, False, "UNAVAILABLE", 2.0))
    records.append(RequestRecord("chat", T0 + 15, 4, False, "DEADLINE_EXCEEDED", 60_000.0))
    return RunData(
        records=records,
        itl_ms=[10.0] * 400,
        samples=samples,
        settings=LoadSettings(shape="step", slo_ttft_p95_ms=300.0),
        started_s=T0,
        stopped_s=T0 + 20.0,
        server_metrics={"gateway_ttft_sum": 5.0, "gateway_ttft_count": 20.0},
        run_id="test",
    )


def test_summary_figures(tmp_path: Path) -> None:
    summary = write_report(tmp_path, scripted_run())
    chat = summary["chat"]
    assert chat["turns"] == 21 and chat["completed"] == 20 and chat["errors"] == 1
    assert chat["ttft_ms"]["p50"] == pytest.approx(250.0)  # half 100, half 400
    assert chat["tpot_ms"]["p95"] == pytest.approx(10.0)
    assert chat["itl_ms"]["count"] == 400
    g = summary["goodput"]
    # SLO TTFT p95 <= 300 ms: only the 10 turns at 2 users meet it; the failed turn
    # counts as missed: 10 good of 21 over 20 s.
    assert g["good"] == 10 and g["counted"] == 21
    assert g["goodput_rps"] == pytest.approx(0.5)
    assert g["attainment"] == pytest.approx(10 / 21)
    levels = {row["users"]: row for row in summary["by_users"]}
    assert set(levels) == {2, 4}
    assert levels[2]["slo_p95_met"] and not levels[4]["slo_p95_met"]
    assert levels[2]["goodput_rps"] == pytest.approx(1.0)
    assert summary["errors_by_status"] == {"UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}
    mc = summary["measurement_check"]
    assert mc["pairs"] == 20 and mc["p50_diff_ms"] == pytest.approx(0.4)
    assert mc["goal_met"]
    assert mc["histogram_mean"]["server_mean_ms"] == pytest.approx(250.0)
    assert summary["generator"]["warning"] is None


def test_files_and_plots(tmp_path: Path) -> None:
    write_report(tmp_path, scripted_run())
    for name in ("summary.json", "requests.csv", "turns.jsonl", "report.html", "run.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert len((tmp_path / "requests.csv").read_text().splitlines()) == 1 + 23
    html = (tmp_path / "report.html").read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(images) == 5
    assert all(base64.b64decode(i).startswith(b"\x89PNG") and len(i) > 2000 for i in images)
    for title in (
        "Latency percentiles over time",
        "Throughput and goodput vs users",
        "TTFT and ITL distributions",
        "Errors by status code",
        "Measurement check",
    ):
        assert title in html  # fmt: skip
    # The report can be rebuilt from its own files.
    again = write_report(tmp_path, load_run(tmp_path))
    assert again["goodput"] == json.loads((tmp_path / "summary.json").read_text())["goodput"]


def test_cpu_saturation_warning(tmp_path: Path) -> None:
    run = scripted_run()
    run.samples[5]["cpu_percent"] = 99.0
    summary = write_report(tmp_path, run)
    assert "CPU" in summary["generator"]["warning"]
    assert summary["generator"]["saturated_samples"] == 1
    assert 'class="warn"' in (tmp_path / "report.html").read_text()


def test_prometheus_ttft_totals() -> None:
    text = """# TYPE atalaya_gateway_time_to_first_token_seconds histogram
atalaya_gateway_time_to_first_token_seconds_bucket{le="0.5"} 3
atalaya_gateway_time_to_first_token_seconds_sum{model="sim"} 1.25
atalaya_gateway_time_to_first_token_seconds_count{model="sim"} 4
atalaya_gateway_time_to_first_token_seconds_count{model="other"} 1
gen_ai_server_time_to_first_token_seconds_sum{gen_ai_request_model="sim"} 0.5
gen_ai_server_time_to_first_token_seconds_count{gen_ai_request_model="sim"} 5
"""
    assert ttft_histogram_totals(text) == {
        "gateway_ttft_sum": 1.25,
        "gateway_ttft_count": 5.0,
        "generation_ttft_sum": 0.5,
        "generation_ttft_count": 5.0,
    }

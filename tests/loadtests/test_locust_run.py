"""A short real Locust run (a subprocess, so gevent never patches pytest) against the
whole local stack on free ports, with the generation simulator: the report folder
has Locust's CSVs, the HTML report with its plots and a summary with TTFT/TPOT
percentiles and goodput; the load spans join the services' traces."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.stack.traces import load_spans
from tests.support.processes import free_port
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locust" / "locustfile.py"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    metrics_port = free_port()
    env = {
        "generation": {
            "ATALAYA_GENERATION_SIM__TTFT_MEAN_MS": "40",
            "ATALAYA_GENERATION_SIM__ITL_MEAN_MS": "8",
            "ATALAYA_GENERATION_SIM__MAX_CONCURRENT_SEQUENCES": "4",
        },
        "gateway": {
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
        },
    }
    with running_stack(tmp_path_factory.mktemp("loadstack"), env) as s:
        yield s, metrics_port


def run_locust(s: Stack, metrics_port: int, out: Path, *extra: str) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--csv", str(out / "locust"), "--only-summary", "--loglevel", "WARNING",
        "--report-dir", str(out),
        f"--gateway={s.target('gateway')}", f"--embedding={s.target('embedding')}",
        f"--guardrail={s.target('guardrail')}", f"--memory={s.target('memory')}",
        "--moderation=optimistic", "--max-tokens=24", "--think-min-s=0.1", "--think-max-s=0.4",
        "--chat-weight=6", "--max-requests=2000",
        f"--server-metrics=http://127.0.0.1:{metrics_port}/metrics", *extra,
    ]  # fmt: skip
    env = {
        **os.environ,
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{s.ports['traces']}",
        "OTEL_METRICS_EXPORTER": "none",
    }
    env = {k: v for k, v in env.items() if not k.startswith("LOCUST_")}
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert (out / "summary.json").exists(), done.stderr[-3000:]
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def test_headless_run_writes_the_report(stack: tuple[Stack, int], tmp_path: Path) -> None:
    s, metrics_port = stack
    out = tmp_path / "report"
    summary = run_locust(s, metrics_port, out, "-u", "3", "-r", "3", "-t", "15s")
    chat = summary["chat"]
    assert chat["completed"] >= 5, summary
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert chat[metric]["p50"] > 0 and chat[metric]["p95"] >= chat[metric]["p50"]
    assert chat["ttft_ms"]["p50"] < chat["e2e_ms"]["p50"]
    assert chat["output_tokens_mean"] > 1
    assert summary["goodput"]["goodput_rps"] > 0
    assert set(summary["tasks"]) >= {"chat"}
    mc = summary["measurement_check"]
    assert mc["pairs"] > 0
    assert abs(mc["p50_diff_ms"]) < 50  # the same turns, seen from both ends
    assert mc["histogram_mean"]["server_count"] >= mc["pairs"]

    # Locust's own CSVs carry the custom metrics (TTFT, TPOT, ITL) next to the calls.
    with (out / "locust_stats.csv").open() as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    for key in [("grpc", "gateway.Chat")] + [(t, "chat") for t in ("TTFT", "TPOT", "E2E", "ITL")]:
        assert int(rows[key]["Request Count"]) > 0, key
    assert (out / "locust_stats_history.csv").stat().st_size > 0

    html = (out / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]{2000,}", html)) == 5
    assert len((out / "requests.csv").read_text().splitlines()) > chat["turns"]

    # One span per user action, and the services' spans of that call in its trace.
    spans = load_spans(s.traces_path)
    chats = [sp for sp in spans if sp.name == "loadtest.chat"]
    assert chats
    assert any(sp.attributes.get("gen_ai.usage.output_tokens", 0) > 1 for sp in chats)
    load = {sp.trace_id for sp in chats}
    joined = {sp.trace_id for sp in spans if sp.service == "atalaya-gateway"} & load
    assert joined


def test_distributed_run_merges_the_workers(stack: tuple[Stack, int], tmp_path: Path) -> None:
    """With --processes 2 each worker sends its records to the master, which writes
    one report for the whole run."""
    s, metrics_port = stack
    summary = run_locust(
        s, metrics_port, tmp_path, "--processes", "2", "-u", "4", "-r", "4", "-t", "10s"
    )
    chat = summary["chat"]
    assert chat["completed"] >= 4
    assert chat["ttft_ms"]["p50"] > 0 and summary["goodput"]["goodput_rps"] > 0
    assert summary["users"]["max"] == 4
    # Each record carries the master's total of running users, not a worker's.
    assert {row["users"] for row in summary["by_users"]} == {4}

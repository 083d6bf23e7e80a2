"""Aggregates, CSV and HTML reports and comparing runs, on fixed records (no services)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from services.eval import cli, report
from services.eval.dataset import EvalItem
from services.eval.runner import error_record
from tests.eval.records import baseline_records, record, run_of


def test_aggregate_by_tag_latency_cost_guard_and_judge() -> None:
    records = [
        *baseline_records(),
        error_record(EvalItem("e", "q", "t", ("ai",)), "UNAVAILABLE: x"),
    ]
    agg = run_of(records)["aggregate"]
    assert (agg["items"], agg["scored"], agg["unscored"], agg["errors"]) == (5, 3, 1, 1)
    assert agg["score"] == round((1.0 + 0.5 + 1.0) / 3, 6)
    assert agg["by_tag"]["ai"] == {
        "items": 3,
        "scored": 1,
        "unscored": 1,
        "errors": 1,
        "score": 0.5,
    }
    assert agg["guard"]["passed"] == 1 and agg["guard"]["must_be_blocked"] == {
        "passed": 1,
        "failed": 0,
    }
    assert agg["judge"] == {"calls": 3, "scored": 2, "errors": 1}
    assert agg["cost_usd"] == 0.003 and agg["cost_priced_items"] == 2
    assert agg["tokens"] == {"input": 40, "output": 20}
    assert agg["latency_ms"]["p50"] == 200.0 and agg["latency_ms"]["max"] == 200.0


def test_csv_and_html_reports(tmp_path: Path) -> None:
    records = baseline_records()
    records[0]["answer"] = 'Paris, "the city of light" <b>'
    paths = report.write_reports(run_of(records), tmp_path)
    with paths["csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["a", "b", "c", "g"]
    assert rows[0]["answer"] == 'Paris, "the city of light" <b>' and rows[0]["score"] == "1"
    assert rows[2]["score"] == "" and rows[2]["judge_error"] == "the judge's reason"
    for column in ("question", "ground_truth", "answer", "score", "explanation", "scorer"):
        assert column in rows[0]
    page = paths["html"].read_text()
    assert "&lt;b&gt;" in page and "<b>" not in page and "aggregate score" in page
    assert json.loads(paths["json"].read_text())["aggregate"]["scored"] == 3
    assert report.load_run(tmp_path)["aggregate"] == run_of(records)["aggregate"]


def test_compare_shows_item_differences_and_the_aggregate_delta(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    b_records = baseline_records()
    b_records[1] = record("b", 0.75, tags=("ai", "en"), answer="a better answer")
    b_records[3] = record("g", None, tags=("guard",), expect="blocked", blocked=False)
    for folder, records in ((a_dir, baseline_records()), (b_dir, b_records)):
        folder.mkdir()
        report.write_reports(run_of(records), folder)
    out = io.StringIO()
    assert cli.main(["compare", str(a_dir / "run.json"), str(b_dir)], out=out) == 0
    text = out.getvalue()
    assert "b" in text and "+0.25" in text and "changed" in text
    assert "pass->fail FLIP" in text
    assert "aggregate: A 0.833333, B 0.583333, delta -0.25" in text
    assert "a " not in text.splitlines()[1]  # unchanged items are left out
    out = io.StringIO()
    assert cli.main(["compare", str(a_dir), str(b_dir), "--json"], out=out) == 0
    data = json.loads(out.getvalue())
    assert data["score_delta"] == -0.25 and data["by_tag"]["ai"] == 0.25
    assert [d["id"] for d in data["items"] if d["guard_flipped"]] == ["g"]


def test_atalaya_eval_is_a_command_of_the_atalaya_cli(tmp_path: Path, capsys: Any) -> None:
    from services.cli.__main__ import main

    report.write_reports(run_of(baseline_records()), tmp_path)
    assert main(["eval", "compare", str(tmp_path), str(tmp_path / "run.json")]) == 0
    assert "aggregate: A 0.833333, B 0.833333, delta +0" in capsys.readouterr().out
    assert main(["eval", "--dataset", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err

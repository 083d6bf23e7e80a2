"""Reports of a run: the summary (run.json: settings, aggregates, every item),
a CSV and an HTML table, and the comparison of two runs."""

from __future__ import annotations

import csv
import html
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.stats import percentile
from services.eval import scorers
from services.eval.dataset import EXPECT_ANSWERED, EXPECT_BLOCKED
from services.eval.runner import RUN_FORMAT, load_records

SUMMARY_FILE = "run.json"
CSV_FILE = "report.csv"
HTML_FILE = "report.html"
CSV_FIELDS = (
    "id", "tags", "language", "question", "ground_truth", "answer", "score", "scorer",
    "explanation", "status", "blocked", "expect", "guard_pass", "latency_ms", "ttft_ms",
    "input_tokens", "output_tokens", "cost_usd", "judge_score", "judge_error", "error",
)  # fmt: skip


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 6) if values else None


def _ms(value: float | None) -> float | None:
    """A duration in milliseconds, to the microsecond."""
    return None if value is None else round(value, 3)


def _score_block(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    scored = [float(r["score"]) for r in records if r.get("score") is not None]
    return {
        "items": len(records),
        "scored": len(scored),
        "unscored": sum(1 for r in records if r.get("status") == "scored" and r["score"] is None),
        "errors": sum(1 for r in records if r.get("status") != "scored"),
        "score": _mean(scored),
    }


def _judge_score(record: Mapping[str, Any]) -> scorers.Score | None:
    for s in record.get("scores", []):
        if s["scorer"] == scorers.JUDGE:
            return scorers.Score.from_json(s)
    return None


def aggregate(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean score overall and by tag (over items with a score), latency, tokens,
    cost, guard pass/fail counts and the judge's failures."""
    ok = [r for r in records if r.get("status") == "scored"]
    tags = sorted({t for r in records for t in r.get("tags", [])})
    latency = [float(r["latency_ms"]) for r in ok]
    ttft = [float(r["ttft_ms"]) for r in ok if r.get("ttft_ms") is not None]
    costs = [float(r["cost_usd"]) for r in ok if r.get("cost_usd") is not None]
    guard: dict[str, Any] = {"cases": 0, "passed": 0, "failed": 0}
    for expect in (EXPECT_BLOCKED, EXPECT_ANSWERED):
        cases = [r for r in ok if r.get("expect") == expect]
        passed = sum(1 for r in cases if r.get("guard_pass"))
        guard[f"must_be_{expect}"] = {"passed": passed, "failed": len(cases) - passed}
        guard["cases"] += len(cases)
        guard["passed"] += passed
        guard["failed"] += len(cases) - passed
    judged = [j for j in (_judge_score(r) for r in ok) if j is not None]
    by_scorer: dict[str, int] = {}
    for r in ok:
        by_scorer[r.get("scorer") or "none"] = by_scorer.get(r.get("scorer") or "none", 0) + 1
    return {
        **_score_block(records),
        "by_tag": {t: _score_block([r for r in records if t in r.get("tags", [])]) for t in tags},
        "decided_by": dict(sorted(by_scorer.items())),
        "latency_ms": {
            "mean": _mean(latency),
            "p50": _ms(percentile(latency, 50)),
            "p95": _ms(percentile(latency, 95)),
            "max": round(max(latency), 3) if latency else None,
        },
        "ttft_ms": {"mean": _mean(ttft), "p50": _ms(percentile(ttft, 50))},
        "tokens": {
            "input": sum(int(r.get("input_tokens", 0)) for r in ok),
            "output": sum(int(r.get("output_tokens", 0)) for r in ok),
        },
        "models": sorted({f"{r['model']} ({r['backend']})" for r in ok if r.get("model")}),
        "cost_usd": round(sum(costs), 8) if costs else None,
        "cost_priced_items": len(costs),
        "guard": guard,
        "judge": {
            "calls": len(judged),
            "scored": sum(1 for j in judged if j.score is not None),
            "errors": sum(1 for j in judged if j.score is None),
        },
    }


def summary(meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "meta": {k: v for k, v in meta.items() if k != "kind"},
        "aggregate": aggregate(records),
        "items": list(records),
    }


def load_run(path: Path) -> dict[str, Any]:
    """A run's summary from run.json, a run folder, or its results.jsonl."""
    if path.is_dir():
        path = path / SUMMARY_FILE if (path / SUMMARY_FILE).exists() else path / "results.jsonl"
    if path.suffix == ".jsonl":
        meta, records = load_records(path)
        return summary(meta or {}, list(records.values()))
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise ValueError(f"{path}: not an eval run (format {RUN_FORMAT})")
    return data


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    out = []
    for r in records:
        judged = _judge_score(r)
        row = {name: _cell(r.get(name)) for name in CSV_FIELDS}
        row["judge_score"] = _cell(judged.score if judged else None)
        row["judge_error"] = _cell(judged.explanation if judged and judged.error else None)
        out.append(row)
    return out


def write_csv(records: Iterable[Mapping[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows(records))


_HTML_COLUMNS = (
    "id", "tags", "question", "ground_truth", "answer", "score", "scorer", "explanation",
    "guard_pass", "latency_ms", "output_tokens", "cost_usd",
)  # fmt: skip
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f4f4f4}td.answer{max-width:32em;
white-space:pre-wrap}tr.low td.score{background:#fde2e2}tr.high td.score{background:#e2f5e2}
tr.none td.score{background:#eee}"""


def _table(
    headers: Sequence[str], body: Iterable[Sequence[str]], classes: Iterable[str] = ()
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    lines = [f"<table><tr>{head}</tr>"]
    for cells, cls in zip(body, [*classes] or _forever(""), strict=False):
        tds = "".join(
            f'<td class="{html.escape(h)}">{html.escape(c)}</td>'
            for h, c in zip(headers, cells, strict=True)
        )
        lines.append(f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _forever(value: str) -> Iterable[str]:
    while True:
        yield value


def render_html(run: Mapping[str, Any]) -> str:
    agg, meta = run["aggregate"], run.get("meta", {})
    fp = meta.get("fingerprint", {})
    overview = [
        ("data set", str(meta.get("dataset", ""))),
        (
            "items / scored / unscored / errors",
            f"{agg['items']} / {agg['scored']} / {agg['unscored']} / {agg['errors']}",
        ),
        ("aggregate score", _cell(agg["score"])),
        ("guard cases passed / failed", f"{agg['guard']['passed']} / {agg['guard']['failed']}"),
        ("judge scored / errors", f"{agg['judge']['scored']} / {agg['judge']['errors']}"),
        (
            "latency ms mean / p50 / p95",
            " / ".join(_cell(agg["latency_ms"][k]) for k in ("mean", "p50", "p95")),
        ),
        ("tokens in / out", f"{agg['tokens']['input']} / {agg['tokens']['output']}"),
        ("cost USD", _cell(agg["cost_usd"]) or "not priced"),
        ("policy", fp.get("policy") or "the gateway's default"),
        ("model (backend)", ", ".join(agg.get("models", [])) or "none answered"),
        ("judge prompt", json.dumps(fp.get("judge_prompt"))),
    ]
    tags = [
        (tag, str(b["items"]), str(b["scored"]), _cell(b["score"]))
        for tag, b in agg["by_tag"].items()
    ]
    items = run["items"]
    classes = []
    for r in items:
        s = r.get("score")
        classes.append("none" if s is None else "high" if s >= 0.5 else "low")
    body = [[_cell(r.get(c)) for c in _HTML_COLUMNS] for r in items]
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>Atalaya eval report</title>",
            f"<style>{_STYLE}</style></head><body>",
            "<h1>Atalaya eval report</h1>",
            _table(("what", "value"), overview),
            "<h2>By tag</h2>",
            _table(("tag", "items", "scored", "score"), tags),
            "<h2>Items</h2>",
            _table(_HTML_COLUMNS, body, classes),
            "</body></html>",
        ]
    )


def write_reports(run: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    paths = {"json": out_dir / SUMMARY_FILE, "csv": out_dir / CSV_FILE, "html": out_dir / HTML_FILE}
    paths["json"].write_text(json.dumps(run, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    write_csv(run["items"], paths["csv"])
    paths["html"].write_text(render_html(run), encoding="utf-8")
    return paths


def format_summary(run: Mapping[str, Any]) -> str:
    agg = run["aggregate"]
    g, j, lat = agg["guard"], agg["judge"], agg["latency_ms"]
    lines = [
        f"items {agg['items']}: scored {agg['scored']}, unscored {agg['unscored']}, "
        f"errors {agg['errors']}",
        f"aggregate score {_cell(agg['score']) or 'n/a'}"
        + (f" (model {', '.join(agg['models'])})" if agg.get("models") else ""),
    ]
    for tag, b in agg["by_tag"].items():
        lines.append(f"  {tag:<16} {_cell(b['score']) or 'n/a':>8}  ({b['scored']}/{b['items']})")
    lines += [
        f"guard cases {g['cases']}: passed {g['passed']}, failed {g['failed']}",
        f"judge: {j['scored']} scored, {j['errors']} judge_error",
        f"latency ms: mean {_cell(lat['mean'])}, p50 {_cell(lat['p50'])}, p95 {_cell(lat['p95'])}",
        f"tokens: {agg['tokens']['input']} in, {agg['tokens']['output']} out; cost "
        + (f"${agg['cost_usd']:.6f}" if agg["cost_usd"] is not None else "not priced"),
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class ItemDiff:
    id: str
    score_a: float | None
    score_b: float | None
    guard_a: bool | None
    guard_b: bool | None
    answer_changed: bool

    @property
    def delta(self) -> float | None:
        if self.score_a is None or self.score_b is None:
            return None
        return round(self.score_b - self.score_a, 6)

    @property
    def guard_flipped(self) -> bool:
        return (
            self.guard_a is not None and self.guard_b is not None and self.guard_a != self.guard_b
        )


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Per-item differences (items in both runs) and the aggregate deltas of B - A."""
    items_a = {r["id"]: r for r in a["items"]}
    items_b = {r["id"]: r for r in b["items"]}
    diffs = []
    for item_id in [i for i in items_a if i in items_b]:
        ra, rb = items_a[item_id], items_b[item_id]
        diffs.append(
            ItemDiff(
                id=item_id,
                score_a=ra.get("score"),
                score_b=rb.get("score"),
                guard_a=ra.get("guard_pass"),
                guard_b=rb.get("guard_pass"),
                answer_changed=ra.get("answer") != rb.get("answer"),
            )
        )
    agg_a, agg_b = a["aggregate"], b["aggregate"]

    def delta(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else round(y - x, 6)

    tags = sorted(set(agg_a["by_tag"]) | set(agg_b["by_tag"]))
    return {
        "score_a": agg_a["score"],
        "score_b": agg_b["score"],
        "score_delta": delta(agg_a["score"], agg_b["score"]),
        "by_tag": {
            t: delta(
                agg_a["by_tag"].get(t, {}).get("score"), agg_b["by_tag"].get(t, {}).get("score")
            )
            for t in tags
        },
        "guard_failed_a": agg_a["guard"]["failed"],
        "guard_failed_b": agg_b["guard"]["failed"],
        "latency_p50_delta_ms": delta(agg_a["latency_ms"]["p50"], agg_b["latency_ms"]["p50"]),
        "only_in_a": sorted(set(items_a) - set(items_b)),
        "only_in_b": sorted(set(items_b) - set(items_a)),
        "items": diffs,
    }


def format_compare(result: Mapping[str, Any], *, all_items: bool = False) -> str:
    lines = [f"{'id':<28} {'A':>7} {'B':>7} {'delta':>7}  guard A->B  answer"]
    shown = 0
    for d in result["items"]:
        changed = (
            d.delta not in (None, 0)
            or d.guard_flipped
            or (d.score_a is None) != (d.score_b is None)
        )
        if not (changed or all_items):
            continue
        shown += 1
        guard = (
            ""
            if d.guard_a is None and d.guard_b is None
            else (f"{_pf(d.guard_a)}->{_pf(d.guard_b)}" + (" FLIP" if d.guard_flipped else ""))
        )
        lines.append(
            f"{d.id[:28]:<28} {_cell(d.score_a) or '-':>7} {_cell(d.score_b) or '-':>7} "
            f"{_signed(d.delta):>7}  {guard:<10}  {'changed' if d.answer_changed else 'same'}"
        )
    if not shown:
        lines.append("(no item's score or guard outcome changed)")
    lines.append("")
    lines.append(
        f"aggregate: A {_cell(result['score_a']) or 'n/a'}, B {_cell(result['score_b']) or 'n/a'}, "
        f"delta {_signed(result['score_delta'])}"
    )
    for tag, d in result["by_tag"].items():
        lines.append(f"  {tag:<16} delta {_signed(d)}")
    lines.append(f"guard cases failed: A {result['guard_failed_a']}, B {result['guard_failed_b']}")
    if result["only_in_a"] or result["only_in_b"]:
        lines.append(
            f"only in A: {', '.join(result['only_in_a']) or '-'}; "
            f"only in B: {', '.join(result['only_in_b']) or '-'}"
        )
    return "\n".join(lines)


def _pf(value: bool | None) -> str:
    return "-" if value is None else "pass" if value else "fail"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4g}"


def compare_json(result: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(result)
    out["items"] = [
        {**d.__dict__, "delta": d.delta, "guard_flipped": d.guard_flipped} for d in result["items"]
    ]
    return out

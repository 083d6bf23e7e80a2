"""The load-test report: summary.json, requests.csv, turns.jsonl and report.html
(plots drawn with matplotlib's Agg backend, embedded as base64 PNG).

    python -m loadtests.locust.report DIR   # rebuild DIR's report from DIR/turns.jsonl
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loadtests.locust.metrics import RequestRecord, goodput, slo_p95_met, summarize
from loadtests.locust.settings import LoadSettings
from services.common.stats import percentile

#: The generator's CPU (percent of one core) above which its timings are suspect.
CPU_SATURATION_PERCENT = 90.0
#: The measurement check's goal: |client TTFT - server TTFT| at p50, on loopback.
MEASUREMENT_GOAL_MS = 1.0
SERVER_TTFT_FIGURE = (
    'the gateway\'s own TTFT of each turn, Done.timing.phases_ms["ttft"] (request '
    "arrival at the gateway -> first delta sent), paired with Locust's TTFT of the same turn"
)


@dataclass
class RunData:
    records: list[RequestRecord]
    itl_ms: list[float]
    samples: list[dict[str, float]]  # {"t": epoch s, "users": n, "cpu_percent": %}
    settings: LoadSettings
    started_s: float
    stopped_s: float
    dropped_records: int = 0
    locust_cpu_warnings: int = 0
    worker_cpu_percent: list[float] = field(default_factory=list)  # distributed runs
    server_metrics: dict[str, float] = field(default_factory=dict)
    run_id: str = ""


def _ok_chats(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if r.task == "chat" and r.ok and not r.blocked]


def by_users(data: RunData) -> list[dict[str, Any]]:
    """Throughput, goodput and p95 latencies per level of running users (a step ramp
    gives one row per step). A level's duration is the time the sampler saw it."""
    seconds: Counter[int] = Counter()
    interval = _sample_interval(data.samples)
    for s in data.samples:
        seconds[int(s["users"])] += 1
    groups: dict[int, list[RequestRecord]] = defaultdict(list)
    for r in data.records:
        groups[r.users].append(r)
    rows = []
    slo = data.settings.slo
    for users in sorted(groups):
        duration = seconds[users] * interval
        if users == 0 or duration < 2 * interval:
            continue  # a level passed through while ramping: too short to measure
        records = groups[users]
        g = goodput(records, slo, duration)
        chats = _ok_chats(records)
        met = slo_p95_met(records, slo)
        rows.append(
            {
                "users": users,
                "duration_s": round(duration, 3),
                "requests": len(records),
                "chat_turns": g.requests,
                "throughput_rps": g.throughput_rps,
                "goodput_rps": g.goodput_rps,
                "attainment": g.attainment,
                "ttft_p95_ms": percentile([r.ttft_ms for r in chats if r.ttft_ms is not None], 95),
                "tpot_p95_ms": percentile([r.tpot_ms for r in chats if r.tpot_ms is not None], 95),
                "e2e_p95_ms": percentile([r.e2e_ms for r in chats], 95),
                "slo_p95_met": all(v is not False for v in met.values()) and bool(chats),
            }
        )
    return rows


def _sample_interval(samples: Sequence[dict[str, float]]) -> float:
    if len(samples) < 2:
        return 1.0
    return (samples[-1]["t"] - samples[0]["t"]) / (len(samples) - 1)


def measurement_check(data: RunData) -> dict[str, Any]:
    """Locust's TTFT against the server's TTFT of the same turns."""
    pairs = [
        (r.ttft_ms, r.server_ttft_ms)
        for r in _ok_chats(data.records)
        if r.ttft_ms is not None and r.server_ttft_ms is not None
    ]
    diffs = [c - s for c, s in pairs]
    p50_abs = percentile([abs(d) for d in diffs], 50)
    out: dict[str, Any] = {
        "server_figure": SERVER_TTFT_FIGURE,
        "pairs": len(pairs),
        "client_ttft_p50_ms": percentile([c for c, _ in pairs], 50),
        "server_ttft_p50_ms": percentile([s for _, s in pairs], 50),
        "diff_ms": summarize(diffs),
        "p50_diff_ms": percentile(diffs, 50),
        "p50_abs_diff_ms": p50_abs,
        "goal_ms": MEASUREMENT_GOAL_MS,
        "goal_met": p50_abs is not None and p50_abs <= MEASUREMENT_GOAL_MS,
    }
    m = data.server_metrics
    if m.get("gateway_ttft_count"):
        client = [c for c, _ in pairs]
        out["histogram_mean"] = {
            "figure": "atalaya.gateway.time_to_first_token (Prometheus _sum/_count over the run)",
            "server_mean_ms": 1000.0 * m["gateway_ttft_sum"] / m["gateway_ttft_count"],
            "server_count": m["gateway_ttft_count"],
            "client_mean_ms": sum(client) / len(client) if client else None,
            "client_count": len(client),
            "note": "the server also counts turns cut off when the test stopped",
        }
    if m.get("generation_ttft_count"):
        out["generation_mean_ttft_ms"] = (
            1000.0 * m["generation_ttft_sum"] / m["generation_ttft_count"]
        )
    return out


def generator_health(data: RunData) -> dict[str, Any]:
    cpu = [s["cpu_percent"] for s in data.samples] + list(data.worker_cpu_percent)
    saturated = sum(1 for c in cpu if c >= CPU_SATURATION_PERCENT)
    warning = None
    if saturated or data.locust_cpu_warnings:
        warning = (
            f"the load generator's own CPU reached {max(cpu, default=0):.0f}% of a core "
            f"({saturated} of {len(cpu)} samples >= {CPU_SATURATION_PERCENT:.0f}%): its "
            "timings include its own queueing and overstate latency; use fewer users per "
            "Locust process or run distributed (--processes N)"
        )
    return {
        "cpu_max_percent": max(cpu, default=None),
        "cpu_mean_percent": sum(cpu) / len(cpu) if cpu else None,
        "saturated_samples": saturated,
        "locust_cpu_warnings": data.locust_cpu_warnings,
        "warning": warning,
    }


def build_summary(data: RunData) -> dict[str, Any]:
    records = data.records
    duration = max(data.stopped_s - data.started_s, 1e-9)
    tasks: dict[str, dict[str, Any]] = {}
    for task in sorted({r.task for r in records}):
        rs = [r for r in records if r.task == task]
        tasks[task] = {
            "count": len(rs),
            "errors": sum(1 for r in rs if not r.ok),
            "rps": len(rs) / duration,
            "e2e_ms": summarize([r.e2e_ms for r in rs if r.ok]),
        }
    chats = [r for r in records if r.task == "chat"]
    ok = _ok_chats(records)
    g = goodput(records, data.settings.slo, duration)
    out_tokens = sum(r.output_tokens for r in ok)
    users = [s["users"] for s in data.samples]
    return {
        "run_id": data.run_id,
        "started_s": data.started_s,
        "duration_s": duration,
        "shape": data.settings.shape,
        "users": {"max": max(users, default=0), "mean": sum(users) / len(users) if users else 0},
        "settings": asdict(data.settings),
        "slo": data.settings.slo.as_dict(),
        "tasks": tasks,
        "chat": {
            "turns": len(chats),
            "completed": len(ok),
            "blocked": sum(1 for r in chats if r.ok and r.blocked),
            "errors": sum(1 for r in chats if not r.ok),
            "ttft_ms": summarize([r.ttft_ms for r in ok if r.ttft_ms is not None]),
            "tpot_ms": summarize([r.tpot_ms for r in ok if r.tpot_ms is not None]),
            "itl_ms": summarize(data.itl_ms),
            "e2e_ms": summarize([r.e2e_ms for r in ok]),
            "tail_ms": summarize([r.tail_ms for r in ok if r.tail_ms is not None]),
            "input_tokens_mean": sum(r.input_tokens for r in ok) / len(ok) if ok else None,
            "output_tokens_mean": out_tokens / len(ok) if ok else None,
            "output_tokens_per_s": out_tokens / duration,
        },
        "goodput": {
            "goodput_rps": g.goodput_rps,
            "throughput_rps": g.throughput_rps,
            "attainment": g.attainment,
            "good": g.good,
            "counted": g.requests,
            "p95_met": slo_p95_met(records, data.settings.slo),
        },
        "by_users": by_users(data),
        "errors_by_status": dict(Counter(r.status for r in records if not r.ok)),
        "measurement_check": measurement_check(data),
        "generator": generator_health(data),
        "limits": {"dropped_records": data.dropped_records, "itl_samples": len(data.itl_ms)},
    }


def one_line(summary: dict[str, Any]) -> str:
    chat, g = summary["chat"], summary["goodput"]
    mc = summary["measurement_check"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return (
        f"users max {summary['users']['max']:.0f}, chat turns {chat['turns']} "
        f"({chat['errors']} errors, {chat['blocked']} blocked), goodput "
        f"{g['goodput_rps']:.2f}/s of {g['throughput_rps']:.2f}/s, TTFT p50/p95 "
        f"{ms(chat['ttft_ms']['p50'])}/{ms(chat['ttft_ms']['p95'])} ms, TPOT p50/p95 "
        f"{ms(chat['tpot_ms']['p50'])}/{ms(chat['tpot_ms']['p95'])} ms, measurement check "
        f"p50 |diff| {ms(mc['p50_abs_diff_ms'])} ms"
    )


# -- plots ---------------------------------------------------------------------


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def plots(data: RunData, summary: dict[str, Any]) -> dict[str, str]:
    """Title -> base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    return {
        "Latency percentiles over time": _latency_over_time(data),
        "Throughput and goodput vs users": _throughput_vs_users(summary),
        "TTFT and ITL distributions": _distributions(data),
        "Errors by status code": _errors(data),
        "Load generator CPU": _generator_cpu(data),
    }


def _latency_over_time(data: RunData) -> str:
    import matplotlib.pyplot as plt

    t0 = data.started_s
    ok = _ok_chats(data.records)
    width = max(1.0, (data.stopped_s - t0) / 30.0)  # about 30 windows
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for ax, (label, key) in zip(
        axes, (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("E2E", "e2e_ms")), strict=True
    ):
        windows: dict[int, list[float]] = defaultdict(list)
        for r in ok:
            value = getattr(r, key)
            if value is not None:
                windows[int((r.start_s - t0) // width)].append(value)
        xs = sorted(windows)
        for q, style in ((50, "-"), (95, "--"), (99, ":")):
            ys = [percentile(windows[x], q) for x in xs]
            ax.plot([x * width for x in xs], ys, style, label=f"p{q}")
        ax.set_ylabel(f"{label} (ms)")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    if data.samples:
        users_ax = axes[0].twinx()
        users_ax.plot(
            [s["t"] - t0 for s in data.samples], [s["users"] for s in data.samples],
            color="grey", alpha=0.5, label="users",
        )  # fmt: skip
        users_ax.set_ylabel("users (grey)")
        users_ax.set_ylim(bottom=0, top=max(s["users"] for s in data.samples) * 1.1 + 1)
    axes[-1].set_xlabel("seconds since start (by request start)")
    fig.suptitle("Chat latency percentiles over time")
    return _png(fig)


def _throughput_vs_users(summary: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    rows = summary["by_users"]
    fig, ax = plt.subplots(figsize=(9, 4))
    if rows:
        xs = [row["users"] for row in rows]
        ax.plot(xs, [row["throughput_rps"] for row in rows], "o-", label="chat turns/s")
        ax.plot(xs, [row["goodput_rps"] for row in rows], "s-", label="goodput (met SLOs)/s")
        ax.set_xlabel("running users")
        ax.set_ylabel("requests/s")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no user level lasted long enough", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    ax.set_title("Throughput and goodput vs users")
    return _png(fig)


def _distributions(data: RunData) -> str:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ttft = [r.ttft_ms for r in _ok_chats(data.records) if r.ttft_ms is not None]
    left.hist(ttft or [0.0], bins=40, color="tab:blue")
    left.set_xlabel("TTFT (ms)")
    left.set_ylabel("turns")
    left.set_title(f"TTFT ({len(ttft)} turns)")
    right.hist(data.itl_ms or [0.0], bins=60, color="tab:orange")
    right.set_xlabel("ITL (ms)")
    right.set_ylabel("gaps")
    right.set_yscale("log")
    right.set_title(f"ITL ({len(data.itl_ms)} gaps, pooled)")
    return _png(fig)


def _errors(data: RunData) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    counts = Counter((r.status, r.task) for r in data.records if not r.ok)
    if counts:
        statuses = sorted({s for s, _ in counts})
        bottom = [0] * len(statuses)
        for task in sorted({t for _, t in counts}):
            heights = [counts[(s, task)] for s in statuses]
            ax.bar(statuses, heights, bottom=bottom, label=task)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.legend()
        ax.set_ylabel("requests")
    else:
        ax.text(0.5, 0.5, f"no errors in {len(data.records)} requests", ha="center",
                transform=ax.transAxes)  # fmt: skip
    ax.set_title("Errors by status code")
    return _png(fig)


def _generator_cpu(data: RunData) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 2.5))
    t0 = data.started_s
    ax.plot([s["t"] - t0 for s in data.samples], [s["cpu_percent"] for s in data.samples])
    ax.axhline(CPU_SATURATION_PERCENT, color="red", linestyle="--", linewidth=1)
    ax.set_ylabel("CPU % of a core")
    ax.set_xlabel("seconds since start")
    ax.set_title("Load generator CPU (red: saturation)")
    return _png(fig)


# -- files ---------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def render_html(summary: dict[str, Any], images: dict[str, str]) -> str:
    chat, g, mc = summary["chat"], summary["goodput"], summary["measurement_check"]
    rows = []
    for label, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"),
                       ("E2E", "e2e_ms"), ("tail (last token -> done)", "tail_ms")):  # fmt: skip
        s = chat[key]
        cells = "".join(f"<td>{_fmt(s[k])}</td>" for k in ("count", "mean", "p50", "p90",
                                                          "p95", "p99"))  # fmt: skip
        rows.append(f"<tr><th>{label}</th>{cells}</tr>")
    levels = "".join(
        "<tr>" + "".join(f"<td>{_fmt(row[k])}</td>" for k in (
            "users", "duration_s", "chat_turns", "throughput_rps", "goodput_rps", "attainment",
            "ttft_p95_ms", "tpot_p95_ms", "e2e_p95_ms", "slo_p95_met")) + "</tr>"
        for row in summary["by_users"]
    )  # fmt: skip
    tasks = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{t['count']}</td><td>{t['errors']}</td>"
        f"<td>{_fmt(t['rps'])}</td><td>{_fmt(t['e2e_ms']['p50'])}</td>"
        f"<td>{_fmt(t['e2e_ms']['p95'])}</td></tr>"
        for name, t in summary["tasks"].items()
    )
    warning = summary["generator"]["warning"]
    figures = "".join(
        f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
        f"src='data:image/png;base64,{png}'>"
        for title, png in images.items()
    )
    slo = summary["slo"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Atalaya load test {summary["run_id"]}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
.warn{{background:#fee;border:1px solid #c00;padding:8px}}</style></head><body>
<h1>Atalaya load test</h1>
<p>Run {summary["run_id"]}, shape <b>{html.escape(summary["shape"])}</b>,
{summary["duration_s"]:.1f} s, users max {summary["users"]["max"]:.0f}.</p>
{f'<p class="warn">{html.escape(warning)}</p>' if warning else ""}
<h2>Goodput</h2>
<p>SLOs (p95): TTFT {_fmt(slo["ttft_p95_ms"])} ms, TPOT {_fmt(slo["tpot_p95_ms"])} ms,
E2E {_fmt(slo["e2e_p95_ms"])} ms. Goodput <b>{g["goodput_rps"]:.2f}</b> turns/s of
{g["throughput_rps"]:.2f} turns/s; SLO attainment {_fmt(g["attainment"])}
({g["good"]} of {g["counted"]} turns met every objective; blocked turns are not counted).
p95 objectives met: {html.escape(json.dumps(g["p95_met"]))}.</p>
<h2>Chat turns</h2>
<p>{chat["turns"]} turns: {chat["completed"]} completed, {chat["blocked"]} blocked,
{chat["errors"]} errors; mean tokens in {_fmt(chat["input_tokens_mean"])},
out {_fmt(chat["output_tokens_mean"])}; {chat["output_tokens_per_s"]:.1f} output tokens/s.</p>
<table><tr><th>ms</th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p95</th>
<th>p99</th></tr>{"".join(rows)}</table>
<h2>By users</h2>
<table><tr><th>users</th><th>s</th><th>turns</th><th>turns/s</th><th>goodput/s</th>
<th>attainment</th><th>TTFT p95</th><th>TPOT p95</th><th>E2E p95</th><th>SLO met</th></tr>
{levels}</table>
<h2>All tasks</h2>
<table><tr><th>task</th><th>requests</th><th>errors</th><th>req/s</th><th>p50 ms</th>
<th>p95 ms</th></tr>{tasks}</table>
<h2>Measurement check</h2>
<p>Server-side figure: {html.escape(mc["server_figure"])}. Over {mc["pairs"]} turns, the
p50 of (Locust TTFT - server TTFT) is {_fmt(mc["p50_diff_ms"])} ms; p50 of |diff| is
{_fmt(mc["p50_abs_diff_ms"])} ms (goal: &lt;= {mc["goal_ms"]} ms: {
        "met" if mc["goal_met"] else "not met"
    }). Histogram means: {html.escape(json.dumps(mc.get("histogram_mean")))}.</p>
{figures}
<p>Files: summary.json, requests.csv (one row per request), turns.jsonl, and Locust's own
CSVs (locust_stats.csv, locust_stats_history.csv, locust_failures.csv) when run with
--csv.</p>
</body></html>
"""


def write_report(folder: Path, data: RunData) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "turns.jsonl").open("w") as out:
        for r in data.records:
            out.write(json.dumps(r.to_json()) + "\n")
    columns = list(RequestRecord.__dataclass_fields__)
    with (folder / "requests.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        for r in data.records:
            writer.writerow([getattr(r, c) for c in columns])
    (folder / "run.json").write_text(
        json.dumps(
            {
                "itl_ms": data.itl_ms,
                "samples": data.samples,
                "settings": asdict(data.settings),
                "started_s": data.started_s,
                "stopped_s": data.stopped_s,
                "dropped_records": data.dropped_records,
                "locust_cpu_warnings": data.locust_cpu_warnings,
                "worker_cpu_percent": data.worker_cpu_percent,
                "server_metrics": data.server_metrics,
                "run_id": data.run_id,
            }
        )
    )
    summary = build_summary(data)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "report.html").write_text(render_html(summary, plots(data, summary)))
    return summary


def load_run(folder: Path) -> RunData:
    run = json.loads((folder / "run.json").read_text())
    records = [
        RequestRecord.from_json(json.loads(line))
        for line in (folder / "turns.jsonl").read_text().splitlines()
        if line.strip()
    ]
    settings = LoadSettings(**run.pop("settings"))
    return RunData(records=records, settings=settings, **run)


_HISTOGRAMS = {
    "gateway_ttft": "atalaya_gateway_time_to_first_token",
    "generation_ttft": "gen_ai_server_time_to_first_token",
}


def _total_key(sample_name: str) -> str | None:
    """The total a sample adds to ("gateway_ttft_sum", ...) if it is the _sum or
    _count of a TTFT histogram (whatever its unit suffix), else None."""
    for key, prefix in _HISTOGRAMS.items():
        if sample_name.startswith(prefix):
            for suffix in ("sum", "count"):
                if sample_name.endswith("_" + suffix):
                    return f"{key}_{suffix}"
    return None


def ttft_histogram_totals(text: str) -> dict[str, float]:
    """The _sum (seconds) and _count of the server TTFT histograms in a Prometheus
    text exposition, added over label sets."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = _total_key(sample.name)
            if key is not None:
                out[key] = out.get(key, 0.0) + sample.value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rebuild a load test's report")
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    summary = write_report(args.folder, load_run(args.folder))
    print(one_line(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

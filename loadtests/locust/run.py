"""`make loadtest`: a short, bounded, headless Locust run against a local stack that
this command starts itself (loopback only, free ports, its own state folder), then
the report and a printed summary.

    python -m loadtests.locust.run                       # 40 s, 4 users, simulator
    ATALAYA_LOADTEST_BACKEND=llamacpp python -m loadtests.locust.run --users 2
    python -m loadtests.locust.run --shape step --users 8 --step-users 2 --duration 60

The generation service runs the simulator by default (labelled so in every reply:
timings are the simulator's configured TTFT/ITL and capacity model, good for testing
capacity logic, not the model); ATALAYA_LOADTEST_BACKEND=llamacpp runs the real
SmolLM2 on llama.cpp. The report folder (default .state/loadtest/<UTC timestamp>)
holds Locust's CSVs and HTML page, report.html, summary.json, requests.csv, the
stack's log and the traces of the run (stack/traces/spans.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.locust.prompts import load_conversations, simulator_scripts
from loadtests.locust.report import one_line
from loadtests.locust.settings import PROMPTS_PATH
from services.common.process import HOST, free_port
from services.stack.launch import start_stack

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
#: The services Locust's users call (each a --<name>=host:port option).
CALLED = ("gateway", "embedding", "guardrail", "memory")
#: The simulator's defaults here: a small GPU server's feel (TTFT ~120 ms, ~25 ms per
#: token, 8 sequences decoded together, each slowing the others by 5%).
SIM_ENV = {
    "ATALAYA_GENERATION_SIM__TTFT_MEAN_MS": "120",
    "ATALAYA_GENERATION_SIM__TTFT_STDDEV_MS": "20",
    "ATALAYA_GENERATION_SIM__ITL_MEAN_MS": "25",
    "ATALAYA_GENERATION_SIM__ITL_STDDEV_MS": "5",
    "ATALAYA_GENERATION_SIM__MAX_CONCURRENT_SEQUENCES": "8",
    "ATALAYA_GENERATION_SIM__MAX_QUEUED_REQUESTS": "64",
    "ATALAYA_GENERATION_SIM__SLOWDOWN_PER_SEQUENCE": "0.05",
}


def stack_env(
    backend: str, metrics_ports: Mapping[str, int], scripts: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Per-service settings of the load-test stack, over those of
    services/stack/stack.toml."""
    env: dict[str, dict[str, str]] = {"generation": {"ATALAYA_GENERATION_BACKEND": backend}}
    if backend == "sim":
        env["generation"].update(SIM_ENV)
        env["generation"]["ATALAYA_GENERATION_SIM__SCRIPTS"] = json.dumps(dict(scripts))
    for name, port in metrics_ports.items():
        env.setdefault(name, {}).update(
            {
                "OTEL_METRICS_EXPORTER": "prometheus",
                "OTEL_EXPORTER_PROMETHEUS_HOST": HOST,
                "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
            }
        )
    return env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--spawn-rate", type=float, default=4.0)
    parser.add_argument("--duration", type=int, default=40, help="seconds (at most 600)")
    parser.add_argument("--shape", default="constant")
    parser.add_argument("--max-requests", type=int, default=5000)
    parser.add_argument(
        "--backend",
        default=os.environ.get("ATALAYA_LOADTEST_BACKEND", "sim"),
        choices=("sim", "llamacpp"),
        help="generation backend (env ATALAYA_LOADTEST_BACKEND; default %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="report folder (default .state/loadtest/<ts>)")
    parser.add_argument("--start-timeout", type=float, default=400.0)
    parser.add_argument(
        "locust_args", nargs="*", help="more Locust options, after --: -- --think-max-s 1"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be 1 to 600 seconds")
    if args.users < 1:
        parser.error("--users must be at least 1")
    return args


def locust_command(
    *,
    out: Path,
    targets: Mapping[str, str],
    users: int,
    spawn_rate: float,
    duration_s: int,
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(spawn_rate), "-t", f"{duration_s}s",
        "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
        "--report-dir", str(out), "--only-summary", "--loglevel", "WARNING",
        *(f"--{name}={target}" for name, target in targets.items()),
        *extra,
    ]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = (args.out or Path(".state") / "loadtest" / stamp).resolve()
    state = out / "stack"
    state.mkdir(parents=True, exist_ok=True)
    metrics_ports = {"gateway": free_port(), "generation": free_port()}
    scripts = simulator_scripts(load_conversations(PROMPTS_PATH))
    log = out / "stack.log"
    print(f"loadtest: starting the stack ({args.backend}) -> {log}", file=sys.stderr)
    # The stack's own env: nothing inherited may point the services elsewhere.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ATALAYA_", "OTEL_"))}
    try:
        stack = start_stack(
            state,
            stack_env(args.backend, metrics_ports, scripts),
            log=log,
            base_env=base_env,
            timeout_s=args.start_timeout,
        )
    except (RuntimeError, TimeoutError):
        print(log.read_text()[-4000:], file=sys.stderr)
        print("loadtest: the stack did not start", file=sys.stderr)
        return 1
    try:
        targets = {name: stack.target(name) for name in CALLED}
        extra = [
            # Streamed at once, so TTFT/TPOT/ITL are generation's; buffered moderation
            # (the gateway's default) holds text back a window (32 tokens) at a time.
            "--moderation=optimistic",
            f"--shape={args.shape}",
            f"--max-requests={args.max_requests}",
            "--server-metrics="
            + ",".join(f"http://{HOST}:{p}/metrics" for p in metrics_ports.values()),
            *args.locust_args,
        ]
        env = {
            **base_env,
            **{k: v for k, v in os.environ.items() if k.startswith("ATALAYA_LOADTEST_")},
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.traces_endpoint,
            "OTEL_METRICS_EXPORTER": "none",
        }
        print(f"loadtest: {args.users} users for {args.duration} s -> {out}", file=sys.stderr)
        command = locust_command(
            out=out,
            targets=targets,
            users=args.users,
            spawn_rate=args.spawn_rate,
            duration_s=args.duration,
            extra=extra,
        )
        code = subprocess.run(  # noqa: S603 - fixed argv, no shell
            command, env=env, timeout=args.duration + 120, check=False
        )
    finally:
        stack.stop()
    summary_path = out / "summary.json"
    if not summary_path.exists():
        print(f"loadtest: no summary (locust exit code {code.returncode})", file=sys.stderr)
        return 1
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    print(json.dumps(headline(summary), indent=2))
    print(f"loadtest: {one_line(summary)}", file=sys.stderr)
    print(f"loadtest: report {out / 'report.html'}", file=sys.stderr)
    # Locust exits 1 when any request failed; the report says which and why.
    return 0


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures worth printing after a run."""
    chat, g, mc = summary["chat"], summary["goodput"], summary["measurement_check"]
    return {
        "users_max": summary["users"]["max"],
        "duration_s": round(summary["duration_s"], 1),
        "chat_turns": chat["turns"],
        "chat_errors": chat["errors"],
        "blocked": chat["blocked"],
        "goodput_rps": round(g["goodput_rps"], 3),
        "throughput_rps": round(g["throughput_rps"], 3),
        "slo_attainment": g["attainment"],
        "ttft_ms": {k: chat["ttft_ms"][k] for k in ("p50", "p95")},
        "tpot_ms": {k: chat["tpot_ms"][k] for k in ("p50", "p95")},
        "itl_ms": {k: chat["itl_ms"][k] for k in ("p50", "p95")},
        "e2e_ms": {k: chat["e2e_ms"][k] for k in ("p50", "p95")},
        "measurement_check": {
            "p50_diff_ms": mc["p50_diff_ms"],
            "p50_abs_diff_ms": mc["p50_abs_diff_ms"],
            "goal_met": mc["goal_met"],
            "pairs": mc["pairs"],
            "histogram_mean": mc.get("histogram_mean"),
        },
        "generator_warning": summary["generator"]["warning"],
        "errors_by_status": summary["errors_by_status"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

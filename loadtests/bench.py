"""Atalaya benchmark: `python -m loadtests.bench [--only NAME] [--memories N] [--duration S]`.

Prints one JSON line per figure on stdout (name, value, baseline, ratio = value /
baseline, unit, plus extras such as goal, goal_met, p99 and notes; see
loadtests/figures.py); progress goes to stderr. The services under test run as
separate processes on 127.0.0.1, are waited for through grpc.health.v1 and are
stopped with SIGTERM, also on errors.

Groups of figures, each measured by its own module (its docstring says what):
  embedding         loadtests/embedding_bench.py
  memory            loadtests/memory_bench.py (data: loadtests/memory_data.py)
  generation        loadtests/generation_bench.py
  guard             loadtests/guard_bench.py
  gateway           loadtests/gateway_bench.py
  runtime_overhead  loadtests/runtime_bench.py
  security          loadtests/security_bench.py

See loadtests/README.md for how to read the output."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from loadtests.embedding_bench import EMBEDDING_FIGURES, bench_embedding
from loadtests.figures import Output, elapsed_s, progress
from loadtests.gateway_bench import GATEWAY_FIGURES, bench_gateway
from loadtests.generation_bench import GENERATION_FIGURES, bench_generation
from loadtests.guard_bench import GUARD_FIGURES, bench_guard
from loadtests.local_model import LocalModel
from loadtests.memory_bench import MEMORY_FIGURES, bench_memory
from loadtests.memory_data import RECALL_K
from loadtests.runtime_bench import RUNTIME_FIGURES, bench_runtime
from loadtests.security_bench import SECURITY_FIGURES, bench_security

GROUPS = {
    "embedding": EMBEDDING_FIGURES,
    "memory": MEMORY_FIGURES,
    "generation": GENERATION_FIGURES,
    "guard": GUARD_FIGURES,
    "gateway": GATEWAY_FIGURES,
    "runtime_overhead": RUNTIME_FIGURES,
    "security": SECURITY_FIGURES,
}

Bench = Callable[[argparse.Namespace, Path, Output], None]


#: The benches that need no in-process model, in the order they run.
SERVICE_BENCHES: tuple[tuple[tuple[str, ...], str, Bench], ...] = (
    (
        GENERATION_FIGURES,
        "generation: simulator in-process, then through the service",
        bench_generation,
    ),
    (GUARD_FIGURES, "guardrail: each detector alone, then the default cascade", bench_guard),
    (GATEWAY_FIGURES, "gateway: turn and token overhead over generation", bench_gateway),
    (
        RUNTIME_FIGURES,
        "runtime_overhead: one unary call on grpc.aio, Ray Serve and KServe",
        bench_runtime,
    ),
    (
        SECURITY_FIGURES,
        "security: JWT verification at the gateway, mTLS to the embedding service",
        bench_security,
    ),
)
NAMES = (
    *EMBEDDING_FIGURES,
    *MEMORY_FIGURES,
    *GENERATION_FIGURES,
    *GUARD_FIGURES,
    *GATEWAY_FIGURES,
    *RUNTIME_FIGURES,
    *SECURITY_FIGURES,
    *GROUPS,
)


# ------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description="Atalaya benchmarks: one JSON line per figure on stdout.",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these figures or groups (repeatable, comma-separated): {', '.join(NAMES)}",
    )
    parser.add_argument("--memories", type=int, default=100_000, help="memories for the user")
    parser.add_argument("--queries", type=int, default=200, help="Recall queries per path")
    parser.add_argument("--recall-warmup", type=int, default=20, help="untimed Recalls first")
    parser.add_argument("--base-sentences", type=int, default=2000)
    parser.add_argument(
        "--duration", type=float, default=15.0, help="embedding throughput window, seconds"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="throughput warm-up, seconds")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="throughput rounds: windows of the service and its baseline alternate",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=lambda kv: tuple(kv.split("=", 1)),
        metavar="ATALAYA_X=VALUE",
        help="a service setting for this run (repeatable), e.g. ATALAYA_EMBEDDING_MAX_WAIT_MS=5",
    )
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument(
        "--auth-turns", type=int, default=1000, help="turns per gateway for auth_overhead"
    )
    parser.add_argument(
        "--guard-items", type=int, default=60, help="evaluation items for cascade_llm_share"
    )
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep service logs and the database here"
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    wanted = {n.strip() for item in args.only for n in item.split(",") if n.strip()}
    unknown = wanted - set(NAMES)
    if unknown:
        parser.error(f"unknown --only {', '.join(sorted(unknown))}; choose from {', '.join(NAMES)}")
    selected: set[str] = set()
    for name in wanted or set(GROUPS):
        selected.update(GROUPS.get(name, (name,)))
    args.selected = frozenset(selected)
    if (
        args.memories < 2 * RECALL_K
        or args.queries < 1
        or args.duration <= 0
        or args.rounds < 1
        or args.auth_turns < 1
    ):
        parser.error(
            "need --memories >= 20, --queries >= 1, --duration > 0, --rounds >= 1, "
            "--auth-turns >= 1"
        )
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanups


def _workdir(args: argparse.Namespace, stack: contextlib.ExitStack) -> Path:
    """--workdir, or a temporary directory removed when `stack` closes."""
    if args.workdir is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="atalaya-bench-")))
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _run(args: argparse.Namespace, workdir: Path, out: Output) -> None:
    """The selected benches, in the order of GROUPS."""
    selected = out.selected
    if selected & {*EMBEDDING_FIGURES, *MEMORY_FIGURES}:
        progress("loading the model in-process")
        model = LocalModel()
        if selected & set(EMBEDDING_FIGURES):
            bench_embedding(args, model, workdir, out)
        if selected & set(MEMORY_FIGURES):
            bench_memory(args, model, workdir, out)
    for figures, message, bench in SERVICE_BENCHES:
        if selected & set(figures):
            progress(message)
            bench(args, workdir, out)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    with contextlib.ExitStack() as stack:
        workdir = _workdir(args, stack)
        load = os.getloadavg()[0]
        progress(f"work directory {workdir}; 1-minute load average {load:.2f}")
        if load > 0.5:
            progress("warning: other work is using the CPU; figures will be noisy")
        _run(args, workdir, Output(args.selected, {"load_1m_at_start": round(load, 2)}))
    progress(f"done in {elapsed_s():.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

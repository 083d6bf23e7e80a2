"""`atalaya eval`: run (the default), compare, calibrate.

    atalaya eval [run] [--dataset FILE] [--out DIR] [--baseline RUN --max-drop 0.05]
    atalaya eval compare A B
    atalaya eval calibrate [--calibration FILE]

Exit codes: 0 success; 1 a call failed (items that failed are listed, and a
rerun tries them again) or nothing could be compared; 2 usage errors (a bad data
set, a run folder made with other settings); 4 the regression gate failed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TextIO

from services.client import gateway
from services.eval import gate, report
from services.eval.calibrate import calibrate
from services.eval.dataset import (
    CALIBRATION_SET,
    STARTER_SET,
    DatasetError,
    load_calibration,
    load_dataset,
)
from services.eval.judge import (
    DEFAULT_GENERATION_TARGET,
    DEFAULT_JUDGE_PROMPT,
    GenerationJudge,
    GenerationJudgeSettings,
    Judge,
    JudgePrompt,
)
from services.eval.runner import DEFAULT_MEMORY_TARGET, ResumeMismatch, RunConfig, Runner
from services.eval.scorers import ALL_SCORERS

ACTIONS = ("run", "compare", "calibrate")
DEFAULT_OUT = Path(".state/eval/run")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CONCURRENCY_ENV = "ATALAYA_EVAL_CONCURRENCY"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _judge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--generation-target",
        default=DEFAULT_GENERATION_TARGET,
        help="the judge's generation service host:port (default %(default)s)",
    )
    parser.add_argument("--judge-model", default="", help="judge model (default: the server's)")
    parser.add_argument("--judge-prompt", type=Path, default=DEFAULT_JUDGE_PROMPT)
    parser.add_argument("--judge-seed", type=int, default=0, help="judge sampling seed")
    parser.add_argument(
        "--judge-timeout", type=_non_negative_float, default=120.0, help="seconds per judge call"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atalaya eval", description="Evaluate the system on a data set with ground truth."
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    run = actions.add_parser("run", help="run a data set through the gateway and score it")
    run.add_argument("--dataset", type=Path, default=STARTER_SET, help="JSONL data set")
    run.add_argument("--out", type=Path, default=DEFAULT_OUT, help="run folder (%(default)s)")
    run.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    run.add_argument("--tag", action="append", default=[], help="only items with this tag")
    run.add_argument("--limit", type=_positive_int, help="only the first N items")
    run.add_argument("--target", default=gateway.DEFAULT_TARGET, help="gateway host:port")
    run.add_argument(
        "--memory-target",
        default=DEFAULT_MEMORY_TARGET,
        help="memory host:port, for items with a history (default %(default)s)",
    )
    run.add_argument("--policy", default="", help="guardrail policy (default: the gateway's)")
    run.add_argument("--moderation", choices=sorted(gateway.MODERATION_MODES))
    run.add_argument("--model", default="", help="generation model (default: the gateway's)")
    run.add_argument("--max-tokens", type=_positive_int, help="most tokens per answer")
    run.add_argument("--temperature", type=_non_negative_float, help="(default: the template's)")
    run.add_argument("--seed", type=int, default=42, help="sampling seed (default %(default)s)")
    run.add_argument(
        "--concurrency",
        type=_positive_int,
        default=int(os.environ.get(CONCURRENCY_ENV, "4")),
        help=f"items in flight at once (default ${CONCURRENCY_ENV}, else 4)",
    )
    run.add_argument("--timeout", type=_non_negative_float, default=300.0, help="seconds per turn")
    run.add_argument("--no-judge", action="store_true", help="deterministic scorers only")
    _judge_options(run)
    run.add_argument("--baseline", type=Path, help="a baseline run (run.json or run folder)")
    run.add_argument(
        "--max-drop",
        type=_non_negative_float,
        default=0.05,
        help="largest allowed drop of the aggregate score against --baseline (%(default)s)",
    )

    comp = actions.add_parser("compare", help="per-item differences and aggregate delta, B - A")
    comp.add_argument("a", type=Path, help="run A (run.json, results.jsonl or run folder)")
    comp.add_argument("b", type=Path, help="run B")
    comp.add_argument("--all", action="store_true", help="list unchanged items too")
    comp.add_argument("--json", action="store_true", help="print the comparison as JSON")

    cal = actions.add_parser("calibrate", help="the judge's agreement with human scores")
    cal.add_argument("--calibration", type=Path, default=CALIBRATION_SET)
    cal.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    _judge_options(cal)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    if not argv or argv[0] not in (*ACTIONS, "-h", "--help"):
        argv.insert(0, "run")
    return build_parser().parse_args(argv)


@contextlib.asynccontextmanager
async def _judge(args: argparse.Namespace) -> AsyncIterator[tuple[Judge, GenerationJudge]]:
    prompt = JudgePrompt.load(args.judge_prompt)
    settings = GenerationJudgeSettings(
        target=args.generation_target,
        model=args.judge_model,
        seed=args.judge_seed,
        timeout_s=args.judge_timeout,
    )
    async with GenerationJudge(settings) as backend:
        yield Judge(backend, prompt), backend


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    items = load_dataset(args.dataset, ALL_SCORERS)
    if args.tag:
        items = [i for i in items if set(args.tag) & set(i.tags)]
    if args.limit:
        items = items[: args.limit]
    if not items:
        print("no items to run", file=err)
        return EXIT_USAGE
    baseline = report.load_run(args.baseline) if args.baseline else None
    config = RunConfig(
        dataset=args.dataset,
        out_dir=args.out,
        gateway_target=args.target,
        memory_target=args.memory_target,
        policy=args.policy,
        moderation=args.moderation,
        model=args.model,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        judge=not args.no_judge,
        judge_target=args.generation_target,
        judge_model=args.judge_model,
    )
    async with contextlib.AsyncExitStack() as stack:
        judge = None if args.no_judge else (await stack.enter_async_context(_judge(args)))[0]
        outcome = await Runner(config, judge, err).run(items, fresh=args.fresh)
    run = report.summary(outcome.meta, outcome.records)
    paths = report.write_reports(run, args.out)
    print(report.format_summary(run), file=out)
    print(
        f"ran {outcome.ran}, resumed {outcome.skipped}; reports: "
        + ", ".join(str(p) for p in paths.values()),
        file=out,
    )
    for line in outcome.errors:
        print(f"failed: {line}", file=err)
    if baseline is not None:
        result = gate.check(run, baseline, args.max_drop)
        print(result.format(), file=out)
        if not result.passed:
            return gate.EXIT_GATE_FAILED
    return EXIT_FAILED if outcome.errors else EXIT_OK


def _compare(args: argparse.Namespace, out: TextIO) -> int:
    result = report.compare(report.load_run(args.a), report.load_run(args.b))
    if args.json:
        print(json.dumps(report.compare_json(result), ensure_ascii=False, indent=1), file=out)
    else:
        print(report.format_compare(result, all_items=args.all), file=out)
    return EXIT_OK if result["items"] else EXIT_FAILED


async def _calibrate(args: argparse.Namespace, out: TextIO) -> int:
    rows = load_calibration(args.calibration)
    async with _judge(args) as (judge, backend):
        result = await calibrate(rows, judge)
    result = dataclasses.replace(result, judge_model=backend.model)
    print(result.format(), file=out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), ensure_ascii=False, indent=1) + "\n")
    return EXIT_OK


def main(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = parse_args(argv)
    try:
        if args.action == "compare":
            return _compare(args, out)
        if args.action == "calibrate":
            return asyncio.run(_calibrate(args, out))
        return asyncio.run(_run(args, out, err))
    except (DatasetError, ResumeMismatch, OSError, ValueError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=err)
        return 130

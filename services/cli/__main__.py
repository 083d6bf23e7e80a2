"""atalaya (or python -m services.cli): chat, ask, status, trace, feedback,
feedback-export, keys (the gateway's API keys: services.cli.keys), eval (run,
compare, calibrate: services.eval.cli), plan (capacity and cost from a load test:
loadtests.plan).

Every command that calls a service takes the connection options of
services.cli.security (TLS, client certificate, bearer token; flags or ATALAYA_*
environment variables); against a local stack started with --tls or --mtls the
stack's certificates are the default.

Exit codes: 0 success (answered, all SERVING, trace found), 1 a call failed or
something was not found / not serving, 2 usage errors, 3 the turn was blocked."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from services.cli import export, gateway, keys, security
from services.cli.status import DEFAULT_HOST, SERVICES, SERVING, check_all, format_statuses
from services.cli.status import service_targets as status_targets
from services.client import gateway as client
from services.stack.traces import DEFAULT_PATH as DEFAULT_TRACES_PATH
from services.stack.traces import find_trace, load_spans, span_tree


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _service_target(text: str) -> tuple[str, str]:
    name, sep, target = text.partition("=")
    names = [n for n, _ in SERVICES]
    if not sep or name not in names or not target:
        raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT with NAME one of {names}")
    return name, target


def _turn_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--target", default=client.DEFAULT_TARGET, help="gateway host:port")
    parent.add_argument("--user", help="user id (default: $USER, else 'local')")
    parent.add_argument("--session", help="session id (default: a new one per run)")
    parent.add_argument("--policy", default="", help="guardrail policy (default: the gateway's)")
    parent.add_argument("--moderation", choices=sorted(client.MODERATION_MODES))
    parent.add_argument("--no-memory", action="store_true", help="no history or recall")
    parent.add_argument("--no-remember", action="store_true", help="do not store the turn")
    parent.add_argument("--max-tokens", type=_positive_int, help="most tokens to generate")
    parent.add_argument(
        "--timeout",
        type=_positive_float,
        default=client.DEFAULT_CHAT_TIMEOUT_S,
        help="deadline per turn in seconds (default %(default)s)",
    )
    security.add_options(parent)
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atalaya", description="Talk to and inspect the local Atalaya stack."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    turn = _turn_options()

    commands.add_parser(
        "chat", parents=[turn], help="interactive chat", description="Chat, one turn per line."
    )

    ask = commands.add_parser("ask", parents=[turn], help="one question, one answer")
    ask.add_argument("question", nargs="+", help="the message (words are joined by spaces)")
    ask.add_argument("--json", action="store_true", help="print the turn as one JSON object")
    ask.add_argument(
        "-v", "--verbose", action="store_true", help="verdicts and request id on stderr"
    )

    status = commands.add_parser("status", help="health of every service")
    status.add_argument("--host", default=DEFAULT_HOST)
    status.add_argument("--port-offset", type=int, default=0)
    status.add_argument(
        "--target",
        dest="targets",
        action="append",
        type=_service_target,
        default=[],
        metavar="NAME=HOST:PORT",
        help="check this target for one service (repeatable)",
    )
    status.add_argument("--timeout", type=_positive_float, default=1.0, help="seconds per check")
    security.add_options(status)

    trace = commands.add_parser("trace", help="the span tree of a request")
    trace.add_argument("request_id", help="a request id, or a trace id prefix")
    trace.add_argument("--path", type=Path, default=DEFAULT_TRACES_PATH, help="%(default)s")

    feedback = commands.add_parser("feedback", help="score a turn")
    feedback.add_argument("turn_request_id")
    feedback.add_argument("--score", type=_score, required=True, help="0 (worst) to 1 (best)")
    feedback.add_argument("--comment", default="")
    feedback.add_argument("--user", help="user id (default: $USER, else 'local')")
    feedback.add_argument("--target", default=client.DEFAULT_TARGET, help="gateway host:port")
    feedback.add_argument(
        "--timeout", type=_positive_float, default=client.DEFAULT_FEEDBACK_TIMEOUT_S
    )
    security.add_options(feedback)
    export = commands.add_parser(
        "feedback-export", help="stored feedback as CSV or JSON lines, for evaluation"
    )
    export.add_argument("--user", default="", help="one user's feedback (default: everyone's)")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--output", type=Path, help="a file (default: stdout)")
    export.add_argument(
        "--with-messages", action="store_true", help="include the turn's message and reply"
    )
    export.add_argument("--memory-target", default=f"{DEFAULT_HOST}:{dict(SERVICES)['memory']}")
    export.add_argument("--timeout", type=_positive_float, default=30.0)
    keys.add_parser(commands)
    security.add_options(export)
    commands.add_parser(
        "eval",
        add_help=False,
        help="evaluate on a data set: run (default), compare, calibrate; eval -h for more",
    ).add_argument("eval_args", nargs=argparse.REMAINDER)
    commands.add_parser(
        "plan",
        add_help=False,
        help="capacity and cost plan from a load test's summary; plan -h for more",
    ).add_argument("plan_args", nargs=argparse.REMAINDER)
    return parser


def run_export(args: argparse.Namespace) -> int:
    out = args.output.open("w", newline="") if args.output else sys.stdout
    try:
        return asyncio.run(
            export.export(
                args.memory_target,
                args.user,
                args.format,
                out,
                with_messages=args.with_messages,
                timeout_s=args.timeout,
                connection=security.connection(args),
            )
        )
    finally:
        if args.output:
            out.close()


def _turn_settings(args: argparse.Namespace) -> client.TurnSettings:
    return client.TurnSettings(
        target=args.target,
        user_id=args.user or client.default_user(),
        session_id=args.session or client.new_id(),
        policy=args.policy,
        moderation=args.moderation,
        use_memory=not args.no_memory,
        remember=not args.no_remember,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
    )


def run_status(args: argparse.Namespace) -> int:
    targets = status_targets(args.host, args.port_offset, dict(args.targets))
    statuses = asyncio.run(check_all(targets, args.timeout, security.connection(args).tls))
    print(format_statuses(statuses))
    return 0 if all(s.status == SERVING for s in statuses) else 1


def run_trace(args: argparse.Namespace) -> int:
    spans = find_trace(load_spans(args.path), args.request_id)
    if not spans:
        print(f"no trace for {args.request_id!r} in {args.path}", file=sys.stderr)
        return 1
    print(span_tree(spans))
    return 0


OWN_PARSERS = ("eval", "plan")


def run_own_parser(command: str, argv: Sequence[str]) -> int:
    """The commands that parse their own arguments, imported only when run: eval
    (services.eval.cli) and plan (the load-test tooling's loadtests.plan)."""
    if command == "eval":
        from services.eval.cli import main as eval_main

        return eval_main(argv)
    from loadtests.plan import main as plan_main

    return plan_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]) and run the command; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in OWN_PARSERS:
        return run_own_parser(argv[0], argv[1:])
    args = parser.parse_args(argv)
    try:
        if args.command == "chat":
            return gateway.chat(_turn_settings(args), connection=security.connection(args))
        if args.command == "ask":
            question = " ".join(args.question).strip()
            if not question:
                parser.error("the question is empty")
            return asyncio.run(
                gateway.ask(
                    _turn_settings(args),
                    question,
                    as_json=args.json,
                    verbose=args.verbose,
                    connection=security.connection(args),
                )
            )
        simple = {
            "status": run_status,
            "trace": run_trace,
            "feedback-export": run_export,
            "keys": keys.run,
        }
        if args.command in simple:
            return simple[args.command](args)
        return asyncio.run(
            gateway.feedback(
                args.target,
                args.user or client.default_user(),
                args.turn_request_id,
                args.score,
                args.comment,
                timeout_s=args.timeout,
                connection=security.connection(args),
            )
        )
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

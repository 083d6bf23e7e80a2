"""`make fuzz`: generated requests (loadtests.fuzz.strategies) sent to every RPC of
every service of a local stack, then the verdict.

    python -m loadtests.fuzz                          # 10,000 cases per RPC, own stack
    python -m loadtests.fuzz --cases 200 --seconds 20 --seed 7
    python -m loadtests.fuzz --attach .state/fuzz/run --only memory.
    python -m loadtests.fuzz --replay .state/fuzz/<run>/summary.json --attach <state>

The stack is started here (the simulator serves generation, so it is fast; its
own free ports and state folder) unless --attach names the state folder of a
stack started by services.stack.launch (its stack.toml gives the ports). Every RPC
of every service in services.common.topology is found in the descriptors of its
protos and gets cases until --cases or --seconds, whichever comes first; unary
calls wait for their answer, streams are read to the end or cancelled after a
drawn number of messages. One channel per service, --concurrency calls in flight.

It passes when no call ended INTERNAL or UNKNOWN, no answer carried a local path,
an address of the stack, or a stack trace that the request did not carry itself,
no service exited or restarted, every service is SERVING afterwards, and every row
in the memory store passes the checks a request's data passes before it is
stored. It prints a table (cases and status codes per RPC), then the summary as
one JSON object (also written to <out>/summary.json), and exits 1 on a failure,
each with a reproducing case: the request's bytes, its metadata, and the request
as text when it parses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from loadtests.fuzz import strategies
from loadtests.fuzz.stored import StoreReport, check_store
from services.common import topology
from services.common.health import check as health_check
from services.stack.config import load_config
from services.stack.launch import start_stack

#: Calls that end so fail the run.
FAILING_CODES = frozenset({"INTERNAL", "UNKNOWN"})
#: Names the stack answers to, so that more requests get past the first check.
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
VOCABULARY = ("sim", "default", "parallel", "fast", "pii", EMBEDDING_MODEL)
#: The plain values of string fields by name ("" is the default model, policy...).
HINTS: dict[str, tuple[str, ...]] = {
    "model": ("", "sim", EMBEDDING_MODEL),
    "policy": ("", "default", "parallel", "fast", "pii"),
    "adapter": ("",),
}
#: The stack the fuzzer starts: the simulator for generation; quick drains.
STACK_ENV: dict[str, dict[str, str]] = {
    "generation": {"ATALAYA_GENERATION_BACKEND": "sim"},
    "gateway": {"ATALAYA_GATEWAY_GRACE_PERIOD_S": "2"},
}
#: What the supervisor says when a service died (services.stack.supervisor).
_EXITED = re.compile(r"^stack\s*\| (\w+) exited with code (-?\d+)", re.MULTILINE)
_TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "/')
EXAMPLES_PER_KIND = 3


@dataclass(frozen=True)
class Rpc:
    service: str  # the topology's name of the service that serves it
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return f"{self.service}.{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def input(self) -> Descriptor:
        return self.method.input_type


def all_rpcs() -> list[Rpc]:
    """Every RPC of every service of the topology, from its protos' descriptors."""
    out = []
    pool = descriptor_pool.Default()
    for s in topology.SERVICES:
        package = s.grpc_service.rsplit(".", 1)[0]  # atalaya.memory.v1
        importlib.import_module(f"{package}.{s.name}_pb2")
        service = pool.FindServiceByName(s.grpc_service)
        for method in service.methods:
            if method.client_streaming:
                raise ValueError(f"{method.full_name}: client streaming is not fuzzed yet")
            out.append(Rpc(s.name, method))
    return out


@dataclass(frozen=True)
class Case:
    payload: bytes
    metadata: tuple[tuple[str, Any], ...]
    cancel_after: int | None  # streams: cancel after this many messages (None: read all)


def cases(rpc: Rpc) -> st.SearchStrategy[Case]:
    vocabulary = (*VOCABULARY, *topology.NAMES)
    cancel = (
        strategies.weighted((80, st.none()), (20, st.integers(0, 3)))
        if rpc.streaming
        else st.none()
    )
    return st.builds(
        Case,
        strategies.message(rpc.input, vocabulary, HINTS),
        strategies.metadata(vocabulary),
        cancel,
    )


def describe(rpc: Rpc, case: Case) -> dict[str, Any]:
    """A case as a reproducer: the bytes sent, the metadata, the request as text."""
    request_text: str | None
    try:
        message = message_factory.GetMessageClass(rpc.input).FromString(case.payload)
        request_text = text_format.MessageToString(message, as_utf8=True)[:4000]
    except Exception:  # the point of many cases: they do not parse
        request_text = None
    return {
        "rpc": rpc.name,
        "method": rpc.path,
        "payload_hex": case.payload.hex(),
        "payload_bytes": len(case.payload),
        "request_text": request_text,
        "metadata": [
            [k, {"hex": v.hex()} if isinstance(v, bytes) else v] for k, v in case.metadata
        ],
        "cancel_after": case.cancel_after,
    }


def case_from_dict(data: dict[str, Any]) -> Case:
    return Case(
        bytes.fromhex(data["payload_hex"]),
        tuple(
            (k, bytes.fromhex(v["hex"]) if isinstance(v, dict) else v) for k, v in data["metadata"]
        ),
        data.get("cancel_after"),
    )


@dataclass
class RpcStats:
    cases: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # from the first case sent to the last answer
    slowest_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)  # kind -> count
    examples: list[dict[str, Any]] = field(default_factory=list)
    #: "CODE: message" with numbers and quoted values blanked, to see what stopped calls.
    reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "statuses": dict(self.statuses.most_common()),
            "top_reasons": dict(self.reasons.most_common(8)),
            "rare_reasons": {  # the codes a fuzzer seldom meets: every message of them
                k: n
                for k, n in self.reasons.most_common()
                if not k.startswith(("INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED"))
            },
            "seconds": round(self.seconds, 2),
            "cases_per_s": round(self.cases / self.seconds, 1) if self.seconds else None,
            "slowest_call_s": round(self.slowest_s, 3),
            "failures": self.failures,
            "examples": self.examples,
        }


@dataclass(frozen=True)
class Outcome:
    code: str
    details: str
    answer: bytes  # every response message, joined (for the leak check)
    seconds: float


class Leaks:
    """What must never reach a client: this machine's paths, the stack's own
    addresses, the host's name, stack traces (unless the request carried them)."""

    def __init__(self, state: Path, targets: Sequence[str]) -> None:
        markers = {str(Path.cwd()), sys.prefix, str(state.resolve()), *_TRACEBACK_MARKERS}
        markers.update(targets)
        host = socket.gethostname()
        if len(host) >= 6 and host != "localhost":
            markers.add(host)
        self.markers = tuple(m for m in markers if len(m) >= 6)

    def find(self, case: Case, outcome: Outcome) -> str | None:
        sent = case.payload + repr(case.metadata).encode()
        for marker in self.markers:
            raw = marker.encode()
            if raw in sent:
                continue
            if raw in outcome.details.encode() or raw in outcome.answer:
                return marker
        return None


class Sender:
    """Calls on an event loop of its own (a thread), at most `concurrency` at once,
    one channel per service; the caller (Hypothesis, in the main thread) blocks in
    `submit` while all the slots are taken."""

    def __init__(
        self, targets: dict[str, str], leaks: Leaks, concurrency: int, call_timeout_s: float
    ) -> None:
        self._targets = targets
        self._leaks = leaks
        self._timeout = call_timeout_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._pending: set[Future[None]] = set()
        self.errors: list[BaseException] = []  # the fuzzer's own, never a call's
        self.stats: dict[str, RpcStats] = {}
        self._started: dict[str, float] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, Any] = {}

    def _channel(self, service: str) -> grpc.aio.Channel:
        channel = self._channels.get(service)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                self._targets[service],
                options=[
                    ("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    ("grpc.enable_retries", 0),
                ],
            )
            self._channels[service] = channel
        return channel

    def _callable(self, rpc: Rpc) -> Any:
        call = self._calls.get(rpc.path)
        if call is None:
            channel = self._channel(rpc.service)
            call = (channel.unary_stream if rpc.streaming else channel.unary_unary)(rpc.path)
            self._calls[rpc.path] = call
        return call

    async def call(self, rpc: Rpc, case: Case) -> Outcome:
        """One case, on the loop: the status it ended with and what came back."""
        started = time.perf_counter()
        answer = bytearray()
        code, details = "OK", ""
        try:
            if rpc.streaming:
                stream = self._callable(rpc)(
                    case.payload, metadata=case.metadata, timeout=self._timeout
                )
                received = 0
                if case.cancel_after == 0:
                    stream.cancel()
                    raise asyncio.CancelledError
                async for item in stream:
                    answer += item
                    received += 1
                    if case.cancel_after is not None and received >= case.cancel_after:
                        stream.cancel()
                        code = "CANCELLED"
                        break
            else:
                answer += await self._callable(rpc)(
                    case.payload, metadata=case.metadata, timeout=self._timeout
                )
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code().name, exc.details() or ""
        except asyncio.CancelledError:
            code = "CANCELLED"
        return Outcome(code, details, bytes(answer), time.perf_counter() - started)

    async def _one(self, rpc: Rpc, case: Case) -> None:
        outcome = await self.call(rpc, case)
        failure = outcome.code if outcome.code in FAILING_CODES else None
        leak = self._leaks.find(case, outcome)
        with self._lock:
            stats = self.stats[rpc.name]
            stats.statuses[outcome.code] += 1
            if outcome.code != "OK":
                stats.reasons[f"{outcome.code}: {_reason(outcome.details)}"] += 1
            stats.slowest_s = max(stats.slowest_s, outcome.seconds)
            stats.seconds = time.perf_counter() - self._started[rpc.name]
            for kind in (failure, f"leak: {leak}" if leak else None):
                if kind is None:
                    continue
                stats.failures[kind] = stats.failures.get(kind, 0) + 1
                if sum(1 for e in stats.examples if e["failure"] == kind) < EXAMPLES_PER_KIND:
                    stats.examples.append(
                        {
                            "failure": kind,
                            "code": outcome.code,
                            "details": outcome.details[:500],
                            **describe(rpc, case),
                        }
                    )

    def submit(self, rpc: Rpc, case: Case) -> None:
        self._slots.acquire()
        with self._lock:
            if rpc.name not in self.stats:
                self.stats[rpc.name] = RpcStats()
                self._started[rpc.name] = time.perf_counter()
            self.stats[rpc.name].cases += 1
        future = asyncio.run_coroutine_threadsafe(self._one(rpc, case), self._loop)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        self._slots.release()
        error = None if future.cancelled() else future.exception()
        if error is not None:
            with self._lock:
                self.errors.append(error)

    def drain(self) -> None:
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            with contextlib.suppress(Exception):
                future.result()

    def close(self) -> None:
        self.drain()

        async def close_all() -> None:
            for channel in self._channels.values():
                await channel.close()

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if self.errors:
            raise RuntimeError("the fuzzer failed to send cases") from self.errors[0]

    def call_now(self, rpc: Rpc, case: Case) -> Outcome:
        """One case, waited for (from outside the loop)."""
        return asyncio.run_coroutine_threadsafe(self.call(rpc, case), self._loop).result()


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


def _reason(details: str) -> str:
    """A status message with its values blanked: what kind of check stopped a call."""
    return _NUMBER.sub("N", _QUOTED.sub("'…'", details))[:100]


class _TimeUp(Exception):
    """Stops Hypothesis's generation when an RPC's time is over."""


def fuzz_rpc(
    rpc: Rpc,
    sender: Sender,
    *,
    max_cases: int,
    max_seconds: float | None,
    seed: int | None,
    derandomize: bool,
) -> None:
    """Hypothesis draws cases for `rpc` and hands them to `sender`, until
    `max_cases` or `max_seconds`. Generation only: the cases that fail are
    collected, not shrunk, so that one run counts every status."""
    deadline = time.monotonic() + max_seconds if max_seconds else None

    @settings(
        max_examples=max_cases,
        deadline=None,
        database=None,
        derandomize=derandomize,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        report_multiple_bugs=False,
    )
    @given(cases(rpc))
    def one(case: Case) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise _TimeUp
        sender.submit(rpc, case)

    test = one
    if seed is not None and not derandomize:
        test = hypothesis_seed(seed + sum(map(ord, rpc.name)))(one)
    with contextlib.suppress(_TimeUp):
        test()


# --- the stack ------------------------------------------------------------------


@dataclass(frozen=True)
class StackInfo:
    state: Path
    targets: dict[str, str]  # service -> host:port
    log: Path


def attached(state: Path) -> StackInfo:
    """A stack started by services.stack.launch with state in `state`."""
    config = load_config(state / "stack.toml", state_dir=str(state))
    targets = {s.name: s.target for s in config.services}
    return StackInfo(state, targets, state / "stack.log")


def restarts(log: Path) -> list[str]:
    """The supervisor's lines about services that exited while the stack ran."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [f"{m[1]} exited with code {m[2]}" for m in _EXITED.finditer(text)]


def health(targets: dict[str, str], tries: int = 3) -> dict[str, str]:
    """Each service's overall health (a busy one gets `tries` chances)."""
    out = {}
    for name, target in targets.items():
        status = ""
        for _ in range(tries):
            status = health_check(target, timeout_s=5.0).status
            if status == "SERVING":
                break
        out[name] = status
    return out


def memory_dsn(state: Path) -> str | None:
    """The memory service's embedded PostgreSQL (services/stack/stack.toml keeps
    it in <state>/memory), or ATALAYA_MEMORY_DSN when the stack uses another."""
    if dsn := os.environ.get("ATALAYA_MEMORY_DSN"):
        return dsn
    if not (state / "memory" / "pgdata").exists():
        return None
    from services.memory.embedded import EmbeddedPostgres

    return EmbeddedPostgres(state / "memory").start()


# --- the run ----------------------------------------------------------------------


@dataclass
class Summary:
    seed: int | None
    derandomize: bool
    max_cases: int
    max_seconds: float | None
    rpcs: dict[str, RpcStats]
    seconds: float
    restarts: list[str]
    health: dict[str, str]
    store: StoreReport | None

    @property
    def failures(self) -> list[str]:
        out: list[str] = []
        for name, stats in self.rpcs.items():
            out.extend(f"{name}: {kind} x{n}" for kind, n in stats.failures.items())
        out.extend(f"restart: {r}" for r in self.restarts)
        out.extend(f"health: {n} is {s}" for n, s in self.health.items() if s != "SERVING")
        if self.store is None:
            out.append("store: not checked (no memory database found)")
        else:
            out.extend(f"store: {b.table} {b.key}: {b.reason}" for b in self.store.bad)
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "seed": self.seed,
            "derandomize": self.derandomize,
            "max_cases_per_rpc": self.max_cases,
            "max_seconds_per_rpc": self.max_seconds,
            "seconds": round(self.seconds, 1),
            "cases": sum(s.cases for s in self.rpcs.values()),
            "min_cases_per_rpc": min((s.cases for s in self.rpcs.values()), default=0),
            "rpcs": {name: s.as_dict() for name, s in self.rpcs.items()},
            "restarts": self.restarts,
            "health": self.health,
            "store": self.store.as_dict() if self.store else None,
            "failures": self.failures[:50],
        }


def table(summary: Summary) -> str:
    width = max((len(n) for n in summary.rpcs), default=10) + 2
    lines = [f"{'rpc':<{width}}{'cases':>7}{'s':>8}{'cases/s':>9}  statuses"]
    for name, s in summary.rpcs.items():
        rate = f"{s.cases / s.seconds:.0f}" if s.seconds else "-"
        codes = ", ".join(f"{code} {n}" for code, n in s.statuses.most_common())
        flag = "  FAIL" if s.failures else ""
        lines.append(f"{name:<{width}}{s.cases:>7}{s.seconds:>8.1f}{rate:>9}  {codes}{flag}")
    return "\n".join(lines)


def run(
    stack: StackInfo,
    rpcs: Sequence[Rpc],
    *,
    max_cases: int,
    max_seconds: float | None,
    seed: int | None,
    derandomize: bool,
    concurrency: int,
    call_timeout_s: float,
    progress: bool = True,
) -> Summary:
    started = time.perf_counter()
    sender = Sender(
        stack.targets,
        Leaks(stack.state, list(stack.targets.values())),
        concurrency,
        call_timeout_s,
    )
    try:
        for rpc in rpcs:
            if progress:
                print(f"fuzz: {rpc.name} ...", file=sys.stderr, flush=True)
            fuzz_rpc(
                rpc,
                sender,
                max_cases=max_cases,
                max_seconds=max_seconds,
                seed=seed,
                derandomize=derandomize,
            )
    finally:
        sender.close()
    dsn = memory_dsn(stack.state)
    return Summary(
        seed=seed,
        derandomize=derandomize,
        max_cases=max_cases,
        max_seconds=max_seconds,
        rpcs={r.name: sender.stats.get(r.name, RpcStats()) for r in rpcs},
        seconds=time.perf_counter() - started,
        restarts=restarts(stack.log),
        health=health(stack.targets),
        store=check_store(dsn) if dsn else None,
    )


def replay(stack: StackInfo, summary_path: Path, call_timeout_s: float) -> int:
    """Send the failing cases of a summary again; print how each ends now."""
    data = json.loads(summary_path.read_text())
    by_name = {r.name: r for r in all_rpcs()}
    sender = Sender(stack.targets, Leaks(stack.state, []), 1, call_timeout_s)
    worst = 0
    try:
        for rpc_name, stats in data["rpcs"].items():
            for example in stats["examples"]:
                rpc = by_name[rpc_name]
                outcome = sender.call_now(rpc, case_from_dict(example))
                print(f"{rpc_name}: {outcome.code} {outcome.details[:200]!r}")
                worst = max(worst, int(outcome.code in FAILING_CODES))
    finally:
        sender.close()
    return worst


@contextlib.contextmanager
def own_stack(state: Path) -> Iterator[StackInfo]:
    state.mkdir(parents=True, exist_ok=True)
    log = state / "stack.log"
    stack = start_stack(state, STACK_ENV, log=log)
    try:
        yield StackInfo(state, {n: stack.target(n) for n in topology.NAMES}, log)
    finally:
        stack.stop()


def _env_number(name: str, kind: type[int] | type[float]) -> Any:
    value = os.environ.get(name, "")
    return kind(value) if value else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        type=int,
        default=_env_number("FUZZ_CASES", int) or 10_000,
        help="cases per RPC (default FUZZ_CASES or 10000)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=_env_number("FUZZ_SECONDS", float),
        help="at most this long per RPC (default FUZZ_SECONDS; none)",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument(
        "--derandomize", action="store_true", help="Hypothesis's fixed seed per RPC"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--call-timeout", type=float, default=30.0, help="deadline per call, s")
    parser.add_argument("--only", action="append", default=[], help="RPC names containing this")
    parser.add_argument("--attach", type=Path, help="state folder of a running stack")
    parser.add_argument("--out", type=Path, help="default .state/fuzz/<UTC timestamp>")
    parser.add_argument("--replay", type=Path, help="resend the failures of a summary.json")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.concurrency < 1:
        parser.error("--cases and --concurrency take a positive number")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = (args.out or Path(".state") / "fuzz" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.replay:
        if not args.attach:
            raise SystemExit("--replay needs --attach <state folder of a running stack>")
        return replay(attached(args.attach.resolve()), args.replay, args.call_timeout)
    rpcs = [r for r in all_rpcs() if not args.only or any(o in r.name for o in args.only)]
    seed = None if args.derandomize else (args.seed if args.seed is not None else _random_seed())
    with contextlib.ExitStack() as stack_scope:
        if args.attach:
            stack = attached(args.attach.resolve())
        else:
            print(f"fuzz: starting a stack in {out / 'stack'}", file=sys.stderr, flush=True)
            stack = stack_scope.enter_context(own_stack(out / "stack"))
        summary = run(
            stack,
            rpcs,
            max_cases=args.cases,
            max_seconds=args.seconds,
            seed=seed,
            derandomize=args.derandomize,
            concurrency=args.concurrency,
            call_timeout_s=args.call_timeout,
        )
    document = summary.as_dict()
    (out / "summary.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))
    print(table(summary))
    print(
        json.dumps(
            {k: v for k, v in document.items() if k != "rpcs"}
            | {
                "rpcs": {
                    n: {k: v for k, v in r.items() if k != "examples"}
                    for n, r in document["rpcs"].items()
                }
            }
        )
    )
    if not summary.passed:
        print("\nFAILED:", file=sys.stderr)
        for line in summary.failures[:50]:
            print(f"  {line}", file=sys.stderr)
        for name, stats in summary.rpcs.items():
            for example in stats.examples[:1]:
                print(f"\nreproducer ({name}):\n{json.dumps(example, indent=2)}", file=sys.stderr)
        print(f"\nall reproducers: {out / 'summary.json'}", file=sys.stderr)
        return 1
    return 0


def _random_seed() -> int:
    return int.from_bytes(os.urandom(4), "big")

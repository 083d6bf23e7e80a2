"""Atalaya's Locust users over gRPC.

    python -m locust -f loadtests/locust/locustfile.py --headless -u 4 -r 4 -t 60s \
        --csv out/locust --report-dir out

Each simulated user holds one gRPC channel per service (made gevent-friendly by
grpc.experimental.gevent.init_gevent(), which runs before any channel) and picks
weighted tasks:

  chat      the next turn of its current conversation from the prompt set, through
            the gateway's streaming Chat; a new session per conversation
  embed     EmbeddingService.Embed of one prompt
  classify  GuardrailService.Classify of one prompt (the "fast" policy by default)
  recall    MemoryService.Recall of the user's memories for one prompt

Besides the gRPC calls (request type "grpc"), every completed chat turn fires
custom metrics, request types TTFT, TPOT, E2E and ITL (one per gap between
chunks), name "chat", so they show in the web UI and in the CSVs (the time
columns are milliseconds). Every user action
is one span ("loadtest.<task>") whose context goes out as `traceparent`, so the
services' spans of that call join its trace.

Settings: `--help` lists them under "Atalaya"; each also reads ATALAYA_LOADTEST_*.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import random
import time
import urllib.request
import uuid
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import grpc
import psutil
from atalaya.common.v1 import common_pb2
from atalaya.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from atalaya.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from atalaya.guardrail.v1 import guardrail_pb2, guardrail_pb2_grpc
from atalaya.memory.v1 import memory_pb2, memory_pb2_grpc
from grpc.experimental import gevent as grpc_gevent
from locust import LoadTestShape, User, events
from locust.env import Environment
from locust.rpc import Message
from locust.runners import MasterRunner, WorkerRunner
from opentelemetry import propagate, trace
from opentelemetry.trace import Status, StatusCode

from loadtests.locust import report
from loadtests.locust.metrics import RequestRecord, stream_metrics
from loadtests.locust.prompts import Conversation, load_conversations
from loadtests.locust.settings import LoadSettings, add_arguments
from loadtests.locust.shapes import DEFAULT_RUN_TIME_S, ShapeParams, pacing_s, shape_at
from services.common.logging import show_extras
from services.common.telemetry import Telemetry, setup_telemetry

# Before any channel exists: gRPC's polling must yield to gevent's hub.
grpc_gevent.init_gevent()

log = logging.getLogger("atalaya.loadtest")

#: The message a worker sends the master at the end of a test (distributed runs).
RUN_MESSAGE = "atalaya_run"
#: How long the master waits for every worker's records before writing the report.
WORKER_WAIT_S = 15.0
#: Bounds on what one run keeps in memory (the report says when they were hit).
MAX_RECORDS = 200_000
MAX_ITL_SAMPLES = 2_000_000
SAMPLE_INTERVAL_S = 1.0
MODERATION = {
    "buffered": gateway_pb2.MODERATION_MODE_BUFFERED,
    "optimistic": gateway_pb2.MODERATION_MODE_OPTIMISTIC,
}


@dataclass
class RunState:
    """What one Locust process collects during a test. In a distributed run
    (--processes N, or --master/--worker) each worker sends its part to the master
    at the end of the test, and the master writes the report."""

    settings: LoadSettings = field(default_factory=LoadSettings)
    conversations: list[Conversation] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    records: list[RequestRecord] = field(default_factory=list)
    itl_ms: array[float] = field(default_factory=lambda: array("d"))
    samples: list[dict[str, float]] = field(default_factory=list)
    dropped_records: int = 0
    requests_sent: int = 0
    started_s: float = 0.0
    cpu_warnings: int = 0
    server_before: dict[str, float] = field(default_factory=dict)
    telemetry: Telemetry | None = None
    sampler: Any = None
    worker_runs: int = 0
    worker_cpu_percent: list[float] = field(default_factory=list)

    def reset(self) -> None:
        self.records, self.itl_ms, self.samples = [], array("d"), []
        self.worker_runs, self.worker_cpu_percent = 0, []
        self.dropped_records = self.requests_sent = self.cpu_warnings = 0
        self.started_s = time.time()

    def add(self, record: RequestRecord, itl_ms: tuple[float, ...] = ()) -> None:
        if len(self.records) < MAX_RECORDS:
            self.records.append(record)
        else:
            self.dropped_records += 1
        room = MAX_ITL_SAMPLES - len(self.itl_ms)
        if room > 0:
            self.itl_ms.extend(itl_ms[:room])


RUN = RunState()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    settings = LoadSettings.from_options(environment.parsed_options)
    try:
        settings.validate()
    except ValueError as exc:
        raise SystemExit(f"atalaya load test: {exc}") from None
    show_extras(logging.getLogger().handlers)  # Locust's console: fields as key=value
    RUN.settings = settings
    RUN.conversations = load_conversations(settings.prompts)
    if RUN.telemetry is None:
        RUN.telemetry = setup_telemetry("loadgen")
    methods: dict[str, Callable[..., None]] = {
        "chat": AtalayaUser.chat,
        "embed": AtalayaUser.embed,
        "classify": AtalayaUser.classify,
        "recall": AtalayaUser.recall,
    }
    AtalayaUser.tasks = [methods[n] for n, w in settings.weights.items() for _ in range(w)]
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(RUN_MESSAGE, _on_worker_run)


def _on_worker_run(msg: Any, **_: Any) -> None:
    """On the master: one worker's records, ITL gaps and CPU samples."""
    data = msg.data
    for item in data["records"]:
        RUN.add(RequestRecord.from_json(item))
    room = MAX_ITL_SAMPLES - len(RUN.itl_ms)
    RUN.itl_ms.extend(data["itl_ms"][: max(room, 0)])
    RUN.worker_cpu_percent.extend(data["cpu_percent"])
    RUN.cpu_warnings += data["cpu_warnings"]
    RUN.dropped_records += data["dropped_records"]
    RUN.worker_runs += 1


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    RUN.reset()
    RUN.server_before = _scrape_server_metrics(RUN.settings.server_metrics)
    RUN.sampler = gevent.spawn(_sample, environment)


@events.cpu_warning.add_listener
def _on_cpu_warning(**_: Any) -> None:
    RUN.cpu_warnings += 1


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    stopped_s = time.time()
    if RUN.sampler is not None:
        RUN.sampler.kill(block=False)
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(
            RUN_MESSAGE,
            {
                "records": [r.to_json() for r in RUN.records],
                "itl_ms": list(RUN.itl_ms),
                "cpu_percent": [s["cpu_percent"] for s in RUN.samples],
                "cpu_warnings": RUN.cpu_warnings,
                "dropped_records": RUN.dropped_records,
            },
        )
        return
    if not RUN.settings.report_dir:
        return
    if isinstance(runner, MasterRunner):
        if runner.user_count > 0:
            # A headless run ends with quit(), which stops the master before it tells
            # the workers: stop them now, so their records arrive before the report.
            for client in runner.clients.all:
                runner.server.send_to_client(Message("stop", None, client.id))
        deadline = time.monotonic() + WORKER_WAIT_S
        while RUN.worker_runs < runner.worker_count and time.monotonic() < deadline:
            gevent.sleep(0.2)
        _users_from_samples(RUN.records, RUN.samples)
    server_after = _scrape_server_metrics(RUN.settings.server_metrics)
    server = {k: server_after[k] - RUN.server_before.get(k, 0.0) for k in server_after}
    folder = Path(RUN.settings.report_dir)
    summary = report.write_report(
        folder,
        report.RunData(
            records=RUN.records,
            itl_ms=list(RUN.itl_ms),
            samples=RUN.samples,
            settings=RUN.settings,
            started_s=RUN.started_s,
            stopped_s=stopped_s,
            dropped_records=RUN.dropped_records,
            locust_cpu_warnings=RUN.cpu_warnings,
            worker_cpu_percent=RUN.worker_cpu_percent,
            server_metrics=server,
            run_id=RUN.run_id,
        ),
    )
    log.info(
        "report written", extra={"report_dir": str(folder), "summary": report.one_line(summary)}
    )


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    if RUN.telemetry is not None:
        RUN.telemetry.shutdown()


def _users_from_samples(records: list[RequestRecord], samples: list[dict[str, float]]) -> None:
    """A worker knows only its own users: give each record the master's total at its
    start (the last sample before it)."""
    times = [s["t"] for s in samples]
    for r in records:
        i = bisect.bisect_right(times, r.start_s) - 1
        r.users = int(samples[max(i, 0)]["users"]) if samples else r.users


def _sample(environment: Environment) -> None:
    """Users and the generator's own CPU once a second (for the report's plots and
    its CPU saturation warning)."""
    process = psutil.Process()
    process.cpu_percent()
    warned = False
    while True:
        gevent.sleep(SAMPLE_INTERVAL_S)
        runner = environment.runner
        cpu = process.cpu_percent()
        RUN.samples.append(
            {
                "t": time.time(),
                "users": float(runner.user_count if runner else 0),
                "cpu_percent": cpu,
            }
        )
        if cpu >= report.CPU_SATURATION_PERCENT and not warned:
            warned = True
            log.warning(
                "the load generator's CPU is saturated: latencies from now on include its "
                "own queueing (fewer users per process, or --processes N)",
                extra={"cpu_percent": round(cpu)},
            )


def _scrape_server_metrics(urls: str) -> dict[str, float]:
    """Sums and counts of the server-side TTFT histograms from Prometheus endpoints."""
    out: dict[str, float] = {}
    for url in filter(None, (u.strip() for u in urls.split(","))):
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                text = response.read().decode()
        except OSError as exc:
            log.warning("could not scrape server metrics", extra={"url": url, "reason": str(exc)})
            continue
        for name, value in report.ttft_histogram_totals(text).items():
            out[name] = out.get(name, 0.0) + value
    return out


Attr = str | int | float | bool


@dataclass
class Action:
    """One user action's span, as the task sees it."""

    metadata: tuple[tuple[str, str], ...]
    trace_id: str
    status: str = "OK"
    attributes: dict[str, Attr] = field(default_factory=dict)


class GrpcError(Exception):
    """A failed call, named by its status code so Locust groups failures by code."""


class AtalayaShape(LoadTestShape):
    """The shape chosen by --shape (see loadtests/locust/shapes.py); reads -u, -r, -t."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        runner = self.runner
        if runner is None:
            return None
        options = runner.environment.parsed_options
        s = RUN.settings
        users = int(getattr(options, "num_users", None) or 1)
        params = ShapeParams(
            kind=s.shape,
            users=users,
            spawn_rate=float(getattr(options, "spawn_rate", None) or users),
            run_time_s=float(getattr(options, "run_time", None) or DEFAULT_RUN_TIME_S),
            step_users=s.step_users,
            step_seconds=s.step_seconds,
            spike_users=s.spike_users,
            spike_at_s=s.spike_at_s,
            spike_seconds=s.spike_seconds,
            ramp_seconds=s.ramp_seconds,
        )
        return shape_at(params, self.get_run_time())


class AtalayaUser(User):
    """One simulated person: chats in multi-turn conversations and, less often,
    calls the embedding, guardrail and memory services directly."""

    _numbers = itertools.count(1)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.number = next(self._numbers)
        self.user_id = f"loadtest-{RUN.run_id}-{self.number}"
        self.channels: list[grpc.Channel] = []
        self.conversation: Conversation | None = None
        self.turn = 0
        self.session_id = ""
        self.sessions = itertools.count(1)
        self.last_start = 0.0

    def on_start(self) -> None:
        s = RUN.settings
        self.gateway = gateway_pb2_grpc.GatewayServiceStub(self._channel(s.gateway))
        self.embedding = embedding_pb2_grpc.EmbeddingServiceStub(self._channel(s.embedding))
        self.guardrail = guardrail_pb2_grpc.GuardrailServiceStub(self._channel(s.guardrail))
        self.memory = memory_pb2_grpc.MemoryServiceStub(self._channel(s.memory))
        if s.arrival_rate > 0:  # spread the users' first requests over one pacing interval
            runner = self.environment.runner
            gevent.sleep(random.uniform(0, pacing_s(s.arrival_rate, runner.user_count)))

    def on_stop(self) -> None:
        for channel in self.channels:
            channel.close()
        self.channels.clear()

    def _channel(self, target: str) -> grpc.Channel:
        channel = grpc.insecure_channel(target)
        self.channels.append(channel)
        return channel

    def wait_time(self) -> float:
        s = RUN.settings
        if s.arrival_rate > 0:
            runner = self.environment.runner
            pace = pacing_s(s.arrival_rate, runner.user_count if runner else 1)
            return max(0.0, pace - (time.monotonic() - self.last_start))
        return random.uniform(s.think_min_s, s.think_max_s)

    # -- tasks -------------------------------------------------------------------

    def _next_message(self) -> tuple[Conversation, str]:
        """The next turn of the current conversation; a new one (and session) after its last."""
        if self.conversation is None or self.turn >= len(self.conversation.turns):
            self.conversation = random.choice(RUN.conversations)
            self.turn = 0
            self.session_id = f"{self.user_id}-s{next(self.sessions)}"
        self.turn += 1
        return self.conversation, self.conversation.turns[self.turn - 1].user

    def chat(self) -> None:
        s = RUN.settings
        conversation, message = self._next_message()
        request = gateway_pb2.ChatRequest(
            request_id=uuid.uuid4().hex,
            user_id=self.user_id,
            session_id=self.session_id,
            message=message,
            options=gateway_pb2.ChatOptions(
                policy=s.policy,
                moderation_mode=MODERATION[s.moderation],
                max_tokens=s.max_tokens,
            ),
        )
        attributes: dict[str, Attr] = {
            "atalaya.loadtest.conversation": conversation.id,
            "atalaya.loadtest.turn": self.turn,
        }
        with self._action("chat", attributes) as action:
            users, wall, sent = self._begin()
            stream = _Stream()
            status = "OK"
            try:
                stream.read(
                    self.gateway.Chat(
                        request, timeout=s.request_timeout_s, metadata=action.metadata
                    )
                )
            except grpc.RpcError as exc:
                status = _code_name(exc)
            end = time.perf_counter()
            done, blocked = stream.done, stream.blocked
            ok = status == "OK" and done is not None
            if status == "OK" and done is None:
                status = "NO_DONE"
            tokens = (done.usage.output_tokens if done is not None else 0) or stream.delta_tokens
            m = stream_metrics(sent, stream.chunks, end, tokens)
            action.status = status
            action.attributes["gen_ai.usage.output_tokens"] = tokens
            action.attributes["atalaya.loadtest.blocked"] = blocked
            if m.ttft_ms is not None:
                action.attributes["atalaya.loadtest.ttft_ms"] = m.ttft_ms
        record = RequestRecord(
            task="chat",
            start_s=wall,
            users=users,
            ok=ok,
            status=status,
            e2e_ms=m.e2e_ms,
            ttft_ms=m.ttft_ms if ok else None,
            tpot_ms=m.tpot_ms if ok else None,
            tail_ms=m.tail_ms if ok else None,
            input_tokens=done.usage.input_tokens if done is not None else 0,
            output_tokens=tokens,
            blocked=blocked,
            server_ttft_ms=(
                done.timing.phases_ms["ttft"]
                if done is not None and "ttft" in done.timing.phases_ms
                else None
            ),
            trace_id=action.trace_id,
        )
        name = "gateway.Chat blocked" if blocked else "gateway.Chat"
        self._fire("grpc", name, m.e2e_ms, tokens, status)
        if ok and not blocked:
            if m.ttft_ms is not None:
                self._fire("TTFT", "chat", m.ttft_ms, tokens)
            if m.tpot_ms is not None:
                self._fire("TPOT", "chat", m.tpot_ms, tokens)
            self._fire("E2E", "chat", m.e2e_ms, tokens)
            for gap in m.itl_ms:
                self._fire("ITL", "chat", gap, 0)
        RUN.add(record, m.itl_ms if ok and not blocked else ())

    def embed(self) -> None:
        text = self._prompt()
        self._unary(
            "embed",
            "embedding.Embed",
            lambda md: self.embedding.Embed(
                embedding_pb2.EmbedRequest(texts=[text], normalize=True),
                timeout=RUN.settings.request_timeout_s,
                metadata=md,
            ),
        )

    def classify(self) -> None:
        text = self._prompt()
        message = common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)
        self._unary(
            "classify",
            "guardrail.Classify",
            lambda md: self.guardrail.Classify(
                guardrail_pb2.ClassifyRequest(
                    messages=[message], policy=RUN.settings.classify_policy
                ),
                timeout=RUN.settings.request_timeout_s,
                metadata=md,
            ),
        )

    def recall(self) -> None:
        text = self._prompt()
        self._unary(
            "recall",
            "memory.Recall",
            lambda md: self.memory.Recall(
                memory_pb2.RecallRequest(user_id=self.user_id, text=text, k=5),
                timeout=RUN.settings.request_timeout_s,
                metadata=md,
            ),
        )

    # -- helpers -----------------------------------------------------------------

    def _prompt(self) -> str:
        return random.choice(random.choice(RUN.conversations).turns).user

    def _begin(self) -> tuple[int, float, float]:
        """Users running, wall clock and monotonic clock at the send of a request."""
        self.last_start = time.monotonic()
        RUN.requests_sent += 1
        limit = RUN.settings.max_requests
        if limit and RUN.requests_sent == limit:
            log.info("max_requests reached: stopping", extra={"max_requests": limit})
            runner = self.environment.runner
            if runner is not None:
                gevent.spawn_later(0, runner.quit)
        runner = self.environment.runner
        return (runner.user_count if runner else 0), time.time(), time.perf_counter()

    @contextlib.contextmanager
    def _action(self, task: str, attributes: dict[str, Attr] | None = None) -> Iterator[Action]:
        """One span per user action; the Action carries the gRPC metadata holding the
        span's context, and brings back the call's status and figures."""
        tracer = trace.get_tracer("atalaya.loadtest")
        with tracer.start_as_current_span(f"loadtest.{task}", kind=trace.SpanKind.CLIENT) as span:
            span.set_attribute("atalaya.loadtest.task", task)
            span.set_attribute("atalaya.loadtest.user", self.user_id)
            for key, value in (attributes or {}).items():
                span.set_attribute(key, value)
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            action = Action(
                tuple(carrier.items()), format(span.get_span_context().trace_id, "032x")
            )
            yield action
            span.set_attribute("rpc.grpc.status_code", action.status)
            for key, value in action.attributes.items():
                span.set_attribute(key, value)
            if action.status != "OK":
                span.set_status(Status(StatusCode.ERROR, action.status))

    def _unary(self, task: str, name: str, call: Callable[[Any], object]) -> None:
        with self._action(task) as action:
            users, wall, sent = self._begin()
            status = "OK"
            try:
                call(action.metadata)
            except grpc.RpcError as exc:
                status = _code_name(exc)
            e2e_ms = (time.perf_counter() - sent) * 1000.0
            action.status = status
        self._fire("grpc", name, e2e_ms, 0, status)
        RUN.add(
            RequestRecord(
                task=task,
                start_s=wall,
                users=users,
                ok=status == "OK",
                status=status,
                e2e_ms=e2e_ms,
                trace_id=action.trace_id,
            )
        )

    def _fire(self, kind: str, name: str, ms: float, length: int, status: str = "OK") -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=name,
            response_time=ms,
            response_length=length,
            exception=None if status == "OK" else GrpcError(status),
            context={},
        )


@dataclass
class _Stream:
    """What a Chat stream brought: the arrival time of every delta with text, the
    tokens of the deltas, whether a `blocked` event came, the `done` event."""

    chunks: list[float] = field(default_factory=list)
    delta_tokens: int = 0
    blocked: bool = False
    done: gateway_pb2.Done | None = None

    def read(self, events: Iterator[gateway_pb2.ChatEvent]) -> None:
        for event in events:
            kind = event.WhichOneof("event")
            if kind == "delta":
                if event.delta.text:
                    self.chunks.append(time.perf_counter())
                self.delta_tokens += event.delta.token_count
            elif kind == "blocked":
                self.blocked = True
            elif kind == "done":
                self.done = event.done


def _code_name(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code.name if code is not None else "UNKNOWN"

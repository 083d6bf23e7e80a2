"""The atalaya CLI: rendering of Chat events, and every command against real gRPC
servers on loopback (a scripted gateway, a health service, the trace receiver)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from atalaya.common.v1 import common_pb2
from atalaya.gateway.v1 import gateway_pb2 as gw
from atalaya.gateway.v1 import gateway_pb2_grpc
from atalaya.guardrail.v1 import guardrail_pb2 as guard
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.cli.__main__ import main
from services.cli.render import render_events
from services.cli.status import SERVICES
from services.client.gateway import GatewayClient, TurnSettings
from services.stack.traces import serve_traces

INPUT, OUTPUT = gw.GUARD_STAGE_INPUT, gw.GUARD_STAGE_OUTPUT
REFUSAL = "I can't help with that."


def verdict(stage: int, safe: bool = True, **fields: Any) -> gw.ChatEvent:
    return gw.ChatEvent(
        request_id="r-1",
        verdict=gw.GuardVerdict(
            stage=stage,  # type: ignore[arg-type]
            verdict=guard.VERDICT_SAFE if safe else guard.VERDICT_UNSAFE,
            **fields,
        ),
    )


def delta(text: str) -> gw.ChatEvent:
    return gw.ChatEvent(request_id="r-1", delta=gw.Delta(text=text, token_count=1))


def blocked(stage: int, *categories: int) -> gw.ChatEvent:
    return gw.ChatEvent(
        request_id="r-1",
        blocked=gw.Blocked(
            stage=stage,  # type: ignore[arg-type]
            categories=categories,  # type: ignore[arg-type]
            refusal_text=REFUSAL,
            policy="default",
            reason="unsafe content",
        ),
    )


def done(*, was_blocked: bool = False, **fields: Any) -> gw.ChatEvent:
    return gw.ChatEvent(request_id="r-1", done=gw.Done(blocked=was_blocked, **fields))


ANSWERED = [
    verdict(INPUT, decided_by=guard.DETECTOR_SEMANTIC, latency_ms=12.2),
    delta("Hello"),
    delta(", world."),
    verdict(OUTPUT, decided_by=guard.DETECTOR_LLAMA_GUARD, windows_checked=2, latency_ms=40.4),
    done(
        usage=common_pb2.Usage(input_tokens=10, output_tokens=3),
        timing=common_pb2.Timing(total_ms=1234.4, phases_ms={"ttft": 230.2, "prompt": 1.0}),
        cost_usd=0.000012,
        memory=gw.MemoryReport(used=True, history_turns=2, memories_recalled=1, stored=True),
    ),
]
BLOCKED_AT_INPUT = [
    verdict(
        INPUT,
        safe=False,
        categories=[guard.HAZARD_CATEGORY_S9_INDISCRIMINATE_WEAPONS],
        decided_by=guard.DETECTOR_LLAMA_GUARD,
        latency_ms=30,
        stand_in=True,
    ),
    blocked(INPUT, guard.HAZARD_CATEGORY_S9_INDISCRIMINATE_WEAPONS),
    done(was_blocked=True, timing=common_pb2.Timing(total_ms=31)),
]
BLOCKED_AT_OUTPUT = [
    verdict(INPUT, decided_by=guard.DETECTOR_SEMANTIC, latency_ms=3),
    delta("Sure, here"),
    verdict(
        OUTPUT,
        safe=False,
        categories=[guard.HAZARD_CATEGORY_S1_VIOLENT_CRIMES],
        decided_by=guard.DETECTOR_LLAMA_GUARD,
        windows_checked=1,
        latency_ms=5,
    ),
    blocked(OUTPUT, guard.HAZARD_CATEGORY_S1_VIOLENT_CRIMES),
    done(
        was_blocked=True,
        timing=common_pb2.Timing(total_ms=90, phases_ms={"ttft": 20}),
        memory=gw.MemoryReport(degraded=True, reason="memory timed out"),
    ),
]


def test_render_answered_turn() -> None:
    assert render_events(ANSWERED) == (
        "[input guard: safe by semantic, 12 ms]\n"
        "Hello, world.\n"
        "[output guard: safe by llama_guard, 2 windows, 40 ms]\n"
        "[done: 10 in / 3 out tokens, ttft 230 ms, total 1234 ms, $0.000012, "
        "memory used (2 turns, 1 recalled), request r-1]\n"
    )


def test_render_turn_blocked_at_input() -> None:
    assert render_events(BLOCKED_AT_INPUT) == (
        "[input guard: unsafe (S9 Indiscriminate Weapons) by llama_guard, 30 ms, "
        "stand-in guard model]\n"
        "[blocked at input: S9 Indiscriminate Weapons; unsafe content; policy default]\n"
        f"{REFUSAL}\n"
        "[done: 0 in / 0 out tokens, total 31 ms, memory not used, request r-1]\n"
    )


def test_render_turn_blocked_at_output() -> None:
    assert render_events(BLOCKED_AT_OUTPUT) == (
        "[input guard: safe by semantic, 3 ms]\n"
        "Sure, here\n"
        "[output guard: unsafe (S1 Violent Crimes) by llama_guard, 1 window, 5 ms]\n"
        "[blocked at output: S1 Violent Crimes; unsafe content; policy default]"
        " (the reply above is withdrawn)\n"
        f"{REFUSAL}\n"
        "[done: 0 in / 0 out tokens, ttft 20 ms, total 90 ms, "
        "memory degraded (memory timed out), request r-1]\n"
    )


def test_render_in_color_dims_the_status_lines() -> None:
    text = render_events(ANSWERED[:2], color=True)
    assert text == "\x1b[2m[input guard: safe by semantic, 12 ms]\x1b[0m\nHello\n"


# --- servers on loopback, each on its own event loop in a thread ----------------------


@contextmanager
def aio_server(
    add: Callable[[grpc.aio.Server], None],
) -> Iterator[tuple[int, asyncio.AbstractEventLoop]]:
    """A grpc.aio server on 127.0.0.1 port 0, run by a thread on its own event loop;
    yields the port and that loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        add(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield port, loop
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Scripted turns: "bomb" is blocked at input, "hang" waits until cancelled,
    anything else is answered."""

    def __init__(self) -> None:
        self.requests: list[gw.ChatRequest] = []
        self.feedback: list[gw.FeedbackRequest] = []
        self.hanging = threading.Event()
        self.cancelled = threading.Event()

    async def Chat(
        self, request: gw.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gw.ChatEvent]:
        self.requests.append(request)
        script = BLOCKED_AT_INPUT if "bomb" in request.message else ANSWERED
        if "hang" in request.message:
            yield gw.ChatEvent(request_id=request.request_id, verdict=ANSWERED[0].verdict)
            self.hanging.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return
        for event in script:
            copy = gw.ChatEvent()
            copy.CopyFrom(event)
            copy.request_id = request.request_id
            yield copy

    async def Feedback(
        self, request: gw.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> gw.FeedbackResponse:
        if request.turn_request_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no stored turn with that id")
        self.feedback.append(request)
        return gw.FeedbackResponse(request_id=request.request_id, created=len(self.feedback) == 1)


@pytest.fixture
def fake_gateway() -> Iterator[tuple[FakeGateway, str]]:
    fake = FakeGateway()
    with aio_server(lambda s: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(fake, s)) as (
        port,
        _,
    ):
        yield fake, f"127.0.0.1:{port}"


def test_ask_answered_exits_0(
    fake_gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = fake_gateway
    argv = ["ask", "hello", "there", "--target", target, "--user", "ana", "--session", "s1"]
    code = main([*argv, "--policy", "strict", "--moderation", "optimistic", "--no-memory"])
    assert code == 0
    assert capsys.readouterr().out == "Hello, world.\n"
    request = fake.requests[0]
    assert (request.user_id, request.session_id, request.message) == ("ana", "s1", "hello there")
    assert len(request.request_id) == 32
    assert request.options.policy == "strict"
    assert request.options.moderation_mode == gw.MODERATION_MODE_OPTIMISTIC
    assert request.options.HasField("use_memory") and not request.options.use_memory
    assert not request.options.HasField("remember")
    assert not request.options.HasField("max_tokens")


def test_ask_blocked_exits_3_with_the_refusal(
    fake_gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, target = fake_gateway
    code = main(["ask", "build a bomb", "--target", target, "--no-remember", "--max-tokens", "9"])
    assert code == 3
    assert capsys.readouterr().out == f"{REFUSAL}\n"


def test_ask_json(
    fake_gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, target = fake_gateway
    assert main(["ask", "bomb", "--target", target, "--json"]) == 3
    turn = json.loads(capsys.readouterr().out)
    assert turn["answered"] is False
    assert turn["text"] == REFUSAL
    assert turn["blocked"]["categories"] == ["HAZARD_CATEGORY_S9_INDISCRIMINATE_WEAPONS"]
    assert turn["verdicts"][0]["stage"] == "GUARD_STAGE_INPUT"
    assert turn["done"]["blocked"] is True


def test_ask_server_down_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ask", "hello", "--target", f"127.0.0.1:{unused_port()}", "--timeout", "5"])
    assert code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: UNAVAILABLE: ")


def test_usage_errors_exit_2() -> None:
    for argv in (["ask"], ["ask", "  "], ["feedback", "t", "--score", "1.5"], ["nope"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv


def test_chat_loop_streams_turns_until_quit(
    fake_gateway: tuple[FakeGateway, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, target = fake_gateway
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n\nbomb\n/quit\nnever sent\n"))
    monkeypatch.setenv("USER", "ana")
    assert main(["chat", "--target", target]) == 0
    out = capsys.readouterr().out
    assert out.startswith("you> [input guard: safe by semantic, 12 ms]\nHello, world.\n")
    heading = "[blocked at input: S9 Indiscriminate Weapons; unsafe content; policy default]"
    assert "\nyou> you> [input guard: unsafe" in out  # the empty line only re-prompts
    assert f"{heading}\n{REFUSAL}\n" in out
    assert out.endswith("]\nyou> ")
    assert [r.message for r in fake.requests] == ["hi", "bomb"]
    # One session per run, the user from $USER, a new request id per turn.
    assert {r.session_id for r in fake.requests} == {fake.requests[0].session_id}
    assert {r.user_id for r in fake.requests} == {"ana"}
    assert fake.requests[0].request_id != fake.requests[1].request_id


def test_chat_ctrl_c_cancels_the_turn_and_returns_to_the_prompt(
    fake_gateway: tuple[FakeGateway, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, target = fake_gateway
    monkeypatch.setattr("sys.stdin", io.StringIO("hang\nhi\n"))

    def interrupt() -> None:
        if fake.hanging.wait(10):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    assert main(["chat", "--target", target]) == 0
    assert fake.cancelled.wait(10)
    out = capsys.readouterr().out
    assert f"[cancelled, request {fake.requests[0].request_id}]\n" in out
    assert "Hello, world." in out  # the next turn ran
    assert [r.message for r in fake.requests] == ["hang", "hi"]


def test_cancelling_a_chat_turn_cancels_the_call(fake_gateway: tuple[FakeGateway, str]) -> None:
    fake, target = fake_gateway

    async def turn() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            gateway = GatewayClient(channel, timeout_s=30)
            request = TurnSettings(target=target).request("hang")
            task = asyncio.create_task(gateway.chat(request))
            await asyncio.to_thread(fake.hanging.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(turn())
    assert fake.cancelled.wait(10)


def test_feedback(
    fake_gateway: tuple[FakeGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, target = fake_gateway
    argv = ["feedback", "turn-1", "--score", "0.5", "--target", target]
    assert main([*argv, "--comment", "ok", "--user", "ana"]) == 0
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "feedback on turn-1 recorded",
        "feedback on turn-1 recorded, replacing earlier feedback",
    ]
    first = fake.feedback[0]
    assert (first.user_id, first.turn_request_id, first.score, first.comment) == (
        "ana",
        "turn-1",
        0.5,
        "ok",
    )
    assert main(["feedback", "missing", "--score", "1", "--target", target]) == 1
    assert capsys.readouterr().err.startswith("error: NOT_FOUND: no stored turn with that id")


# --- status ---------------------------------------------------------------------------


@pytest.fixture
def health_port() -> Iterator[tuple[int, Callable[[int], None]]]:
    """The port of a health service, and a function that sets its overall status."""
    servicer = health.aio.HealthServicer()
    with aio_server(lambda s: health_pb2_grpc.add_HealthServicer_to_server(servicer, s)) as (
        port,
        loop,
    ):

        def set_status(status: int) -> None:
            asyncio.run_coroutine_threadsafe(servicer.set("", status), loop).result(10)

        set_status(health_pb2.HealthCheckResponse.SERVING)
        yield port, set_status


def test_status_all_serving(
    health_port: tuple[int, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    port, _ = health_port
    targets = [arg for name, _ in SERVICES for arg in ("--target", f"{name}=127.0.0.1:{port}")]
    assert main(["status", *targets]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [name for name, _ in SERVICES]
    assert all(line.split()[1:] == [f"127.0.0.1:{port}", "SERVING"] for line in lines)


def test_status_reports_not_serving_and_unreachable(
    health_port: tuple[int, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    port, set_status = health_port
    offset = port - dict(SERVICES)["gateway"]
    down = f"127.0.0.1:{unused_port()}"
    argv = ["status", "--port-offset", str(offset), "--target", f"memory={down}"]
    assert main([*argv, "--timeout", "2"]) == 1
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["gateway"] == [f"127.0.0.1:{port}", "SERVING"]
    assert lines["memory"][:2] == [down, "UNREACHABLE"]

    set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(argv) == 1
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["gateway"] == [f"127.0.0.1:{port}", "NOT_SERVING"]


# --- trace ----------------------------------------------------------------------------


def test_trace_prints_the_tree_of_a_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "spans.jsonl"
    receiver = serve_traces(port=0, path=path)
    try:
        monkeypatch.setenv("OTEL_SDK_DISABLED", "false")
        provider = TracerProvider(resource=Resource.create({"service.name": "atalaya-gateway"}))
        exporter = OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("Chat") as root:
            root.set_attribute("atalaya.request_id", "turn-7")
            with tracer.start_as_current_span("guard_input"):
                pass
        provider.shutdown()
    finally:
        receiver.stop()
    assert main(["trace", "turn-7", "--path", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("trace ") and "2 spans" in lines[0]
    assert lines[1].startswith("atalaya-gateway  Chat  ")
    assert lines[2].startswith("  atalaya-gateway  guard_input  ")
    assert main(["trace", "turn-8", "--path", str(path)]) == 1
    assert "no trace for 'turn-8'" in capsys.readouterr().err

"""One chat turn end to end on five real processes, started the way `make run`
starts them (python -m services.stack, from a stack file written here): the
simulator serves generation (scripted replies, a fixed pace), everything else is
real: the guardrail with its exemplars and pii detector, memory on an embedded
PostgreSQL, the embedding model, the trace receiver."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from atalaya.gateway.v1 import gateway_pb2 as pb
from atalaya.gateway.v1 import gateway_pb2_grpc
from atalaya.guardrail.v1 import guardrail_pb2

from services.client import MemoryClient
from services.stack.traces import Span, find_trace, load_spans
from tests.support.polling import async_wait_until
from tests.support.processes import ServiceProcess, free_port
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.integration

CARD = "4111 1111 1111 1111"
CARD_PROMPT = "Which card should I use?"
SCRIPTS = {
    CARD_PROMPT: f"You asked about cards. Use the card {CARD} for that purchase, it works.",
    "Hello! My name is Ana and I love sailing.": "Nice to meet you, Ana! Sailing is great.",
}
SERVER, CLIENT = 2, 3  # OTLP span kinds


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sim = {
        "ATALAYA_GENERATION_BACKEND": "sim",
        "ATALAYA_GENERATION_SIM__ITL_MEAN_MS": "5",
        "ATALAYA_GENERATION_SIM__MAX_CONCURRENT_SEQUENCES": "1",
        "ATALAYA_GENERATION_SIM__MAX_QUEUED_REQUESTS": "0",
        "ATALAYA_GENERATION_SIM__SCRIPTS": json.dumps(SCRIPTS),
    }
    gateway = {"ATALAYA_GATEWAY_WINDOW_TOKENS": "8", "ATALAYA_GATEWAY_LOOKBACK_TOKENS": "8"}
    with running_stack(
        tmp_path_factory.mktemp("stack"), {"generation": sim, "gateway": gateway}
    ) as s:
        yield s


@pytest.fixture
async def gateway(stack: Stack) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    async with grpc.aio.insecure_channel(stack.target("gateway")) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def chat(
    text: str, session: str, request_id: str, user: str = "ana", **options: object
) -> pb.ChatRequest:
    return pb.ChatRequest(
        request_id=request_id,
        user_id=user,
        session_id=session,
        message=text,
        options=pb.ChatOptions(**options),  # type: ignore[arg-type]
    )


async def events_of(
    stub: gateway_pb2_grpc.GatewayServiceStub, request: pb.ChatRequest
) -> list[pb.ChatEvent]:
    return [e async for e in stub.Chat(request, timeout=60)]


def kinds(events: list[pb.ChatEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def reply(events: list[pb.ChatEvent]) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


async def test_a_turn_streams_text_and_stores_history(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    message = "Hello! My name is Ana and I love sailing."
    events = await events_of(gateway, chat(message, "s1", "turn-1"))
    assert kinds(events)[0] == "verdict" and kinds(events)[-2:] == ["verdict", "done"]
    assert reply(events) == SCRIPTS[message]
    done = events[-1].done
    assert not done.blocked and done.memory.stored and not done.memory.degraded
    assert done.usage.output_tokens > 0 and done.timing.phases_ms["ttft"] > 0
    assert done.prompt_template.name == "chat" and len(done.prompt_template.sha256) == 64
    assert {e.request_id for e in events} == {"turn-1"}
    async with MemoryClient.connect(stack.target("memory")) as memory:
        history = await memory.get_history(user_id="ana", session_id="s1")
    (turn,) = history.turns
    assert [m.content for m in turn.messages] == [message, SCRIPTS[message]]
    assert turn.request_id == "turn-1"


async def test_a_new_session_recalls_a_memory_of_the_first(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    await events_of(gateway, chat("Hello! My name is Ana and I love sailing.", "s1", "turn-1"))
    events = await events_of(gateway, chat("Do I love sailing or not?", "s2", "turn-2"))
    memory = events[-1].done.memory
    assert memory.used and memory.memories_recalled >= 1 and memory.history_turns == 0


async def test_unsafe_input_is_blocked_before_generation(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    events = await events_of(
        gateway, chat("How can I kill my neighbor without getting caught?", "s3", "turn-3")
    )
    assert kinds(events) == ["verdict", "blocked", "done"]
    assert events[0].verdict.verdict == guardrail_pb2.VERDICT_UNSAFE
    assert list(events[1].blocked.categories) == [guardrail_pb2.HAZARD_CATEGORY_S1_VIOLENT_CRIMES]
    assert events[2].done.blocked and events[2].done.usage.output_tokens == 0
    async with MemoryClient.connect(stack.target("memory")) as memory:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await memory.get_history(user_id="ana", session_id="s3")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing stored


@pytest.mark.parametrize(
    "mode",
    [pb.MODERATION_MODE_BUFFERED, pb.MODERATION_MODE_OPTIMISTIC],
    ids=["buffered", "optimistic"],
)
async def test_output_moderation_cuts_off_a_card_number(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayServiceStub, mode: int
) -> None:
    session = f"card-{mode}"
    events = await events_of(gateway, chat(CARD_PROMPT, session, session, moderation_mode=mode))
    assert kinds(events)[-3:] == ["verdict", "blocked", "done"]
    blocked = events[-2].blocked
    assert blocked.stage == pb.GUARD_STAGE_OUTPUT
    assert list(blocked.categories) == [guardrail_pb2.HAZARD_CATEGORY_S7_PRIVACY]
    assert events[-1].done.blocked
    if mode == pb.MODERATION_MODE_BUFFERED:
        assert "4111" not in reply(events)  # no part of the card was shown
    async with MemoryClient.connect(stack.target("memory")) as memory:
        history = await memory.get_history(user_id="ana", session_id=session)
    stored = history.turns[0].messages[1].content
    assert CARD not in stored and stored == blocked.refusal_text


async def test_one_trace_holds_all_five_services(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    await events_of(gateway, chat("Hello! My name is Ana and I love sailing.", "s4", "trace-1"))
    # (caller, callee, RPC): every edge of one turn's call graph.
    gw, mem, emb = "atalaya-gateway", "atalaya-memory", "atalaya-embedding"
    edges = [
        (gw, "atalaya-guardrail", "/atalaya.guardrail.v1.GuardrailService/Classify"),
        (gw, mem, "/atalaya.memory.v1.MemoryService/GetHistory"),
        (gw, mem, "/atalaya.memory.v1.MemoryService/Recall"),
        (gw, mem, "/atalaya.memory.v1.MemoryService/AppendTurn"),
        (gw, "atalaya-generation", "/atalaya.generation.v1.GenerationService/Generate"),
        (mem, emb, "/atalaya.embedding.v1.EmbeddingService/Embed"),
        ("atalaya-guardrail", emb, "/atalaya.embedding.v1.EmbeddingService/Embed"),
    ]
    path = stack.traces_path

    def linked(spans: list[Span]) -> set[tuple[str, str, str]]:
        by_id = {s.span_id: s for s in spans}
        found = set()
        for s in spans:
            parent = by_id.get(s.parent_span_id)
            if s.kind == SERVER and parent is not None and parent.kind == CLIENT:
                found.add((parent.service, s.service, s.name))
        return found

    spans: list[Span] = []

    def every_edge_linked() -> bool:
        spans[:] = find_trace(load_spans(path), "trace-1") if path.exists() else []
        return set(edges) <= linked(spans)

    # Spans are exported in batches, from five processes.
    await async_wait_until(
        every_edge_linked, timeout_s=45, interval_s=0.5, message=lambda: str(sorted(linked(spans)))
    )
    assert len({s.trace_id for s in spans}) == 1
    assert {s.service for s in spans} >= {
        "atalaya-gateway",
        "atalaya-guardrail",
        "atalaya-memory",
        "atalaya-generation",
        "atalaya-embedding",
    }
    root = [s for s in spans if not s.parent_span_id]
    assert [(s.service, s.name) for s in root] == [
        ("atalaya-gateway", "/atalaya.gateway.v1.GatewayService/Chat")
    ]
    message = "Ana and I love sailing"
    assert all(message not in json.dumps(s.attributes) for s in spans)


async def test_cancel_mid_stream_frees_the_generation_slot(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    # One slot and no queue in generation: a slot still held would refuse the next turn.
    call = gateway.Chat(
        chat("Tell me a very long story", "s5", "long-1", max_tokens=2000,
             moderation_mode=pb.MODERATION_MODE_OPTIMISTIC),
        timeout=60,
    )  # fmt: skip
    deltas = 0
    async for event in call:
        deltas += event.HasField("delta")
        if deltas >= 5:
            break
    call.cancel()
    attempts = itertools.count()

    async def next_turn_answered() -> list[pb.ChatEvent]:
        request = chat("Hi again", "s5", f"after-{next(attempts)}", max_tokens=5)
        try:
            return await events_of(gateway, request)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return []

    events = await async_wait_until(
        next_turn_answered, interval_s=0.05, message="the cancelled turn kept the generation slot"
    )
    assert events[-1].done.usage.output_tokens == 5


async def test_memory_down_gives_a_degraded_answer(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    lonely = ServiceProcess(
        "services.gateway",
        port,
        {
            "ATALAYA_GATEWAY_PORT": str(port),
            "ATALAYA_GATEWAY_GUARDRAIL__TARGET": stack.target("guardrail"),
            "ATALAYA_GATEWAY_GENERATION__TARGET": stack.target("generation"),
            "ATALAYA_GATEWAY_MEMORY__TARGET": f"127.0.0.1:{free_port()}",  # nobody there
            "ATALAYA_GATEWAY_MEMORY__MAX_ATTEMPTS": "1",
            "ATALAYA_GATEWAY_INPUT_POLICY": "fast",
            "ATALAYA_GATEWAY_MEMORY_TIMEOUT_S": "1",
        },
        tmp_path / "gateway.log",
    ).start()
    try:
        async with grpc.aio.insecure_channel(lonely.target) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            message = "Hello! My name is Ana and I love sailing."
            events = await events_of(stub, chat(message, "s6", "lonely-1"))
    finally:
        lonely.stop()
    done = events[-1].done
    assert reply(events) == SCRIPTS[message] and not done.blocked
    assert done.memory.degraded and not done.memory.stored and not done.memory.used
    assert "memory unavailable" in done.memory.reason


async def test_feedback_is_stored_with_the_turn_and_exported(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayServiceStub
) -> None:
    await events_of(gateway, chat("Hello! My name is Ana and I love sailing.", "s7", "fb-1"))
    first = await gateway.Feedback(
        pb.FeedbackRequest(user_id="ana", turn_request_id="fb-1", score=1.0, comment="good")
    )
    again = await gateway.Feedback(
        pb.FeedbackRequest(user_id="ana", turn_request_id="fb-1", score=0.0)
    )
    assert first.created and not again.created
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.Feedback(pb.FeedbackRequest(user_id="ana", turn_request_id="nope", score=1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gateway.Feedback(pb.FeedbackRequest(user_id="ana", turn_request_id="fb-1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with MemoryClient.connect(stack.target("memory")) as memory:
        records = [r async for r in memory.export_feedback(user_id="ana")]
    (record,) = [r for r in records if r.turn_request_id == "fb-1"]
    assert record.score == 0.0 and record.session_id == "s7"


async def test_bad_requests_get_their_status_codes(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    cases = [
        (chat("hi", "s8", "bad-1", user=""), grpc.StatusCode.INVALID_ARGUMENT),
        (chat("", "s8", "bad-2"), grpc.StatusCode.INVALID_ARGUMENT),
        (chat("hi", "s8", "bad-3", max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT),
        (chat("hi", "s8", "bad-4", model="no-such-model"), grpc.StatusCode.NOT_FOUND),
        (chat("hi", "s8", "bad-5", policy="no-such-policy"), grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await events_of(gateway, request)
        assert err.value.code() == code, (request, err.value.details())


async def test_generation_down_is_unavailable_quickly(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    orphan = ServiceProcess(
        "services.gateway",
        port,
        {
            "ATALAYA_GATEWAY_PORT": str(port),
            "ATALAYA_GATEWAY_GUARDRAIL__TARGET": stack.target("guardrail"),
            "ATALAYA_GATEWAY_MEMORY__TARGET": stack.target("memory"),
            "ATALAYA_GATEWAY_GENERATION__TARGET": f"127.0.0.1:{free_port()}",  # nobody there
            "ATALAYA_GATEWAY_INPUT_POLICY": "fast",
        },
        tmp_path / "gateway.log",
    ).start()
    try:
        async with grpc.aio.insecure_channel(orphan.target) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await events_of(stub, chat("hi", "s9", "orphan-1"))
    finally:
        orphan.stop()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # UNAVAILABLE naming the upstream, not DEADLINE_EXCEEDED at the 300 s turn deadline.
    assert "generation" in (err.value.details() or "")


async def test_feedback_exports_as_csv_and_json(
    stack: Stack, gateway: gateway_pb2_grpc.GatewayServiceStub, tmp_path: Path
) -> None:
    import csv

    from services.cli.__main__ import main as atalaya

    await events_of(gateway, chat("Hello! My name is Ana and I love sailing.", "s10", "fb-2"))
    await gateway.Feedback(pb.FeedbackRequest(user_id="ana", turn_request_id="fb-2", score=0.75))
    out_csv, out_json = tmp_path / "fb.csv", tmp_path / "fb.jsonl"
    common = ["--user", "ana", "--memory-target", stack.target("memory"), "--with-messages"]
    code = await asyncio.to_thread(
        atalaya, ["feedback-export", *common, "--format", "csv", "--output", str(out_csv)]
    )
    assert code == 0
    code = await asyncio.to_thread(
        atalaya, ["feedback-export", *common, "--format", "json", "--output", str(out_json)]
    )
    assert code == 0
    rows = {r["turn_request_id"]: r for r in csv.DictReader(out_csv.open())}
    assert rows["fb-2"]["score"] == "0.75"
    assert rows["fb-2"]["reply"] == SCRIPTS["Hello! My name is Ana and I love sailing."]
    assert rows["fb-2"]["template"] == "chat@1"
    records = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert {r["turn_request_id"] for r in records} == set(rows)

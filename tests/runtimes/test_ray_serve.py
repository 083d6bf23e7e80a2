"""The whole stack on Ray Serve (python -m services.ray, the runtimes' package
fixture): a chat turn through Serve's gRPC proxy with the gateway composed over
DeploymentHandles, server streaming of a service's own RPC, and errors."""

from __future__ import annotations

import grpc
import pytest
from atalaya.common.v1 import common_pb2
from atalaya.gateway.v1 import gateway_pb2 as pb
from atalaya.gateway.v1 import gateway_pb2_grpc
from atalaya.generation.v1 import generation_pb2, generation_pb2_grpc
from atalaya.guardrail.v1 import guardrail_pb2
from atalaya.memory.v1 import memory_pb2, memory_pb2_grpc

from tests.runtimes.conftest import SCRIPTS

pytestmark = pytest.mark.integration

HELLO = "Hello! My name is Ana and I love sailing."


def app(name: str) -> tuple[tuple[str, str], ...]:
    return (("application", name),)


def kinds(events: list[pb.ChatEvent]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


async def chat(target: str, text: str, session: str, request_id: str) -> list[pb.ChatEvent]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        request = pb.ChatRequest(
            request_id=request_id, user_id="ana", session_id=session, message=text
        )
        return [e async for e in stub.Chat(request, metadata=app("gateway"), timeout=60)]


async def test_a_chat_turn_streams_deltas_then_done_and_is_stored(ray_target: str) -> None:
    events = await chat(ray_target, HELLO, "ray-s1", "ray-turn-1")
    assert kinds(events)[0] == "verdict" and kinds(events)[-2:] == ["verdict", "done"]
    assert kinds(events).count("delta") >= 2  # streamed, not one message
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == SCRIPTS[HELLO]
    done = events[-1].done
    assert not done.blocked and done.memory.stored and done.usage.output_tokens > 0
    assert {e.request_id for e in events} == {"ray-turn-1"}
    async with grpc.aio.insecure_channel(ray_target) as channel:
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        history = await memory.GetHistory(
            memory_pb2.GetHistoryRequest(user_id="ana", session_id="ray-s1"),
            metadata=app("memory"),
            timeout=30,
        )
    (turn,) = history.turns
    assert [m.content for m in turn.messages] == [HELLO, SCRIPTS[HELLO]]


async def test_pii_in_the_message_is_blocked_at_input(ray_target: str) -> None:
    events = await chat(ray_target, "My card is 4111 1111 1111 1111", "ray-s2", "ray-turn-2")
    assert kinds(events) == ["verdict", "blocked", "done"]
    assert events[0].verdict.verdict == guardrail_pb2.VERDICT_UNSAFE
    assert list(events[1].blocked.categories) == [guardrail_pb2.HAZARD_CATEGORY_S7_PRIVACY]
    assert events[2].done.blocked


async def test_generation_streams_over_the_proxy(ray_target: str) -> None:
    request = generation_pb2.GenerateRequest(
        chat=generation_pb2.Conversation(
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="hi")]
        ),
        sampling=generation_pb2.SamplingParams(max_tokens=16, seed=1),
    )
    async with grpc.aio.insecure_channel(ray_target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        out = [m async for m in stub.Generate(request, metadata=app("generation"), timeout=30)]
    assert len(out) >= 2 and all(m.HasField("delta") for m in out[:-1])
    assert out[-1].HasField("done") and out[-1].done.usage.output_tokens == 16


async def test_a_streaming_call_fails_with_the_domain_status(ray_target: str) -> None:
    request = generation_pb2.GenerateRequest(
        chat=generation_pb2.Conversation(),  # no messages
        sampling=generation_pb2.SamplingParams(max_tokens=4),
    )
    async with grpc.aio.insecure_channel(ray_target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [m async for m in stub.Generate(request, metadata=app("generation"), timeout=30)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_unknown_application_is_not_found(ray_target: str) -> None:
    async with grpc.aio.insecure_channel(ray_target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListModels(
                generation_pb2.ListModelsRequest(), metadata=app("nope"), timeout=10
            )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

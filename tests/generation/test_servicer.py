"""GenerationService over a real in-process server, with the simulator engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from atalaya.common.v1 import common_pb2
from atalaya.generation.v1 import generation_pb2 as pb
from atalaya.generation.v1 import generation_pb2_grpc

from services.common.server import ServerRunner
from services.engines.sim import LatencyDistribution, SimConfig, SimEngine
from services.generation.config import GenerationSettings
from services.generation.server import build
from tests.support.polling import async_wait_until

Stub = generation_pb2_grpc.GenerationServiceStub


@asynccontextmanager
async def serving(
    config: SimConfig | None = None, **settings: float
) -> AsyncIterator[tuple[Stub, SimEngine]]:
    engine = SimEngine(config or SimConfig())
    s = GenerationSettings(port=0, **settings)  # type: ignore[arg-type]
    async with (
        ServerRunner(build(s, engine=engine), s).running() as runner,
        grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel,
    ):
        yield Stub(channel), engine


def chat(text: str, **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        chat=pb.Conversation(
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)]
        ),
        sampling=pb.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def collect(stub: Stub, request: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    return [m async for m in stub.Generate(request)]


async def test_stream_is_deltas_then_done_with_usage_and_timing() -> None:
    async with serving(coalesce_ms=0) as (stub, _):
        request = chat("tell me a story", max_tokens=12, seed=7)
        request.request_id = "req-1"
        messages = await collect(stub, request)
    *deltas, last = messages
    assert all(m.WhichOneof("event") == "delta" for m in deltas)
    assert last.WhichOneof("event") == "done"
    assert {m.request_id for m in messages} == {"req-1"}
    done = last.done
    assert done.finish_reason == pb.FINISH_REASON_LENGTH
    assert done.usage.output_tokens == 12 == sum(m.delta.token_count for m in deltas)
    assert done.usage.input_tokens > 0
    assert done.backend == pb.BACKEND_SIM
    assert {"queue", "prefill", "decode", "ttft"} <= set(done.timing.phases_ms)
    assert not done.HasField("cost_usd")  # the simulator has no price table


async def test_same_seed_same_text_different_seed_different_text() -> None:
    async with serving() as (stub, _):
        texts = []
        for seed in (1, 1, 2):
            msgs = await collect(stub, chat("hola", max_tokens=16, seed=seed))
            texts.append("".join(m.delta.text for m in msgs))
    assert texts[0] == texts[1] != texts[2]


async def test_coalescing_merges_deltas_but_never_holds_the_first() -> None:
    config = SimConfig(inter_token_latency=LatencyDistribution(mean_ms=1.0))
    async with serving(config, coalesce_ms=200) as (stub, _):
        merged = await collect(stub, chat("x", max_tokens=40, seed=3))
    async with serving(config, coalesce_ms=0) as (stub, _):
        single = await collect(stub, chat("x", max_tokens=40, seed=3))
    text = lambda msgs: "".join(m.delta.text for m in msgs)  # noqa: E731
    assert text(merged) == text(single)
    assert len(single) == 41  # one message per token, plus done
    assert len(merged) < len(single)
    assert merged[0].delta.token_count == 1  # the first token is sent alone, at once
    assert sum(m.delta.token_count for m in merged) == 40


async def test_client_cancel_aborts_the_engine_request_and_frees_its_slot() -> None:
    config = SimConfig(
        max_concurrent_sequences=1, inter_token_latency=LatencyDistribution(mean_ms=20.0)
    )
    async with serving(config) as (stub, engine):
        call = stub.Generate(chat("long", max_tokens=1000))
        first = await call.read()
        assert first.WhichOneof("event") == "delta"
        assert engine.in_flight() == 1
        call.cancel()
        await async_wait_until(lambda: engine.in_flight() == 0)
        # The only slot is free again: a new request runs to the end.
        messages = await collect(stub, chat("short", max_tokens=3))
        assert messages[-1].done.usage.output_tokens == 3


async def test_deadline_ends_the_stream_and_frees_the_slot() -> None:
    config = SimConfig(
        max_concurrent_sequences=1, inter_token_latency=LatencyDistribution(mean_ms=20.0)
    )
    async with serving(config) as (stub, engine):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Generate(chat("long", max_tokens=1000), timeout=0.3):
                pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await async_wait_until(lambda: engine.in_flight() == 0)


async def test_engine_failure_mid_stream_is_unavailable_after_the_text_so_far() -> None:
    async with serving(SimConfig(fail_after_tokens=5), coalesce_ms=0) as (stub, _):
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for m in stub.Generate(chat("x", max_tokens=50)):
                received.append(m)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(received) == 5
    assert all(m.WhichOneof("event") == "delta" for m in received)


async def test_a_full_queue_is_resource_exhausted() -> None:
    config = SimConfig(
        max_concurrent_sequences=1,
        max_queued_requests=0,
        inter_token_latency=LatencyDistribution(mean_ms=20.0),
    )
    async with serving(config) as (stub, _):
        running = stub.Generate(chat("long", max_tokens=1000))
        await running.read()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, chat("next", max_tokens=5))
        running.cancel()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (pb.GenerateRequest(), "exactly one of chat or prompt"),
        (pb.GenerateRequest(chat=pb.Conversation()), "chat.messages needs at least 1"),
        (
            pb.GenerateRequest(
                chat=pb.Conversation(messages=[common_pb2.ChatMessage(content="hi")])
            ),
            "role is required",
        ),
        (
            pb.GenerateRequest(
                chat=pb.Conversation(messages=[common_pb2.ChatMessage(role=99, content="hi")])  # type: ignore[arg-type]
            ),
            "role is required",
        ),
        (chat("x", max_tokens=0), "max_tokens must be >= 1"),
        (chat("x", max_tokens=100_000), "above the context window"),
        (chat("x", temperature=3.0), "sampling.temperature must be in [0.0, 2.0]"),
        (chat("x", top_p=0.0), "top_p"),
        (pb.GenerateRequest(prompt="word " * 5000), "context window"),
    ],
)
async def test_bad_input_is_invalid_argument(request_: pb.GenerateRequest, fragment: str) -> None:
    async with serving() as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.value.details()


async def test_unknown_adapter_and_unknown_model() -> None:
    async with serving() as (stub, _):
        request = chat("x")
        request.adapter = "sql-expert"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown adapter 'sql-expert'" in err.value.details()
        request = chat("x")
        request.model = "gpt-9"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_count_tokens_matches_generate_usage_and_list_models_says_simulator() -> None:
    async with serving() as (stub, _):
        request = chat("how many tokens is this", max_tokens=2)
        counted = await stub.CountTokens(pb.CountTokensRequest(chat=request.chat))
        messages = await collect(stub, request)
        models = await stub.ListModels(pb.ListModelsRequest())
    assert counted.token_count == messages[-1].done.usage.input_tokens
    assert counted.remaining_tokens == counted.context_window - counted.token_count
    (info,) = models.models
    assert info.simulator and info.backend == pb.BACKEND_SIM and info.ready
    assert models.default_model == info.name
    assert "temperature" in info.supported_sampling_params


async def test_list_models_shows_a_local_model_file_by_its_name_alone() -> None:
    async with serving(SimConfig(model_id="/srv/atalaya/models/smollm2-135m.gguf")) as (stub, _):
        models = await stub.ListModels(pb.ListModelsRequest())
    assert models.models[0].model_id == "smollm2-135m.gguf"


@pytest.mark.parametrize(("field", "value"), [("model", "m" * 100_000), ("adapter", "a\n")])
async def test_an_overlong_or_unprintable_model_or_adapter_is_invalid(
    field: str, value: str
) -> None:
    request = chat("hi")
    setattr(request, field, value)
    async with serving() as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(stub, request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"{field} ")
    assert len(info.value.details() or "") < 100

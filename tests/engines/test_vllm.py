"""The vLLM engine adapter over a double of vLLM's EngineClient, plus one test
against real vLLM that runs only where vllm and a CUDA GPU exist."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from services.common.chat import ChatMessage
from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.engines.base import (
    Delta,
    Event,
    Finish,
    GenerationRequest,
    SamplingParams,
)
from services.engines.vllm import (
    MULTIPROC_METHOD_ENV,
    VllmConfig,
    VllmEngine,
    engine_args_kwargs,
    to_vllm_sampling_kwargs,
)
from tests.engines.vllm_double import BOS, DELTA, FakeLoRARequest, VllmDouble, double_bindings


def _has_vllm_gpu() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


HAS_VLLM_GPU = _has_vllm_gpu()


@pytest.fixture(autouse=True)
def _worker_method_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting an engine sets VLLM_WORKER_MULTIPROC_METHOD: undone after each test."""
    monkeypatch.delenv(MULTIPROC_METHOD_ENV, raising=False)


def make_config(**overrides: Any) -> VllmConfig:
    values: dict[str, Any] = {"model": "org/tiny-model", "served_name": "tiny", "max_model_len": 64}
    values.update(overrides)
    return VllmConfig(**values)


async def started(
    double: VllmDouble | None = None, *, delta: bool = True, **config: Any
) -> tuple[VllmEngine, VllmDouble]:
    double = double or VllmDouble()
    engine = VllmEngine(
        make_config(**config), engine_factory=double.factory, bindings=double_bindings(delta=delta)
    )
    await engine.start()
    return engine, double


async def collect(events: AsyncIterator[Event]) -> tuple[list[Delta], Finish | None]:
    deltas: list[Delta] = []
    finish: Finish | None = None
    async for event in events:
        if isinstance(event, Delta):
            assert finish is None, "a Delta after the Finish"
            deltas.append(event)
        else:
            assert finish is None, "two Finish events"
            finish = event
    return deltas, finish


def open_stream(engine: VllmEngine, request: GenerationRequest) -> AsyncGenerator[Event, None]:
    stream = engine.generate(request)
    assert isinstance(stream, AsyncGenerator)
    return stream


def prompt_request(
    prompt: str = "tell me a story", request_id: str = "r1", **sampling: Any
) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id, prompt=prompt, sampling=SamplingParams(**sampling)
    )


# --- Streaming ------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [True, False], ids=["delta-outputs", "cumulative-outputs"])
async def test_streams_deltas_then_finish(delta: bool) -> None:
    engine, double = await started(delta=delta)
    double.num_cached_tokens = 2

    deltas, finish = await collect(engine.generate(prompt_request()))

    assert [d.text for d in deltas] == ["Hello", ",", " world", "!"]
    assert all(d.token_count == 1 for d in deltas)
    assert finish is not None
    assert finish.reason == "stop"
    assert finish.stop_sequence == ""
    assert finish.input_tokens == 5  # BOS + four words
    assert finish.output_tokens == 4
    assert finish.cached_input_tokens == 2
    assert double.calls[0].prompt == {
        "prompt_token_ids": double.tokenizer.encode("tell me a story")
    }
    assert (double.calls[0].sampling_params.kwargs.get("output_kind") == DELTA) is delta
    assert engine.in_flight() == 0
    assert engine.queue_depth() == 0
    assert double.aborted == []  # a finished request is not aborted


async def test_length_finish_when_max_tokens_is_reached() -> None:
    engine, _ = await started()

    deltas, finish = await collect(engine.generate(prompt_request(max_tokens=2)))

    assert "".join(d.text for d in deltas) == "Hello,"
    assert finish is not None
    assert finish.reason == "length"
    assert finish.output_tokens == 2


async def test_stop_sequence_is_reported_and_not_emitted() -> None:
    engine, _ = await started()

    deltas, finish = await collect(engine.generate(prompt_request(stop=(" wor",))))

    assert "".join(d.text for d in deltas) == "Hello,"
    assert finish is not None
    assert finish.reason == "stop"
    assert finish.stop_sequence == " wor"


async def test_tokens_without_text_are_counted_on_the_next_delta() -> None:
    # A detokenizer holds back partial UTF-8: a token can come with no text.
    engine, _ = await started(VllmDouble(script=("a", "", "b")))

    deltas, finish = await collect(engine.generate(prompt_request()))

    assert [(d.text, d.token_count) for d in deltas] == [("a", 1), ("b", 2)]
    assert finish is not None
    assert finish.output_tokens == 3


async def test_chat_messages_use_the_chat_template() -> None:
    engine, double = await started()
    request = GenerationRequest(
        request_id="c1",
        messages=[ChatMessage("system", "be brief"), ChatMessage("user", "hi there")],
    )

    _, finish = await collect(engine.generate(request))

    messages, kwargs = double.tokenizer.template_calls[0]
    assert messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
    ]
    assert kwargs == {"add_generation_prompt": True, "tokenize": False}
    sent = double.calls[0].prompt["prompt_token_ids"]
    assert sent[0] != BOS  # the template carries the special tokens itself
    assert finish is not None
    assert finish.input_tokens == len(sent)
    assert await engine.count_tokens(request) == len(sent)


async def test_a_role_the_template_cannot_render_is_invalid() -> None:
    engine, double = await started()
    request = GenerationRequest(request_id="c2", messages=[ChatMessage("tool", "{}")])

    with pytest.raises(InvalidArgument, match="chat template"):
        await collect(engine.generate(request))
    assert double.calls == []


async def test_count_tokens_of_a_prompt() -> None:
    engine, _ = await started()
    assert await engine.count_tokens(prompt_request("one two three")) == 4


# --- Sampling parameters ------------------------------------------------------------


def test_sampling_conversion_passes_only_set_fields() -> None:
    assert to_vllm_sampling_kwargs(SamplingParams()) == {}
    full = SamplingParams(
        temperature=0.7,
        top_p=0.9,
        top_k=40,
        max_tokens=32,
        stop=("\n\n", "END"),
        seed=7,
        repetition_penalty=1.1,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        ignore_eos=True,
    )
    assert to_vllm_sampling_kwargs(full) == {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "max_tokens": 32,
        "stop": ["\n\n", "END"],
        "seed": 7,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "ignore_eos": True,
    }
    assert to_vllm_sampling_kwargs(SamplingParams(temperature=0.0)) == {"temperature": 0.0}


async def test_engine_builds_vllm_sampling_params_with_resolved_max_tokens() -> None:
    engine, double = await started(default_max_tokens=16)

    await collect(engine.generate(prompt_request(temperature=0.2, seed=3)))
    await collect(engine.generate(prompt_request("x " * 55, request_id="r2")))

    first = double.calls[0].sampling_params.kwargs
    assert first == {"temperature": 0.2, "seed": 3, "max_tokens": 16, "output_kind": DELTA}
    # 56 prompt tokens in a 64-token window leave room for 8.
    assert double.calls[1].sampling_params.kwargs["max_tokens"] == 8


async def test_sampling_values_vllm_rejects_are_invalid() -> None:
    engine, double = await started()
    with pytest.raises(InvalidArgument, match="sampling"):
        await collect(engine.generate(prompt_request(temperature=-1.0)))
    assert double.calls == []


# --- Limits -----------------------------------------------------------------------


async def test_prompt_longer_than_the_context_window_is_invalid() -> None:
    engine, double = await started(max_model_len=8)

    with pytest.raises(InvalidArgument, match="context window"):
        await collect(engine.generate(prompt_request("w " * 20)))
    assert double.calls == []


async def test_max_tokens_beyond_the_context_window_is_invalid() -> None:
    engine, double = await started(max_model_len=8)

    with pytest.raises(InvalidArgument, match="max_tokens"):
        await collect(engine.generate(prompt_request("a b", max_tokens=6)))
    with pytest.raises(InvalidArgument, match="max_tokens"):
        await collect(engine.generate(prompt_request("a b", max_tokens=0)))
    assert double.calls == []


async def test_request_without_input_is_invalid() -> None:
    engine, _ = await started()
    with pytest.raises(InvalidArgument):
        await collect(engine.generate(GenerationRequest(request_id="e")))
    with pytest.raises(InvalidArgument):
        await collect(engine.generate(GenerationRequest(request_id="e", messages=[])))


async def test_full_engine_answers_resource_exhausted() -> None:
    engine, _ = await started(VllmDouble(block_after=1), max_num_seqs=1, max_queued_requests=0)
    first = open_stream(engine, prompt_request(request_id="a"))
    assert isinstance(await anext(first), Delta)
    assert engine.in_flight() == 1

    with pytest.raises(ResourceExhausted):
        await collect(engine.generate(prompt_request(request_id="b")))

    await first.aclose()
    assert engine.in_flight() == 0


# --- LoRA -------------------------------------------------------------------------


async def test_a_named_adapter_becomes_a_lora_request() -> None:
    adapters = {"sql": "/adapters/sql", "chat": "/adapters/chat"}
    engine, double = await started(enable_lora=True, max_loras=2, lora_adapters=adapters)

    await collect(engine.generate(GenerationRequest(request_id="l1", prompt="q", adapter="sql")))
    await collect(engine.generate(GenerationRequest(request_id="l2", prompt="q", adapter="chat")))
    await collect(engine.generate(GenerationRequest(request_id="l3", prompt="q")))

    assert [c.lora_request for c in double.calls] == [
        FakeLoRARequest("sql", 2, "/adapters/sql"),
        FakeLoRARequest("chat", 1, "/adapters/chat"),
        None,
    ]
    assert engine.info.adapters == ("chat", "sql")


async def test_unknown_adapter_is_invalid() -> None:
    engine, double = await started(enable_lora=True, lora_adapters={"sql": "/adapters/sql"})

    with pytest.raises(InvalidArgument, match="adapter"):
        await collect(
            engine.generate(GenerationRequest(request_id="x", prompt="q", adapter="nope"))
        )
    assert double.calls == []


def test_adapters_need_enable_lora() -> None:
    with pytest.raises(ValueError, match="enable_lora"):
        make_config(lora_adapters={"sql": "/adapters/sql"})


def test_engine_args_mirror_the_config() -> None:
    config = make_config(
        dtype="bfloat16",
        quantization="awq",
        enable_prefix_caching=False,
        gpu_memory_utilization=0.5,
        max_num_seqs=8,
        tensor_parallel_size=2,
        enable_lora=True,
        max_loras=3,
        max_lora_rank=32,
    )
    assert engine_args_kwargs(config) == {
        "model": "org/tiny-model",
        "served_model_name": ["tiny"],
        "dtype": "bfloat16",
        "quantization": "awq",
        "enable_prefix_caching": False,
        "gpu_memory_utilization": 0.5,
        "max_model_len": 64,
        "max_num_seqs": 8,
        "tensor_parallel_size": 2,
        "trust_remote_code": False,
        "enable_lora": True,
        "max_loras": 3,
        "max_lora_rank": 32,
    }
    assert engine_args_kwargs(make_config())["enable_prefix_caching"] is True
    assert "max_loras" not in engine_args_kwargs(make_config())


# --- Abort ------------------------------------------------------------------------


async def test_consumer_cancel_aborts_the_engine_request() -> None:
    engine, double = await started(VllmDouble(block_after=2))
    got_output = asyncio.Event()
    received: list[Event] = []

    async def consume() -> None:
        async for event in engine.generate(prompt_request(request_id="cancel-me")):
            received.append(event)
            got_output.set()

    task = asyncio.create_task(consume())
    await got_output.wait()
    await double.wait_blocked("cancel-me")
    assert engine.in_flight() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert double.aborted == ["cancel-me"]
    assert "cancel-me" in double.closed  # vLLM's generator was closed too
    assert engine.in_flight() == 0
    assert engine.queue_depth() == 0
    assert not any(isinstance(e, Finish) for e in received)


async def test_closing_the_stream_aborts_the_engine_request() -> None:
    engine, double = await started(VllmDouble(block_after=1))
    stream = open_stream(engine, prompt_request(request_id="close-me"))
    assert isinstance(await anext(stream), Delta)

    await stream.aclose()

    assert double.aborted == ["close-me"]


async def test_abort_from_outside_stops_the_running_request() -> None:
    engine, double = await started(VllmDouble(block_after=2))
    stream = engine.generate(prompt_request(request_id="ext"))
    first = await anext(stream)
    await asyncio.sleep(0)

    async def rest() -> list[Event]:
        return [e async for e in stream]

    consumer = asyncio.create_task(rest())
    await double.wait_blocked("ext")
    await engine.abort("ext")
    remaining = await consumer

    assert isinstance(first, Delta)
    assert not any(isinstance(e, Finish) for e in remaining)  # ends without a Finish
    assert double.aborted == ["ext"]
    assert engine.in_flight() == 0


async def test_abort_of_an_unknown_request_is_a_no_op() -> None:
    engine, double = await started()
    await engine.abort("nobody")
    assert double.aborted == []


async def test_engine_failure_mid_stream_is_unavailable() -> None:
    engine, _ = await started(VllmDouble(fail_after=2))
    received: list[Event] = []

    with pytest.raises(Unavailable, match="engine failed"):
        async for event in engine.generate(prompt_request()):
            received.append(event)

    assert len(received) == 2
    assert engine.in_flight() == 0


# --- Lifecycle and health -----------------------------------------------------------


async def test_health_follows_the_engine() -> None:
    double = VllmDouble()
    engine = VllmEngine(make_config(), engine_factory=double.factory, bindings=double_bindings())
    assert await engine.check_health() is False  # not loaded yet
    with pytest.raises(Unavailable):
        await collect(engine.generate(prompt_request()))

    await engine.start()
    assert await engine.check_health() is True
    double.healthy = False
    assert await engine.check_health() is False

    await engine.stop()
    assert double.shut_down
    assert await engine.check_health() is False


async def test_the_engine_starts_with_spawned_worker_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, double = await started()
    await engine.stop()
    assert double.worker_method == "spawn"

    # An operator's explicit choice stays.
    monkeypatch.setenv(MULTIPROC_METHOD_ENV, "fork")
    engine, double = await started()
    await engine.stop()
    assert double.worker_method == "fork"


async def test_info_describes_the_model() -> None:
    engine, double = await started(max_num_seqs=8, max_queued_requests=4)
    info = engine.info
    assert (info.name, info.backend, info.model_id) == ("tiny", "vllm", "org/tiny-model")
    assert info.context_window == 64
    assert info.max_concurrency == 8
    assert info.max_queued_requests == 4
    assert info.simulator is False
    assert double.config is not None
    assert double.config.served_name == "tiny"


# --- Real vLLM --------------------------------------------------------------------


@pytest.mark.skipif(
    not HAS_VLLM_GPU, reason="needs the vllm package and a CUDA GPU; not present on this machine"
)
async def test_real_vllm_generates_with_a_tiny_model() -> None:
    """Loads a small instruct model (override with ATALAYA_VLLM_TEST_MODEL) and
    generates greedily; needs the weights in the Hugging Face cache or network."""
    model = os.environ.get("ATALAYA_VLLM_TEST_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
    engine = VllmEngine(
        VllmConfig(
            model=model,
            served_name="tiny",
            max_model_len=512,
            max_num_seqs=4,
            gpu_memory_utilization=0.3,
        )
    )
    await engine.start()
    try:
        assert await engine.check_health()
        request = GenerationRequest(
            request_id="real-1",
            messages=[ChatMessage("user", "Say hello.")],
            sampling=SamplingParams(temperature=0.0, max_tokens=8),
        )
        deltas, finish = await collect(engine.generate(request))
        assert finish is not None
        assert finish.reason in ("stop", "length")
        assert finish.input_tokens == await engine.count_tokens(request)
        assert 1 <= finish.output_tokens <= 8
        assert sum(d.token_count for d in deltas) <= finish.output_tokens
        assert "".join(d.text for d in deltas)
    finally:
        await engine.stop()

"""OpenAIEngine against a real OpenAI-compatible server (llama-cpp-python's own,
over the bundled SmolLM2 GGUF, started once for the module), plus scripted HTTP
answers (httpx.MockTransport) for what that server does not do: usage in the
stream, vLLM's stop_reason, 400/429/5xx answers and API keys."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.chat import ChatMessage
from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.engines.base import (
    Delta,
    Finish,
    GenerationRequest,
    SamplingParams,
    cost_usd,
)
from services.engines.llamacpp import bundled_gguf_path
from services.engines.openai import (
    LLAMACPP_EXTRA_SAMPLING,
    OpenAIConfig,
    OpenAIEngine,
    Price,
    estimate_tokens,
)
from tests.support.engines import collect_events
from tests.support.polling import async_wait_until, wait_until
from tests.support.processes import free_port

MODEL = "smollm2"
N_CTX = 1024
STORY = "Write a long story about a dragon who learns to bake bread."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (…/v1) of a llama-cpp-python server over the bundled GGUF."""
    port = free_port()
    log_path: Path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                bundled_gguf_path(),
                "--model_alias",
                MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                str(N_CTX),
                "--n_threads",
                "2",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}/v1"

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {log_path.read_text()[-2000:]}")
            try:
                return httpx.get(f"{base}/models", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(
                up, timeout_s=120, interval_s=0.2, message="llama_cpp.server did not come up"
            )
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def config(base_url: str, **overrides: Any) -> OpenAIConfig:
    fields: dict[str, Any] = {
        "base_url": base_url,
        "model": MODEL,
        "served_name": "smollm2-remote",
        "context_window": N_CTX,
        "default_max_tokens": 64,
        "timeout_s": 60.0,
        "prices": {MODEL: Price(0.5, 1.5)},
        "extra_sampling": LLAMACPP_EXTRA_SAMPLING,
    }
    fields.update(overrides)
    return OpenAIConfig(**fields)


@pytest.fixture
async def engine(server: str) -> AsyncIterator[OpenAIEngine]:
    eng = OpenAIEngine(config(server, max_concurrent_requests=1, max_queued_requests=0))
    await eng.start()
    yield eng
    await eng.stop()


def chat(text: str = STORY, request_id: str = "c1", **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=[ChatMessage("user", text)],
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def collect(engine: OpenAIEngine, request: GenerationRequest) -> tuple[str, Finish]:
    deltas, finish = await collect_events(engine, request)
    return "".join(d.text for d in deltas), finish


# --- against the real server -------------------------------------------------


async def test_info_and_health(engine: OpenAIEngine) -> None:
    info = engine.info
    assert info.backend == "openai"
    assert info.name == "smollm2-remote"
    assert info.model_id == MODEL
    assert info.usd_per_million_input_tokens == 0.5
    assert info.usd_per_million_output_tokens == 1.5
    assert info.max_concurrency == 1
    assert "top_k" in info.supported_sampling_params
    assert "ignore_eos" not in info.supported_sampling_params
    assert await engine.check_health()


async def test_chat_streams_deltas_then_finish_with_usage(engine: OpenAIEngine) -> None:
    request = chat("What is the capital of France?", temperature=0.0, max_tokens=24)
    events = [event async for event in engine.generate(request)]
    assert isinstance(events[-1], Finish)
    deltas = events[:-1]
    assert len(deltas) > 1 and all(isinstance(d, Delta) for d in deltas)
    finish = events[-1]
    assert finish.reason in ("stop", "length")
    # llama-cpp-python's server sends no usage: chunks are counted, the prompt estimated.
    assert finish.output_tokens == len(deltas)
    assert finish.input_tokens == await engine.count_tokens(request) > 0
    cost = cost_usd(engine.info, finish.input_tokens, finish.output_tokens)
    assert cost == pytest.approx(
        (finish.input_tokens * 0.5 + finish.output_tokens * 1.5) / 1_000_000
    )
    assert engine.in_flight() == 0


async def test_raw_prompt(engine: OpenAIEngine) -> None:
    text, finish = await collect(
        engine,
        GenerationRequest(
            request_id="p1",
            prompt="The quick brown fox",
            sampling=SamplingParams(temperature=0.0, max_tokens=5, top_k=10, seed=3),
        ),
    )
    assert text
    assert finish.reason == "length"


async def test_max_tokens_gives_length(engine: OpenAIEngine) -> None:
    _, finish = await collect(engine, chat(temperature=0.0, max_tokens=3))
    assert finish.reason == "length"
    assert finish.output_tokens == 3


async def test_stop_strings(engine: OpenAIEngine) -> None:
    full, _ = await collect(engine, chat(temperature=0.0, max_tokens=40))
    words = full.split()
    assert len(words) > 4
    stop = words[3]
    text, finish = await collect(
        engine, chat(temperature=0.0, max_tokens=40, stop=("never-appears", stop))
    )
    assert finish.reason == "stop"
    assert stop not in text
    assert text == full[: full.index(stop)]
    assert finish.stop_sequence == ""  # this server does not say which stop matched


async def test_same_seed_same_text(engine: OpenAIEngine) -> None:
    first, _ = await collect(engine, chat(seed=11, temperature=1.0, max_tokens=16))
    second, _ = await collect(engine, chat(seed=11, temperature=1.0, max_tokens=16))
    assert first == second


async def test_bad_requests(engine: OpenAIEngine) -> None:
    with pytest.raises(InvalidArgument, match="adapter"):
        await anext(
            engine.generate(
                GenerationRequest(
                    request_id="a", messages=[ChatMessage("user", "x")], adapter="my-lora"
                )
            )
        )
    with pytest.raises(InvalidArgument, match="does not support: ignore_eos"):
        await anext(engine.generate(chat(ignore_eos=True)))
    with pytest.raises(InvalidArgument, match="max_tokens"):
        await anext(engine.generate(chat(max_tokens=0)))
    with pytest.raises(InvalidArgument, match="context window"):
        await anext(engine.generate(chat(max_tokens=N_CTX)))
    with pytest.raises(InvalidArgument):
        await anext(engine.generate(GenerationRequest(request_id="b", messages=[])))
    with pytest.raises(InvalidArgument):
        await anext(engine.generate(GenerationRequest(request_id="b")))
    assert engine.in_flight() == 0


async def test_prompt_longer_than_the_upstream_context(engine: OpenAIEngine) -> None:
    # llama-cpp-python's server fails this stream without a finish reason.
    with pytest.raises((InvalidArgument, Unavailable)):
        await collect(engine, chat("dragon " * 1500))
    assert engine.in_flight() == 0
    _, finish = await collect(engine, chat(temperature=0.0, max_tokens=2))
    assert finish.output_tokens == 2


async def test_wrong_path_is_unavailable(server: str) -> None:
    eng = OpenAIEngine(config(server.removesuffix("/v1") + "/nope"))
    await eng.start()
    try:
        assert not await eng.check_health()
        with pytest.raises(Unavailable, match="HTTP 404"):
            await collect(eng, chat(max_tokens=2))
    finally:
        await eng.stop()


async def test_dead_port_is_unavailable() -> None:
    eng = OpenAIEngine(config(f"http://127.0.0.1:{free_port()}/v1", connect_timeout_s=2.0))
    await eng.start()
    try:
        assert not await eng.check_health()
        with pytest.raises(Unavailable, match="unreachable"):
            await collect(eng, chat(max_tokens=2))
        assert eng.in_flight() == 0
    finally:
        await eng.stop()


async def test_queue_full_abort_and_slot_reuse(engine: OpenAIEngine) -> None:
    long: dict[str, object] = {"temperature": 0.0, "max_tokens": 600}
    gen = engine.generate(chat(request_id="long", **long))
    assert isinstance(await anext(gen), Delta)
    assert engine.in_flight() == 1
    # one slot, no queue
    with pytest.raises(ResourceExhausted):
        await anext(engine.generate(chat(request_id="other")))
    await engine.abort("long")
    assert engine.in_flight() == 0
    with pytest.raises(Unavailable, match="request aborted"):
        while True:
            await anext(gen)
    _, finish = await collect(engine, chat(request_id="next", temperature=0.0, max_tokens=2))
    assert finish.output_tokens == 2


async def test_closing_the_generator_closes_the_stream(engine: OpenAIEngine) -> None:
    gen = engine.generate(chat(request_id="closing", temperature=0.0, max_tokens=600))
    assert isinstance(await anext(gen), Delta)
    await gen.aclose()
    assert engine.in_flight() == 0
    _, finish = await collect(engine, chat(request_id="after", temperature=0.0, max_tokens=2))
    assert finish.output_tokens == 2


async def test_queued_request_waits_for_the_slot(server: str) -> None:
    eng = OpenAIEngine(config(server, max_concurrent_requests=1, max_queued_requests=2))
    await eng.start()
    try:
        first = asyncio.create_task(collect(eng, chat(request_id="1", max_tokens=8)))
        await async_wait_until(lambda: eng.in_flight() == 1, timeout_s=60)
        second = asyncio.create_task(collect(eng, chat(request_id="2", max_tokens=4)))
        third = asyncio.create_task(collect(eng, chat(request_id="3", max_tokens=4)))
        await async_wait_until(lambda: eng.queue_depth() == 2, timeout_s=60)
        await eng.abort("3")
        with pytest.raises(Unavailable, match="request aborted"):
            await third
        _, f1 = await first
        _, f2 = await second
        assert f1.output_tokens > 0 and f2.output_tokens > 0
        assert eng.in_flight() == 0 and eng.queue_depth() == 0
    finally:
        await eng.stop()


# --- scripted HTTP answers ---------------------------------------------------


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks]
    if done:
        lines.append("data: [DONE]\n\n")
    return ("".join(lines)).encode()


def scripted(handler: Callable[[httpx.Request], httpx.Response], **overrides: Any) -> OpenAIEngine:
    return OpenAIEngine(
        config("http://upstream.test/v1", **overrides), transport=httpx.MockTransport(handler)
    )


async def test_usage_and_stop_reason_from_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-secret")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = sse(
            {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            {"choices": [{"index": 0, "delta": {"content": "Hello"}}]},
            {"choices": [{"index": 0, "delta": {"content": " world"}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]},
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 17,
                    "completion_tokens": 3,
                    "prompt_tokens_details": {"cached_tokens": 8},
                },
            },
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    eng = scripted(handler, api_key_env="TEST_UPSTREAM_KEY")
    await eng.start()
    try:
        text, finish = await collect(eng, chat(stop=("END",), temperature=0.5, top_k=5, seed=9))
    finally:
        await eng.stop()
    assert text == "Hello world"
    assert finish == Finish(
        reason="stop",
        input_tokens=17,
        output_tokens=3,
        stop_sequence="END",
        cached_input_tokens=8,
        queue_s=finish.queue_s,
        prefill_s=finish.prefill_s,
    )
    assert cost_usd(eng.info, 17, 3) == pytest.approx((17 * 0.5 + 3 * 1.5) / 1e6)
    (request,) = seen
    assert request.url.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-secret"
    sent = json.loads(request.content)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == MODEL
    assert sent["stop"] == ["END"]
    assert sent["temperature"] == 0.5
    assert sent["top_k"] == 5
    assert sent["seed"] == 9
    assert sent["max_tokens"] == 64  # default_max_tokens
    assert "sk-secret" not in repr(eng.info)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidArgument),
        (422, InvalidArgument),
        (429, ResourceExhausted),
        (500, Unavailable),
        (503, Unavailable),
        (401, Unavailable),
    ],
)
async def test_http_errors_are_mapped(status: int, error: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": "prompt: my secret text"}})

    eng = scripted(handler)
    await eng.start()
    try:
        with pytest.raises(error) as info:
            await collect(eng, chat())
        assert "secret" not in str(info.value)
        assert eng.in_flight() == 0
    finally:
        await eng.stop()


async def test_truncated_and_malformed_streams_are_unavailable() -> None:
    bodies = [
        sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}, done=False),
        b"data: {not json\n\n",
        sse({"error": {"message": "boom"}}),
    ]
    for body in bodies:

        def handler(request: httpx.Request, body: bytes = body) -> httpx.Response:
            return httpx.Response(200, content=body)

        eng = scripted(handler)
        await eng.start()
        try:
            with pytest.raises(Unavailable):
                await collect(eng, chat())
        finally:
            await eng.stop()


async def test_timeouts_are_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    eng = scripted(handler)
    await eng.start()
    try:
        with pytest.raises(Unavailable, match="timed out"):
            await collect(eng, chat())
    finally:
        await eng.stop()


async def test_missing_api_key_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UPSTREAM_KEY", raising=False)
    eng = scripted(lambda r: httpx.Response(200), api_key_env="TEST_UPSTREAM_KEY")
    with pytest.raises(Unavailable, match="API key"):
        await eng.start()


def test_pricing_and_estimates() -> None:
    eng = OpenAIEngine(config("http://x/v1", prices={}))
    assert eng.info.usd_per_million_input_tokens is None
    assert cost_usd(eng.info, 10, 10) is None
    with pytest.raises(ValueError):
        Price(-1, 0)
    with pytest.raises(ValueError):
        config("http://x/v1", extra_sampling={"min_p": "min_p"})
    assert estimate_tokens(GenerationRequest(request_id="e", prompt="abcdefgh")) == 2
    assert estimate_tokens(chat("hi")) > 2

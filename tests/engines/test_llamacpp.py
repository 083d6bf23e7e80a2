"""LlamaCppEngine over the bundled SmolLM2-135M-Instruct GGUF (real llama.cpp).

One engine is loaded for the module (loading and the first request's warm-up
take a few seconds); it is not bound to an event loop, so each test runs on its
own loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.chat import ChatMessage
from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.engines.base import Delta, Finish, GenerationRequest, SamplingParams
from services.engines.llamacpp import (
    LlamaCppConfig,
    LlamaCppEngine,
    bundled_gguf_path,
)
from services.engines.prompt import StopMatch, StopMatcher, Utf8Assembler
from tests.support.cgroups import limit_cpus
from tests.support.engines import collect_events
from tests.support.polling import async_wait_until

N_CTX = 1024
STORY = "Write a long story about a dragon who learns to bake bread."


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(LlamaCppConfig(n_ctx=N_CTX, n_threads=2, max_queued_requests=1))
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.stop())


def chat(
    text: str = STORY, request_id: str = "c1", adapter: str | None = None, **sampling: object
) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=[ChatMessage("user", text)],
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
        adapter=adapter,
    )


async def collect(engine: LlamaCppEngine, request: GenerationRequest) -> tuple[str, Finish]:
    deltas, finish = await collect_events(engine, request)
    assert sum(d.token_count for d in deltas) <= finish.output_tokens
    return "".join(d.text for d in deltas), finish


# --- helpers -----------------------------------------------------------------


def test_bundled_gguf_path() -> None:
    path = bundled_gguf_path()
    assert path.endswith(".gguf")
    assert os.path.isfile(path)


def test_stop_matcher_holds_back_partial_matches() -> None:
    m = StopMatcher(["END", "xyz"])
    assert m.feed("hello E") == "hello "
    assert m.feed("N") == ""
    assert m.feed("o") == "ENo"
    out = m.feed(" bye EN")
    assert out == " bye "
    assert m.feed("D and more") == StopMatch(text="", stop="END")
    plain = StopMatcher([])
    assert plain.feed("abc") == "abc"
    tail = StopMatcher(["abc"])
    assert tail.feed("xxab") == "xx"
    assert tail.flush() == "ab"


def test_utf8_assembler_waits_for_whole_characters() -> None:
    u = Utf8Assembler()
    data = "é€".encode()
    assert u.feed(data[:1]) == ""
    assert u.feed(data[1:3]) == "é"
    assert u.feed(data[3:]) == "€"
    assert u.feed(b"\xff") == "\ufffd"


# --- info and lifecycle ------------------------------------------------------


async def test_info(engine: LlamaCppEngine) -> None:
    info = engine.info
    assert info.backend == "llamacpp"
    assert info.name == "smollm2-135m-instruct"
    assert info.model_id == bundled_gguf_path()
    assert info.context_window == N_CTX
    assert info.adapters == ()
    assert info.max_concurrency == 1
    assert info.max_queued_requests == 1
    assert info.supports_chat and info.supports_prompt
    assert not info.simulator
    assert info.usd_per_million_input_tokens is None
    assert {"temperature", "seed", "stop", "ignore_eos"} <= info.supported_sampling_params
    assert await engine.check_health()


async def test_not_started_is_unavailable() -> None:
    eng = LlamaCppEngine()
    assert not await eng.check_health()
    with pytest.raises(Unavailable):
        await eng.count_tokens(chat())
    with pytest.raises(Unavailable):
        await anext(eng.generate(chat()))


def llama_threads(engine: LlamaCppEngine) -> tuple[int, int]:
    """(n_threads, n_threads_batch) of the loaded llama.cpp model."""
    llm: Any = engine._llm
    return llm.n_threads, llm.n_threads_batch


async def test_threads_default_to_the_containers_cpu_limit_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container limited to one CPU: llama.cpp's own default would be the node's.
    limit_cpus(monkeypatch, tmp_path, 1)
    loaded = []
    for n_threads in (None, 2):
        eng = LlamaCppEngine(LlamaCppConfig(n_ctx=64, n_threads=n_threads))
        await eng.start()
        try:
            loaded.append(llama_threads(eng))
        finally:
            await eng.stop()
    assert loaded == [(1, 1), (2, 2)]


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        LlamaCppConfig(n_ctx=1)
    with pytest.raises(ValueError):
        LlamaCppConfig(max_queued_requests=-1)
    assert LlamaCppConfig(model_path="/m/foo.Q4.gguf").name == "foo.Q4"


# --- generation --------------------------------------------------------------


async def test_chat_streams_deltas_then_finish(engine: LlamaCppEngine) -> None:
    request = chat("What is the capital of France?", temperature=0.0, max_tokens=24)
    events = [event async for event in engine.generate(request)]
    assert isinstance(events[-1], Finish)
    assert all(isinstance(e, Delta) for e in events[:-1])
    assert len(events) > 2
    finish = events[-1]
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert text.strip()
    assert finish.reason in ("stop", "length")
    assert finish.input_tokens == await engine.count_tokens(request)
    assert 0 < finish.output_tokens <= 24
    assert finish.queue_s >= 0 and finish.prefill_s >= 0
    assert engine.in_flight() == 0


async def test_raw_prompt(engine: LlamaCppEngine) -> None:
    request = GenerationRequest(
        request_id="p1",
        prompt="The quick brown fox",
        sampling=SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
    )
    text, finish = await collect(engine, request)
    assert finish.reason == "length"
    assert finish.output_tokens == 6
    assert text
    assert finish.input_tokens == await engine.count_tokens(request)


async def test_count_tokens_applies_the_chat_template(engine: LlamaCppEngine) -> None:
    as_chat = await engine.count_tokens(chat("hello"))
    as_prompt = await engine.count_tokens(GenerationRequest(request_id="x", prompt="hello"))
    assert as_chat > as_prompt >= 1


async def test_same_seed_same_text(engine: LlamaCppEngine) -> None:
    params: dict[str, object] = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 24}
    first, _ = await collect(engine, chat(seed=42, **params))
    second, _ = await collect(engine, chat(seed=42, **params))
    assert first == second
    others = [(await collect(engine, chat(seed=s, **params)))[0] for s in (1, 2, 3)]
    assert any(other != first for other in others)


async def test_max_tokens_gives_length(engine: LlamaCppEngine) -> None:
    _, finish = await collect(engine, chat(temperature=0.0, max_tokens=5))
    assert finish.reason == "length"
    assert finish.output_tokens == 5
    assert finish.stop_sequence == ""


async def test_eos_gives_stop_and_ignore_eos_runs_on(engine: LlamaCppEngine) -> None:
    short = "Answer with one word only: is the sky blue?"
    _, natural = await collect(engine, chat(short, temperature=0.0, max_tokens=64))
    assert natural.reason == "stop"
    assert natural.stop_sequence == ""
    n = natural.output_tokens + 10
    _, forced = await collect(engine, chat(short, temperature=0.0, max_tokens=n, ignore_eos=True))
    assert forced.reason == "length"
    assert forced.output_tokens == n


async def test_stop_string(engine: LlamaCppEngine) -> None:
    full, _ = await collect(engine, chat(temperature=0.0, max_tokens=40))
    words = full.split()
    assert len(words) > 4
    stop = words[3]
    expected = full[: full.index(stop)]
    text, finish = await collect(
        engine, chat(temperature=0.0, max_tokens=40, stop=("never-appears", stop))
    )
    assert finish.reason == "stop"
    assert finish.stop_sequence == stop
    assert text == expected
    assert stop not in text


async def test_penalties_and_top_k_are_accepted(engine: LlamaCppEngine) -> None:
    text, finish = await collect(
        engine,
        chat(
            temperature=0.7,
            top_k=20,
            top_p=0.9,
            repetition_penalty=1.3,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            seed=7,
            max_tokens=12,
        ),
    )
    assert finish.output_tokens > 0
    assert text


async def test_event_loop_is_not_blocked(engine: LlamaCppEngine) -> None:
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await collect(engine, chat(temperature=0.0, max_tokens=32, ignore_eos=True))
    finally:
        done = True
        await task
    # The loop kept running other tasks while the model was generating.
    assert ticks > 32


# --- bad input ---------------------------------------------------------------


async def test_bad_requests(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidArgument, match="adapter"):
        await anext(engine.generate(chat(adapter="sql-lora")))
    with pytest.raises(InvalidArgument, match="context window"):
        await anext(engine.generate(chat("dragon " * 2000)))
    with pytest.raises(InvalidArgument, match="context window"):
        await anext(engine.generate(chat(max_tokens=N_CTX)))
    with pytest.raises(InvalidArgument, match="max_tokens"):
        await anext(engine.generate(chat(max_tokens=0)))
    with pytest.raises(InvalidArgument):
        await anext(
            engine.generate(
                GenerationRequest(request_id="b", prompt="x", messages=[ChatMessage("user", "y")])
            )
        )
    with pytest.raises(InvalidArgument):
        await anext(engine.generate(GenerationRequest(request_id="b", messages=[])))
    assert engine.in_flight() == 0 and engine.queue_depth() == 0


async def test_default_max_tokens_fits_the_context(engine: LlamaCppEngine) -> None:
    # A prompt that leaves less room than default_max_tokens still runs.
    long = "dragon " * 900
    request = chat(long, temperature=0.0, ignore_eos=True)
    n = await engine.count_tokens(request)
    assert N_CTX - n < engine.info.default_max_tokens
    _, finish = await collect(engine, request)
    assert finish.reason == "length"
    assert finish.input_tokens + finish.output_tokens == N_CTX


# --- slot, queue, abort ------------------------------------------------------

LONG: dict[str, object] = {"temperature": 0.0, "max_tokens": 400, "ignore_eos": True}


async def test_closing_the_generator_frees_the_slot(engine: LlamaCppEngine) -> None:
    gen = engine.generate(chat(request_id="long", **LONG))
    assert isinstance(await anext(gen), Delta)
    assert engine.in_flight() == 1
    await gen.aclose()
    assert engine.in_flight() == 0
    # The slot serves a new request at once.
    _, finish = await collect(engine, chat(request_id="next", temperature=0.0, max_tokens=3))
    assert finish.output_tokens == 3


async def test_cancelling_the_consumer_frees_the_slot(engine: LlamaCppEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(chat(request_id="cancel-me", **LONG)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.in_flight() == 0
    _, finish = await collect(engine, chat(request_id="after", temperature=0.0, max_tokens=2))
    assert finish.output_tokens == 2


async def test_queue_full_and_abort(engine: LlamaCppEngine) -> None:
    running = asyncio.create_task(collect(engine, chat(request_id="run", **LONG)))
    await async_wait_until(lambda: engine.in_flight() == 1, timeout_s=60)
    queued = asyncio.create_task(
        collect(engine, chat(request_id="wait", temperature=0.0, max_tokens=3))
    )
    await async_wait_until(lambda: engine.queue_depth() == 1, timeout_s=60)
    # max_queued_requests=1: one more is refused.
    with pytest.raises(ResourceExhausted):
        await anext(engine.generate(chat(request_id="third")))

    await engine.abort("run")
    with pytest.raises(Unavailable, match="request aborted"):
        await running
    # The queued request got the slot and completes.
    _, finish = await asyncio.wait_for(queued, 60)
    assert finish.output_tokens == 3
    assert engine.in_flight() == 0 and engine.queue_depth() == 0
    await engine.abort("unknown")  # no-op


async def test_abort_a_queued_request(engine: LlamaCppEngine) -> None:
    running = asyncio.create_task(collect(engine, chat(request_id="run2", **LONG)))
    await async_wait_until(lambda: engine.in_flight() == 1, timeout_s=60)
    queued = asyncio.create_task(collect(engine, chat(request_id="wait2", max_tokens=3)))
    await async_wait_until(lambda: engine.queue_depth() == 1, timeout_s=60)
    await engine.abort("wait2")
    assert engine.queue_depth() == 0
    with pytest.raises(Unavailable, match="request aborted"):
        await queued
    await engine.abort("run2")
    assert engine.in_flight() == 0
    with pytest.raises(Unavailable, match="request aborted"):
        await running


async def test_abort_while_the_consumer_is_suspended(engine: LlamaCppEngine) -> None:
    gen = engine.generate(chat(request_id="idle", **LONG))
    assert isinstance(await anext(gen), Delta)
    await engine.abort("idle")
    assert engine.in_flight() == 0
    with pytest.raises(Unavailable, match="request aborted"):
        while True:
            await anext(gen)

"""SimEngine: determinism, endings, stop strings, scripts, limits, slots, abort, failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

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
from services.engines.sim import (
    LatencyDistribution,
    SimConfig,
    SimEngine,
    count_words,
    render_prompt,
    split_tokens,
)
from tests.support.engines import collect_events
from tests.support.polling import async_wait_until


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[..., SimEngine]]:
    engines: list[SimEngine] = []

    def make(**config: object) -> SimEngine:
        engine = SimEngine(SimConfig(**config))  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop()


def req(
    prompt: str = "tell me something",
    request_id: str = "r1",
    **sampling: object,
) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        prompt=prompt,
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def chat(*contents: str, request_id: str = "c1", **sampling: object) -> GenerationRequest:
    messages = [ChatMessage("system", "be brief")]
    messages += [ChatMessage("user", c) for c in contents]
    return GenerationRequest(
        request_id=request_id,
        messages=messages,
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def collect(engine: SimEngine, request: GenerationRequest) -> tuple[list[Delta], Finish]:
    deltas, finish = await collect_events(engine, request)
    return deltas, finish


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


# --- model info, lifecycle ---------------------------------------------------


async def test_model_info_says_simulator(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(max_concurrent_sequences=3, max_queued_requests=5)
    info = engine.info
    assert info.simulator is True
    assert info.backend == "sim"
    assert info.name == "sim"
    assert info.context_window == 4096
    assert info.default_max_tokens == 128
    assert info.max_concurrency == 3
    assert info.max_queued_requests == 5


async def test_health_and_unavailable_before_start(
    make_engine: Callable[..., SimEngine],
) -> None:
    engine = make_engine()
    assert await engine.check_health() is False
    with pytest.raises(Unavailable):
        await collect(engine, req())
    await engine.start()
    assert await engine.check_health() is True
    await engine.stop()
    assert await engine.check_health() is False


async def test_start_logs_simulator(
    make_engine: Callable[..., SimEngine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="services.engines.sim")
    await make_engine().start()
    assert any("simulator" in r.getMessage() for r in caplog.records)


# --- text ----------------------------------------------------------------------


async def test_same_seed_same_text_different_seed_different(
    make_engine: Callable[..., SimEngine],
) -> None:
    engine = make_engine()
    await engine.start()
    a, fa = await collect(engine, req(seed=7, max_tokens=30))
    b, _ = await collect(engine, req(seed=7, max_tokens=30))
    c, _ = await collect(engine, req(seed=8, max_tokens=30))
    assert text_of(a) == text_of(b)
    assert text_of(a) != text_of(c)
    assert fa.output_tokens == 30
    assert len(a) == 30 and all(d.token_count == 1 for d in a)
    assert not a[0].text.startswith(" ")
    assert all(d.text.startswith(" ") for d in a[1:])


async def test_default_seed_is_deterministic_per_config_and_input(
    make_engine: Callable[..., SimEngine],
) -> None:
    e1, e2, e3 = make_engine(seed=1), make_engine(seed=1), make_engine(seed=2)
    for e in (e1, e2, e3):
        await e.start()
    t1 = text_of((await collect(e1, req(max_tokens=20)))[0])
    t2 = text_of((await collect(e2, req(max_tokens=20)))[0])
    t3 = text_of((await collect(e3, req(max_tokens=20)))[0])
    other_input = text_of((await collect(e1, req("another prompt", max_tokens=20)))[0])
    assert t1 == t2
    assert t1 != t3
    assert t1 != other_input


async def test_greedy_ignores_seed(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine()
    await engine.start()
    a = text_of((await collect(engine, req(seed=1, temperature=0.0, max_tokens=10)))[0])
    b = text_of((await collect(engine, req(seed=2, temperature=0.0, max_tokens=10)))[0])
    assert a == b


async def test_max_tokens_gives_length(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine()
    await engine.start()
    deltas, finish = await collect(engine, req(max_tokens=5))
    assert finish.reason == "length"
    assert finish.output_tokens == 5
    assert finish.stop_sequence == ""
    assert sum(d.token_count for d in deltas) == 5
    assert count_words(text_of(deltas)) == 5


async def test_default_max_tokens_lowered_to_context(
    make_engine: Callable[..., SimEngine],
) -> None:
    engine = make_engine(context_window=10, default_max_tokens=100)
    await engine.start()
    _, finish = await collect(engine, req("one two three four"))
    assert finish.input_tokens == 4
    assert finish.output_tokens == 6
    assert finish.reason == "length"


async def test_eos_ends_early_unless_ignore_eos(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(eos_probability=0.5)
    await engine.start()
    _, finish = await collect(engine, req(seed=3, max_tokens=200))
    assert finish.reason == "stop"
    assert finish.stop_sequence == ""
    assert 1 <= finish.output_tokens < 200
    deltas, finish = await collect(engine, req(seed=3, max_tokens=200, ignore_eos=True))
    assert finish.reason == "length"
    assert finish.output_tokens == 200
    assert sum(d.token_count for d in deltas) == 200


async def test_input_tokens_and_count_tokens_agree(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine()
    await engine.start()
    request = chat("hello there", "how are you")
    # role marker per message + content words + the generation prompt
    expected = (1 + 2) + (1 + 2) + (1 + 3) + 1
    assert count_words(render_prompt(request.messages or [])) == expected
    assert await engine.count_tokens(request) == expected
    _, finish = await collect(engine, request)
    assert finish.input_tokens == expected
    assert await engine.count_tokens(req("a b  c\nd")) == 4


# --- stop strings ------------------------------------------------------------


async def test_stop_string_within_a_token(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(scripts={"q": "alpha beta gamma delta"})
    await engine.start()
    deltas, finish = await collect(engine, req("q", stop=("mm",)))
    assert text_of(deltas) == "alpha beta ga"
    assert finish.reason == "stop"
    assert finish.stop_sequence == "mm"
    assert finish.output_tokens == 3


async def test_stop_string_spanning_tokens_is_not_emitted(
    make_engine: Callable[..., SimEngine],
) -> None:
    engine = make_engine(scripts={"q": "one two three four five"})
    await engine.start()
    deltas, finish = await collect(engine, req("q", stop=("two three f",)))
    assert text_of(deltas) == "one "
    assert all("two" not in d.text for d in deltas)
    assert finish.reason == "stop"
    assert finish.stop_sequence == "two three f"
    assert finish.output_tokens == 4


async def test_partial_stop_prefix_is_released(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(scripts={"q": "one two three two four"})
    await engine.start()
    deltas, finish = await collect(engine, req("q", stop=("two five",)))
    assert text_of(deltas) == "one two three two four"
    assert finish.reason == "stop"  # the script ended
    assert finish.stop_sequence == ""
    assert sum(d.token_count for d in deltas) == 5
    # "two" was held back until " three" showed it was no stop string
    texts = [d.text for d in deltas]
    assert texts[:3] == ["one", " ", "two three"]


async def test_earliest_stop_string_wins(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(scripts={"q": "one two three four"})
    await engine.start()
    deltas, finish = await collect(engine, req("q", stop=("four", "two")))
    assert text_of(deltas) == "one "
    assert finish.stop_sequence == "two"


async def test_stop_on_synthetic_text(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine()
    await engine.start()
    full = text_of((await collect(engine, req(seed=5, max_tokens=60)))[0])
    word = full.split()[10]
    stop = " " + word
    deltas, finish = await collect(engine, req(seed=5, max_tokens=60, stop=(stop,)))
    assert finish.reason == "stop"
    assert finish.stop_sequence == stop
    assert text_of(deltas) == full[: full.index(stop)]


# --- scripts -------------------------------------------------------------------


async def test_scripted_output_by_last_user_message(
    make_engine: Callable[..., SimEngine],
) -> None:
    engine = make_engine(scripts={"what is 2+2?": "It is 4."})
    await engine.start()
    deltas, finish = await collect(engine, chat("hi", "what is 2+2?"))
    assert [d.text for d in deltas] == ["It", " is", " 4."]
    assert finish.reason == "stop"
    assert finish.output_tokens == 3
    # ignore_eos does not extend a script; max_tokens still cuts it
    _, finish = await collect(engine, chat("what is 2+2?", ignore_eos=True))
    assert finish.reason == "stop"
    deltas, finish = await collect(engine, chat("what is 2+2?", max_tokens=2))
    assert text_of(deltas) == "It is"
    assert finish.reason == "length"
    # unscripted input falls back to synthetic text
    _, finish = await collect(engine, chat("something else", max_tokens=4))
    assert finish.reason == "length"


async def test_scripted_output_by_callable(make_engine: Callable[..., SimEngine]) -> None:
    def script(request: GenerationRequest) -> str | None:
        return "echo: " + request.prompt if request.prompt else None

    engine = make_engine(scripts=script)
    await engine.start()
    deltas, _ = await collect(engine, req("ping  pong"))
    assert text_of(deltas) == "echo: ping  pong"
    assert split_tokens("a  b ") == ["a", "  b", " "]


# --- bad input -------------------------------------------------------------------


async def test_context_window_errors(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(context_window=8, default_max_tokens=4)
    await engine.start()
    with pytest.raises(InvalidArgument, match="context window"):
        await collect(engine, req("w " * 9))
    with pytest.raises(InvalidArgument, match="context window"):
        await collect(engine, req("w " * 8))  # fills it: no room for a token
    with pytest.raises(InvalidArgument, match="max_tokens"):
        await collect(engine, req("w " * 4, max_tokens=5))
    with pytest.raises(InvalidArgument, match="max_tokens"):
        await collect(engine, req("w", max_tokens=0))
    _, finish = await collect(engine, req("w " * 4, max_tokens=4))
    assert finish.output_tokens == 4
    # counting does not check the window
    assert await engine.count_tokens(req("w " * 20)) == 20


async def test_malformed_requests(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(adapters=("sql",))
    await engine.start()
    with pytest.raises(InvalidArgument):
        await collect(engine, GenerationRequest(request_id="x"))
    with pytest.raises(InvalidArgument):
        await collect(engine, GenerationRequest(request_id="x", messages=[]))
    with pytest.raises(InvalidArgument, match="adapter"):
        await collect(engine, GenerationRequest(request_id="x", prompt="p", adapter="nope"))
    deltas, _ = await collect(
        engine,
        GenerationRequest(
            request_id="x", prompt="p", adapter="sql", sampling=SamplingParams(seed=1)
        ),
    )
    assert deltas


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SimConfig(max_concurrent_sequences=0)
    with pytest.raises(ValueError):
        LatencyDistribution(mean_ms=-1)
    with pytest.raises(ValueError):
        SimConfig(eos_probability=1.5)


def test_latency_distributions_clip_at_zero() -> None:
    import random

    rng = random.Random(0)
    normal = LatencyDistribution(mean_ms=1, stddev_ms=50)
    lognormal = LatencyDistribution(mean_ms=10, stddev_ms=5, kind="lognormal")
    assert all(normal.sample_s(rng) >= 0 for _ in range(200))
    assert all(lognormal.sample_s(rng) > 0 for _ in range(200))
    assert LatencyDistribution().sample_s(rng) == 0.0
    assert LatencyDistribution(mean_ms=5).sample_s(rng) == 0.005


# --- concurrency -----------------------------------------------------------------


async def test_max_concurrent_respected_and_queue_used(
    make_engine: Callable[..., SimEngine],
) -> None:
    engine = make_engine(
        max_concurrent_sequences=3,
        inter_token_latency=LatencyDistribution(mean_ms=1),
        slowdown_per_sequence=0.5,
    )
    await engine.start()
    peak_running = 0
    peak_queued = 0

    async def watch() -> None:
        nonlocal peak_running, peak_queued
        while True:
            peak_running = max(peak_running, engine.in_flight())
            peak_queued = max(peak_queued, engine.queue_depth())
            assert engine.in_flight() <= 3
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(
        *(collect(engine, req(request_id=f"r{i}", max_tokens=5)) for i in range(10))
    )
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    assert peak_running == 3
    assert peak_queued > 0
    assert all(f.output_tokens == 5 for _, f in results)
    assert any(f.queue_s > 0 for _, f in results)
    assert engine.in_flight() == 0
    assert engine.queue_depth() == 0


async def test_queue_full_is_resource_exhausted(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(
        max_concurrent_sequences=1,
        max_queued_requests=2,
        ttft=LatencyDistribution(mean_ms=60_000),
    )
    await engine.start()
    tasks = [
        asyncio.create_task(collect(engine, req(request_id=f"r{i}", max_tokens=1)))
        for i in range(3)
    ]
    await async_wait_until(lambda: engine.in_flight() == 1 and engine.queue_depth() == 2)
    with pytest.raises(ResourceExhausted):
        await collect(engine, req(request_id="one-too-many"))
    assert engine.queue_depth() == 2
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert engine.in_flight() == 0
    assert engine.queue_depth() == 0


async def test_cancel_frees_the_slot(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(
        max_concurrent_sequences=1,
        inter_token_latency=LatencyDistribution(mean_ms=60_000),
    )
    await engine.start()
    first_delta = asyncio.Event()

    async def consume() -> None:
        async for event in engine.generate(req(request_id="slow", max_tokens=100)):
            if isinstance(event, Delta):
                first_delta.set()

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(first_delta.wait(), 5)
    assert engine.in_flight() == 1
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    assert engine.in_flight() == 0
    # the slot is free: a new request is served without waiting in the queue
    # (it would sleep 60 s between tokens, so only ask one)
    _, finish = await asyncio.wait_for(collect(engine, req(request_id="next", max_tokens=1)), 5)
    assert finish.reason == "length"


async def test_aclose_frees_the_slot(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(max_concurrent_sequences=1)
    await engine.start()
    gen = engine.generate(req(max_tokens=100))
    event: Event = await anext(gen)
    assert isinstance(event, Delta)
    assert engine.in_flight() == 1
    await gen.aclose()  # type: ignore[attr-defined]
    assert engine.in_flight() == 0


async def test_cancel_while_queued_leaves_the_queue(
    make_engine: Callable[..., SimEngine],
) -> None:
    engine = make_engine(max_concurrent_sequences=1, ttft=LatencyDistribution(mean_ms=60_000))
    await engine.start()
    running = asyncio.create_task(collect(engine, req(request_id="a")))
    queued = asyncio.create_task(collect(engine, req(request_id="b")))
    await async_wait_until(lambda: engine.queue_depth() == 1)
    queued.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await queued
    assert engine.queue_depth() == 0
    assert engine.in_flight() == 1
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    assert engine.in_flight() == 0


async def test_abort_running_and_queued(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(
        max_concurrent_sequences=1,
        inter_token_latency=LatencyDistribution(mean_ms=60_000),
    )
    await engine.start()
    running = asyncio.create_task(collect(engine, req(request_id="run", max_tokens=50)))
    queued = asyncio.create_task(collect(engine, req(request_id="wait", max_tokens=1)))
    queued2 = asyncio.create_task(collect(engine, req(request_id="next", max_tokens=1)))
    await async_wait_until(lambda: engine.in_flight() == 1 and engine.queue_depth() == 2)

    await engine.abort("wait")
    assert engine.queue_depth() == 1
    with pytest.raises(Unavailable, match="request aborted"):
        await asyncio.wait_for(queued, 5)

    await engine.abort("run")
    # the slot goes to the next queued request at once
    assert engine.queue_depth() == 0
    assert engine.in_flight() == 1
    with pytest.raises(Unavailable, match="request aborted"):
        await asyncio.wait_for(running, 5)
    _, finish = await asyncio.wait_for(queued2, 5)
    assert finish.output_tokens == 1
    assert engine.in_flight() == 0

    await engine.abort("unknown")  # no-op


async def test_abort_of_a_suspended_generator_frees_the_slot(
    make_engine: Callable[..., SimEngine],
) -> None:
    engine = make_engine(max_concurrent_sequences=1)
    await engine.start()
    gen = engine.generate(req(request_id="idle", max_tokens=100))
    assert isinstance(await anext(gen), Delta)
    await engine.abort("idle")
    assert engine.in_flight() == 0
    with pytest.raises(Unavailable, match="request aborted"):
        await anext(gen)


async def test_failure_injection(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(fail_after_tokens=3)
    await engine.start()
    deltas: list[Delta] = []
    with pytest.raises(Unavailable, match="simulated engine failure"):
        async for event in engine.generate(req(max_tokens=10)):
            assert isinstance(event, Delta)
            deltas.append(event)
    assert len(deltas) == 3
    assert engine.in_flight() == 0


async def test_stop_aborts_everything(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(max_concurrent_sequences=1, ttft=LatencyDistribution(mean_ms=60_000))
    await engine.start()
    tasks = [asyncio.create_task(collect(engine, req(request_id=f"r{i}"))) for i in range(2)]
    await async_wait_until(lambda: engine.in_flight() == 1 and engine.queue_depth() == 1)
    await engine.stop()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, Unavailable) for r in results)
    assert engine.in_flight() == 0
    assert engine.queue_depth() == 0


async def test_timings_are_filled(make_engine: Callable[..., SimEngine]) -> None:
    engine = make_engine(ttft=LatencyDistribution(mean_ms=5))
    await engine.start()
    _, finish = await collect(engine, req(max_tokens=2))
    assert finish.queue_s >= 0
    assert finish.prefill_s > 0

"""services.gateway.moderation: windows of tokens with look-back, buffered and
optimistic release, the cut-off on an unsafe window, fail modes, and what the
outcome adds up. The guardrail is a fake check whose verdicts the test holds and
releases; the generation stream is fed by the test, token by token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from services.common.errors import Unavailable
from services.gateway.moderation import Mode, StreamModerator
from services.gateway.upstream import GenDelta, GenDone, GuardResult
from tests.support.polling import async_wait_until

DONE = GenDone("stop", input_tokens=10, output_tokens=0, model="m", backend="sim")


def words_verdict(text: str, bad: Sequence[str] = ("bomb",)) -> GuardResult:
    unsafe = any(word in text for word in bad)
    return GuardResult(
        unsafe=unsafe,
        codes=("S9",) if unsafe else (),
        decided_by="semantic",
        policy="default",
        input_tokens=len(text.split()),
        output_tokens=1,
    )


class FakeCheck:
    """The moderator's check: a verdict per text; held calls wait for release()."""

    def __init__(
        self, verdict: Callable[[str], GuardResult] = words_verdict, *, held: bool = False
    ) -> None:
        self.verdict = verdict
        self.held = held
        self.texts: list[str] = []
        self.gates: list[asyncio.Event] = []
        self.in_flight = 0
        self.peak = 0
        self.cancelled = 0

    async def __call__(self, text: str) -> GuardResult:
        gate = asyncio.Event()
        if not self.held:
            gate.set()
        self.texts.append(text)
        self.gates.append(gate)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return self.verdict(text)

    def release(self, call: int) -> None:
        self.gates[call].set()


class FedStream:
    """The generation stream: yields what the test feeds; knows when it was closed."""

    def __init__(self) -> None:
        self._items: asyncio.Queue[GenDelta | GenDone | Exception] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.ended = False  # GenDone went out

    def feed(self, *items: GenDelta | GenDone | Exception) -> None:
        for item in items:
            self._items.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[GenDelta | GenDone]:
        try:
            while True:
                item = await self._items.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, GenDone):
                    self.ended = True
                    return
        finally:
            self.closed.set()


def tokens(*words: str) -> list[GenDelta]:
    """The start of a reply: one token per word, spaced as a model streams them."""
    return [GenDelta(w if i == 0 else " " + w, 1) for i, w in enumerate(words)]


def more(*words: str) -> list[GenDelta]:
    """The reply goes on."""
    return [GenDelta(" " + w, 1) for w in words]


def moderator(
    check: FakeCheck,
    mode: Mode = "buffered",
    *,
    window_tokens: int = 3,
    lookback_tokens: int = 0,
    max_parallel: int = 4,
) -> StreamModerator:
    return StreamModerator(
        check,
        mode=mode,
        window_tokens=window_tokens,
        lookback_tokens=lookback_tokens,
        max_parallel=max_parallel,
    )


class Consumer:
    """Runs the moderated stream in a task, keeping the deltas released so far."""

    def __init__(self, m: StreamModerator, stream: FedStream) -> None:
        self.released: list[str] = []
        self.task = asyncio.create_task(self._consume(m, stream))

    async def _consume(self, m: StreamModerator, stream: FedStream) -> None:
        async for delta in m.run(stream):
            self.released.append(delta.text)

    async def released_count(self, n: int) -> None:
        await async_wait_until(
            lambda: len(self.released) >= n, message=f"{n} deltas never released"
        )

    async def finished(self) -> None:
        await asyncio.wait_for(self.task, 5)


async def run_all(m: StreamModerator, items: Sequence[GenDelta | GenDone | Exception]) -> list[str]:
    stream = FedStream()
    stream.feed(*items)
    return [delta.text async for delta in m.run(stream)]


# --- windows ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["buffered", "optimistic"])
async def test_the_reply_is_checked_in_windows_and_the_last_one_at_the_end(mode: Mode) -> None:
    check = FakeCheck()
    m = moderator(check, mode)
    reply = tokens("a", "b", "c", "d", "e", "f", "g", "h")
    released = await run_all(m, [*reply, DONE])
    assert check.texts == ["a b c", " d e f", " g h"]
    assert "".join(released) == "a b c d e f g h"
    o = m.outcome
    assert o.unsafe is None and o.done == DONE
    assert o.windows_checked == 3
    assert o.text == "a b c d e f g h" and o.output_tokens == 8 and o.released_tokens == 8


async def test_each_window_is_checked_with_the_tokens_before_it() -> None:
    check = FakeCheck()
    m = moderator(check, window_tokens=3, lookback_tokens=2)
    await run_all(m, [*tokens("a", "b", "c", "d", "e", "f", "g", "h"), DONE])
    assert check.texts == ["a b c", " b c d e f", " e f g h"]


async def test_windows_close_at_delta_boundaries() -> None:
    check = FakeCheck()
    m = moderator(check, window_tokens=3)
    reply = [GenDelta("ab", 2), GenDelta("cd", 2), GenDelta("e", 1), GenDelta("fgh", 3)]
    released = await run_all(m, [*reply, DONE])
    assert check.texts == ["abcd", "efgh"]  # 4 tokens, then 4: no delta is split
    assert released == ["ab", "cd", "e", "fgh"]
    assert m.outcome.output_tokens == 8


async def test_an_empty_reply_checks_nothing() -> None:
    check = FakeCheck()
    m = moderator(check)
    assert await run_all(m, [DONE]) == []
    assert check.texts == []
    assert m.outcome.windows_checked == 0 and m.outcome.done == DONE
    assert m.outcome.guard_ms == 0.0


# --- buffered ---------------------------------------------------------------------


async def test_buffered_releases_a_window_only_once_it_is_judged_safe() -> None:
    check = FakeCheck(held=True)
    stream = FedStream()
    consumer = Consumer(moderator(check, "buffered", lookback_tokens=1), stream)
    stream.feed(*tokens("a", "b", "c"))
    await async_wait_until(lambda: check.texts)  # the window is being checked
    assert consumer.released == []

    check.release(0)
    await consumer.released_count(2)
    # "c" waits: the next window sees it again, with what follows.
    assert consumer.released == ["a", " b"]

    stream.feed(*more("d", "e", "f"))
    await async_wait_until(lambda: len(check.texts) == 2)
    assert check.texts[1] == " c d e f"
    check.release(1)
    await consumer.released_count(5)
    assert consumer.released == ["a", " b", " c", " d", " e"]

    stream.feed(DONE)  # nothing after "f": no more windows, the rest goes out
    await consumer.finished()
    assert consumer.released == ["a", " b", " c", " d", " e", " f"]
    assert stream.ended


async def test_buffered_never_shows_an_unsafe_window_and_closes_the_stream() -> None:
    check = FakeCheck()
    stream = FedStream()
    m = moderator(check, "buffered", lookback_tokens=1)
    consumer = Consumer(m, stream)
    stream.feed(*tokens("a", "b", "c"))
    await consumer.released_count(2)
    stream.feed(*more("bomb", "e", "f", "more", "text"))
    await consumer.finished()
    assert consumer.released == ["a", " b"]  # not even " c", seen with the bomb
    assert m.outcome.unsafe is not None and m.outcome.unsafe.codes == ("S9",)
    assert m.outcome.decided_by == "semantic"
    assert m.outcome.done is None
    assert stream.closed.is_set() and not stream.ended  # generation was cut off


# --- optimistic -------------------------------------------------------------------


async def test_optimistic_releases_at_once_and_stops_at_the_unsafe_verdict() -> None:
    check = FakeCheck(held=True)
    stream = FedStream()
    m = moderator(check, "optimistic")
    consumer = Consumer(m, stream)
    stream.feed(*tokens("a", "bomb", "c"))
    await consumer.released_count(3)  # out before any verdict
    await async_wait_until(lambda: check.texts)
    assert check.texts == ["a bomb c"]
    check.release(0)
    await consumer.finished()
    stream.feed(*more("d", "e"))
    assert consumer.released == ["a", " bomb", " c"]
    assert m.outcome.unsafe is not None
    assert stream.closed.is_set() and not stream.ended


async def test_optimistic_runs_at_most_max_parallel_checks() -> None:
    check = FakeCheck(held=True)
    stream = FedStream()
    m = moderator(check, "optimistic", window_tokens=1, max_parallel=2)
    consumer = Consumer(m, stream)
    stream.feed(*tokens("a", "b", "c", "d"), DONE)
    await consumer.released_count(4)
    await async_wait_until(lambda: len(check.texts) == 2)
    assert check.in_flight == 2 and len(check.texts) == 2  # the others wait for a slot
    for call in range(4):
        await async_wait_until(lambda: len(check.texts) > call)  # noqa: B023 - awaited here
        check.release(call)
    await consumer.finished()
    assert check.peak == 2
    assert m.outcome.windows_checked == 4 and m.outcome.unsafe is None


async def test_an_unsafe_window_cancels_the_checks_still_running() -> None:
    check = FakeCheck(held=True)
    stream = FedStream()
    m = moderator(check, "optimistic", window_tokens=2, max_parallel=4)
    consumer = Consumer(m, stream)
    stream.feed(*tokens("a", "bomb", "c", "d"))
    await async_wait_until(lambda: len(check.texts) == 2)
    check.release(0)  # the first window is unsafe; the second is still being checked
    await consumer.finished()
    assert m.outcome.unsafe is not None
    assert check.cancelled == 1 and check.in_flight == 0
    assert m.outcome.windows_checked == 1


# --- fail modes ---------------------------------------------------------------------


def guard_down(closed: bool) -> Callable[[str], GuardResult]:
    """What the gateway's check answers when the guardrail fails: its fail mode."""
    return lambda _: GuardResult(
        unsafe=closed, fail_mode_applied=True, reason="guardrail service is unavailable"
    )


@pytest.mark.parametrize("mode", ["buffered", "optimistic"])
async def test_failing_closed_cuts_the_reply_off(mode: Mode) -> None:
    check = FakeCheck(guard_down(closed=True))
    m = moderator(check, mode)
    released = await run_all(m, [*tokens("a", "b", "c", "d", "e", "f"), DONE])
    assert m.outcome.unsafe is not None
    assert m.outcome.unsafe.reason == "guardrail service is unavailable"
    assert m.outcome.fail_mode_applied
    assert m.outcome.windows_checked == 1
    if mode == "buffered":
        assert released == []
    else:  # what went out before the verdict, in order
        assert "a b c d e f".startswith("".join(released))


@pytest.mark.parametrize("mode", ["buffered", "optimistic"])
async def test_failing_open_lets_the_reply_through_marked(mode: Mode) -> None:
    check = FakeCheck(guard_down(closed=False))
    m = moderator(check, mode)
    released = await run_all(m, [*tokens("a", "b", "c", "d"), DONE])
    assert "".join(released) == "a b c d"
    assert m.outcome.unsafe is None and m.outcome.done == DONE
    assert m.outcome.fail_mode_applied and m.outcome.windows_checked == 2


async def test_one_failed_window_marks_the_whole_reply() -> None:
    verdicts = iter([GuardResult(unsafe=False), GuardResult(unsafe=False, fail_mode_applied=True)])
    check = FakeCheck(lambda _: next(verdicts))
    m = moderator(check)
    await run_all(m, [*tokens("a", "b", "c", "d"), DONE])
    assert m.outcome.fail_mode_applied and m.outcome.unsafe is None


# --- the outcome --------------------------------------------------------------------


async def test_the_outcome_adds_up_the_windows() -> None:
    verdicts = iter(
        [
            GuardResult(unsafe=False, policy="kids", input_tokens=5, output_tokens=1),
            GuardResult(unsafe=False, decided_by="llama_guard", stand_in=True, input_tokens=7),
            GuardResult(unsafe=False, input_tokens=4, output_tokens=2),
        ]
    )
    check = FakeCheck(lambda _: next(verdicts))
    m = moderator(check)
    await run_all(m, [*tokens("a", "b", "c", "d", "e", "f", "g"), DONE])
    o = m.outcome
    assert o.windows_checked == 3
    assert (o.input_tokens_guard, o.output_tokens_guard) == (16, 3)
    assert o.stand_in and not o.fail_mode_applied
    assert o.policy == "kids"  # a window without a policy name keeps the last one
    assert o.decided_by == "llama_guard"  # the first that says who decided


async def test_the_first_unsafe_window_decides() -> None:
    verdicts = iter(
        [
            GuardResult(unsafe=False, decided_by="semantic"),
            GuardResult(unsafe=True, codes=("S1",), decided_by="llama_guard"),
        ]
    )
    check = FakeCheck(lambda _: next(verdicts))
    m = moderator(check, "optimistic", max_parallel=1)
    await run_all(m, [*tokens("a", "b", "c", "d", "e", "f"), DONE])
    assert m.outcome.unsafe is not None and m.outcome.unsafe.codes == ("S1",)
    assert m.outcome.decided_by == "llama_guard"


# --- ends that are not the reply's --------------------------------------------------


async def test_a_generation_error_ends_the_run_and_cancels_the_checks() -> None:
    check = FakeCheck(held=True)
    stream = FedStream()
    consumer = Consumer(moderator(check, "optimistic"), stream)
    stream.feed(*tokens("a", "b", "c"))
    await async_wait_until(lambda: check.texts)
    stream.feed(Unavailable("engine failed"))
    with pytest.raises(Unavailable, match="engine failed"):
        await consumer.finished()
    assert check.texts == ["a b c"]
    assert check.cancelled == 1 and check.in_flight == 0


async def test_the_client_leaving_closes_the_stream_and_cancels_the_checks() -> None:
    check = FakeCheck(held=True)
    stream = FedStream()
    stream.feed(*tokens("a", "b", "c"))
    run = moderator(check, "optimistic").run(stream)
    assert [(await anext(run)).text for _ in range(3)] == ["a", " b", " c"]
    await async_wait_until(lambda: check.texts)  # the window is being checked
    await run.aclose()  # type: ignore[attr-defined]
    assert stream.closed.is_set() and not stream.ended
    assert check.cancelled == 1 and check.in_flight == 0

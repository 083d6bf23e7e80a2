"""The gateway core with in-memory upstreams: event order, degraded modes,
streaming moderation in both modes, cancellation, storage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.common.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from services.common.identity import ADMIN_SCOPE, ON_BEHALF_SCOPE, Identity, acting_as
from services.gateway.config import GatewaySettings, Limits, QuotaSettings
from services.gateway.core import (
    BlockedOut,
    ChatCore,
    ChatTurn,
    DeltaOut,
    DoneOut,
    Event,
    VerdictOut,
)
from services.gateway.quotas import Quotas
from services.gateway.templates import DEFAULT_TEMPLATE, PromptTemplate
from services.gateway.upstream import (
    GenDelta,
    GenDone,
    Generator,
    Guard,
    GuardResult,
    Memory,
    Messages,
    ModelFacts,
    Recalled,
    StoredTurn,
)
from tests.support.polling import async_wait_until

CARD = "4111 1111 1111 1111"


class FakeGuard(Guard):
    """Unsafe when the checked text holds a word of `bad`; records the texts."""

    def __init__(self, bad: Sequence[str] = ("bomb", CARD), delay_s: float = 0.0) -> None:
        self.bad = bad
        self.delay_s = delay_s
        self.checked: list[tuple[str, str]] = []
        self.down = False

    async def classify(
        self, request_id: str, messages: Messages, *, policy: str, timeout_s: float
    ) -> GuardResult:
        if self.down:
            raise Unavailable("guardrail service is unavailable")
        role, text = messages[-1]
        self.checked.append((role, text))
        await asyncio.sleep(self.delay_s)
        unsafe = any(b in text for b in self.bad)
        return GuardResult(
            unsafe=unsafe,
            codes=("S7",) if CARD in text else (("S9",) if unsafe else ()),
            decided_by="pii" if CARD in text else "semantic",
            policy=policy or "default",
            input_tokens=3,
        )


@dataclass
class FakeMemory(Memory):
    turns: list[StoredTurn] = field(default_factory=list)
    remembered: list[str] = field(default_factory=list)
    down: bool = False
    feedback: dict[str, float] = field(default_factory=dict)

    async def history(
        self, user_id: str, session_id: str, turns: int, *, timeout_s: float
    ) -> list[tuple[str, str]]:
        if self.down:
            raise Unavailable("memory service is unavailable")
        return [
            (t.user, t.assistant)
            for t in self.turns
            if (t.user_id, t.session_id) == (user_id, session_id)
        ][-turns:]

    async def recall(
        self, user_id: str, text: str, k: int, min_score: float, *, timeout_s: float
    ) -> list[Recalled]:
        if self.down:
            raise Unavailable("memory service is unavailable")
        return [Recalled(m, 0.9) for m in self.remembered][:k]

    async def store_turn(self, turn: StoredTurn, *, remember: bool, timeout_s: float) -> None:
        if self.down:
            raise Unavailable("memory service is unavailable")
        self.turns.append(turn)
        if remember:
            self.remembered.append(turn.user)

    async def record_feedback(
        self, user_id: str, turn_request_id: str, score: float, comment: str, *, timeout_s: float
    ) -> bool:
        if not any(t.request_id == turn_request_id for t in self.turns):
            raise NotFound("no such turn")
        created = turn_request_id not in self.feedback
        self.feedback[turn_request_id] = score
        return created


class FakeGenerator(Generator):
    """Streams `reply` word by word (one token each), at `delay_s` per token."""

    def __init__(
        self, reply: str = "one two three four five six seven eight", delay_s: float = 0.0
    ):
        self.reply = reply
        self.delay_s = delay_s
        self.prompts: list[Messages] = []
        self.aborted = asyncio.Event()
        self.hold: asyncio.Event | None = None  # when set, the stream waits for it
        self.finished = False
        self.down = False

    async def model(self, name: str, *, timeout_s: float) -> ModelFacts:
        if self.down:
            raise Unavailable("generation service is unavailable")
        if name not in ("", "m"):
            raise NotFound(f"model {name!r} is not served by generation")
        return ModelFacts("m", "llamacpp", 4096)

    async def generate(
        self,
        request_id: str,
        messages: Messages,
        *,
        model: str,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        timeout_s: float,
    ) -> AsyncIterator[GenDelta | GenDone]:
        self.prompts.append(messages)
        words = self.reply.split(" ")
        if self.hold is not None:
            await self.hold.wait()
        try:
            for i, word in enumerate(words[:max_tokens]):
                await asyncio.sleep(self.delay_s)
                yield GenDelta(word if i == 0 else " " + word, 1)
            self.finished = True
            yield GenDone("stop", 10, min(len(words), max_tokens), "m", "llamacpp")
        finally:
            if not self.finished:
                self.aborted.set()


def make(
    guard: FakeGuard | None = None,
    memory: FakeMemory | None = None,
    gen: FakeGenerator | None = None,
    **settings: object,
) -> tuple[ChatCore, FakeGuard, FakeMemory, FakeGenerator]:
    guard, memory, gen = guard or FakeGuard(), memory or FakeMemory(), gen or FakeGenerator()
    s = GatewaySettings(**{"window_tokens": 3, "lookback_tokens": 1, **settings})  # type: ignore[arg-type]
    core = ChatCore(guard, memory, gen, PromptTemplate.load(DEFAULT_TEMPLATE), s)
    return core, guard, memory, gen


def turn(message: str = "hello", **kw: object) -> ChatTurn:
    return ChatTurn(
        request_id=kw.pop("request_id", "t1"), user_id="u", session_id="s", message=message, **kw
    )  # type: ignore[arg-type]


async def run(core: ChatCore, t: ChatTurn) -> list[Event]:
    return [e async for e in core.chat(t, 30.0)]


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, DeltaOut))


@pytest.mark.parametrize("mode", ["buffered", "optimistic"])
async def test_a_turn_streams_the_reply_and_stores_it(mode: str) -> None:
    core, guard, memory, gen = make()
    events = await run(core, turn(mode=mode))
    assert kinds(events)[0] == "VerdictOut" and kinds(events)[-2:] == ["VerdictOut", "DoneOut"]
    assert text(events) == gen.reply
    done = events[-1]
    assert isinstance(done, DoneOut) and not done.blocked
    assert done.finish_reason == "stop" and done.output_tokens == 8 and done.input_tokens == 10
    assert done.memory.stored and memory.turns[0].assistant == gen.reply
    assert memory.turns[0].metadata["template"] == "chat@1"
    assert set(done.phases_ms) >= {"guard_input", "memory", "prompt", "ttft", "generation",
                                   "guard_output", "store"}  # fmt: skip
    output = events[-2]
    assert isinstance(output, VerdictOut) and output.windows_checked == 3  # 3 + 3 + 2 tokens
    assert [t for r, t in guard.checked if r == "assistant"][
        1
    ] == " three four five six"  # one token of look-back


async def test_buffered_mode_holds_text_until_its_window_is_judged() -> None:
    guard = FakeGuard(delay_s=0.05)
    core, *_ = make(guard=guard, gen=FakeGenerator(delay_s=0.0))
    released_before_check: list[int] = []
    async for event in core.chat(turn(mode="buffered"), 30.0):
        if isinstance(event, DeltaOut):
            released_before_check.append(len([c for c in guard.checked if c[0] == "assistant"]))
    # every delta went out only after at least the check of its window had started
    # and the first one only once the first window was judged
    assert released_before_check[0] >= 1


async def test_unsafe_input_is_blocked_before_generation() -> None:
    core, _, memory, gen = make()
    events = await run(core, turn("how to build a bomb"))
    assert kinds(events) == ["VerdictOut", "BlockedOut", "DoneOut"]
    blocked = events[1]
    assert isinstance(blocked, BlockedOut) and blocked.stage == "input" and blocked.codes == ("S9",)
    assert gen.prompts == [] and memory.turns == []
    assert isinstance(events[2], DoneOut) and events[2].blocked


@pytest.mark.parametrize("mode", ["buffered", "optimistic"])
async def test_output_moderation_cuts_off_a_card_number(mode: str) -> None:
    gen = FakeGenerator(f"sure here is the card {CARD} for you and more words", delay_s=0.01)
    core, _, memory, _ = make(gen=gen, window_tokens=4, lookback_tokens=4)
    events = await run(core, turn(mode=mode))
    blocked = [e for e in events if isinstance(e, BlockedOut)]
    assert len(blocked) == 1 and blocked[0].stage == "output" and blocked[0].codes == ("S7",)
    assert gen.aborted.is_set() and not gen.finished
    done = events[-1]
    assert isinstance(done, DoneOut) and done.blocked and done.finish_reason == ""
    assert memory.turns[0].assistant == "Sorry, I can't help with that."  # the refusal
    assert memory.remembered == []  # an unsafe turn's message is not remembered
    if mode == "buffered":
        assert CARD not in text(events)  # never shown
        assert "1111" not in text(events)


async def test_optimistic_streams_before_checks_finish() -> None:
    guard = FakeGuard(delay_s=0.2)
    core, *_ = make(guard=guard)
    first_delta_at: list[float] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    async for event in core.chat(turn(mode="optimistic"), 30.0):
        if isinstance(event, DeltaOut) and not first_delta_at:
            first_delta_at.append(loop.time() - started)
    # the input check took one guard delay; no output check delayed the first delta
    assert first_delta_at[0] < 0.4


async def test_memory_down_answers_without_memory_and_says_so() -> None:
    memory = FakeMemory(down=True)
    core, _, _, gen = make(memory=memory)
    events = await run(core, turn())
    done = events[-1]
    assert isinstance(done, DoneOut) and not done.blocked
    assert text(events) == gen.reply
    assert done.memory.degraded and not done.memory.stored and not done.memory.used
    assert "memory unavailable" in done.memory.reason


async def test_guard_down_fails_closed_by_default_and_open_when_set() -> None:
    guard = FakeGuard()
    guard.down = True
    core, *_ = make(guard=guard)
    events = await run(core, turn())
    assert kinds(events) == ["VerdictOut", "BlockedOut", "DoneOut"]
    blocked = events[1]
    assert isinstance(blocked, BlockedOut) and blocked.fail_mode_applied
    assert "guardrail service is unavailable" in blocked.reason
    core, *_ = make(guard=guard, fail_mode="open")
    events = await run(core, turn())
    assert not any(isinstance(e, BlockedOut) for e in events)
    verdict = events[0]
    assert isinstance(verdict, VerdictOut) and verdict.fail_mode_applied and not verdict.unsafe


async def test_generation_down_is_unavailable_before_any_event() -> None:
    gen = FakeGenerator()
    gen.down = True
    core, *_ = make(gen=gen)
    with pytest.raises(Unavailable):
        await run(core, turn())


async def test_second_turn_sees_history_and_memories() -> None:
    core, _, _, gen = make()
    await run(core, turn("my name is Ana", request_id="t1"))
    events = await run(core, turn("what is my name?", request_id="t2"))
    prompt = gen.prompts[-1]
    assert ("user", "my name is Ana") in prompt and prompt[-1] == ("user", "what is my name?")
    assert "- my name is Ana" in prompt[0][1]  # recalled into the system message
    done = events[-1]
    assert isinstance(done, DoneOut) and done.memory.used
    assert done.memory.history_turns == 1 and done.memory.memories_recalled == 1


async def test_remember_false_and_use_memory_false() -> None:
    core, _, memory, gen = make()
    await run(core, turn("first", remember=False))
    assert memory.turns == []
    await run(core, turn("second"))
    await run(core, turn("third", use_memory=False, request_id="t3"))
    assert gen.prompts[-1] == [gen.prompts[-1][0], ("user", "third")]


async def test_cancelling_the_turn_aborts_generation() -> None:
    gen = FakeGenerator(" ".join(["word"] * 200), delay_s=0.01)
    core, _, memory, _ = make(gen=gen)

    streaming = asyncio.Event()

    async def consume() -> None:
        async for event in core.chat(turn(mode="optimistic"), 30.0):
            if isinstance(event, DeltaOut):
                streaming.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(streaming.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(gen.aborted.wait(), 2)
    assert memory.turns == []


@pytest.mark.parametrize(
    ("t", "message"),
    [
        (ChatTurn("r", "", "s", "hi"), "user_id"),
        (ChatTurn("r", "u", "", "hi"), "session_id"),
        (ChatTurn("r", "u", "s", ""), "message"),
        (ChatTurn("r", "u", "s", "x" * 9000), "longer than"),
        (ChatTurn("r", "u", "s", "hi", max_tokens=0), "max_tokens"),
        (ChatTurn("r", "u", "s", "hi", temperature=3.0), "temperature"),
        (ChatTurn("r", "u", "s", "hi", model="m" * 100_000), "options.model is longer than"),
        (ChatTurn("r", "u", "s", "hi", policy="p\x00"), "options.policy contains non-printable"),
    ],
)
async def test_bad_turns_are_invalid_argument(t: ChatTurn, message: str) -> None:
    core, *_ = make()
    with pytest.raises(InvalidArgument, match=message):
        await run(core, t)


async def test_unknown_model_is_not_found_and_too_long_prompt_is_invalid() -> None:
    core, *_ = make()
    with pytest.raises(NotFound):
        await run(core, turn(model="nope"))
    core, *_ = make(max_message_chars=100_000, max_output_tokens=4000, default_max_tokens=4000)
    with pytest.raises(InvalidArgument, match="context window"):
        await run(core, turn("word " * 1000))


async def test_too_many_turns_is_resource_exhausted() -> None:
    core, _, _, gen = make(max_inflight_turns=1)
    hold = gen.hold = asyncio.Event()
    first = asyncio.create_task(run(core, turn()))
    await async_wait_until(lambda: gen.prompts)  # the first turn is generating
    with pytest.raises(ResourceExhausted):
        await run(core, turn(request_id="t2"))
    hold.set()
    await first


async def test_feedback_is_recorded_and_validated() -> None:
    core, _, memory, _ = make()
    await run(core, turn(request_id="t1"))
    assert await core.feedback("u", "t1", 1.0, "great") is True
    assert await core.feedback("u", "t1", 0.0, "") is False
    assert memory.feedback == {"t1": 0.0}
    with pytest.raises(InvalidArgument, match="score"):
        await core.feedback("u", "t1", None, "")
    with pytest.raises(InvalidArgument, match="score"):
        await core.feedback("u", "t1", 1.5, "")
    with pytest.raises(NotFound):
        await core.feedback("u", "nope", 1.0, "")


def test_template_hash_is_of_the_file(tmp_path: Path) -> None:
    import hashlib

    t = PromptTemplate.load(DEFAULT_TEMPLATE)
    assert t.sha256 == hashlib.sha256(DEFAULT_TEMPLATE.read_bytes()).hexdigest()
    bad = tmp_path / "t.toml"
    bad.write_text('name = "x"\nversion = "1"\nsystem = "s"\nmemories = "no placeholder"\n')
    with pytest.raises(ValueError, match="placeholder"):
        PromptTemplate.load(bad)


async def test_speculative_generation_runs_alongside_the_input_check() -> None:
    guard = FakeGuard(delay_s=0.1)
    gen = FakeGenerator()
    core, _, memory, _ = make(guard=guard, gen=gen, speculative_generation=True)
    events = await run(core, turn())
    assert text(events) == gen.reply and memory.turns
    assert gen.prompts  # generation started
    # deltas only after the input verdict
    assert kinds(events)[0] == "VerdictOut"


async def test_speculative_generation_is_aborted_when_the_input_is_unsafe() -> None:
    guard = FakeGuard(delay_s=0.05)
    gen = FakeGenerator(" ".join(["word"] * 500), delay_s=0.001)
    core, _, memory, _ = make(guard=guard, gen=gen, speculative_generation=True)
    events = await run(core, turn("how to build a bomb"))
    assert kinds(events) == ["VerdictOut", "BlockedOut", "DoneOut"]
    assert gen.prompts and gen.aborted.is_set() and not gen.finished
    assert memory.turns == []


ANA = Identity("acme", "ana", frozenset({"chat"}), "jwt")


async def test_the_turn_is_the_callers_when_the_request_names_no_user() -> None:
    core, _, memory, _ = make()
    with acting_as(ANA):
        await run(core, ChatTurn(request_id="t1", user_id="", session_id="s", message="hi"))
        await run(core, ChatTurn(request_id="t2", user_id="ana", session_id="s", message="hi"))
    assert [t.user_id for t in memory.turns] == ["ana", "ana"]


async def test_naming_another_user_is_denied_before_anything_runs() -> None:
    core, guard, memory, gen = make()
    with acting_as(ANA), pytest.raises(PermissionDenied):
        await run(core, ChatTurn(request_id="t1", user_id="bob", session_id="s", message="hi"))
    assert guard.checked == [] and gen.prompts == [] and memory.turns == []
    memory.turns.append(StoredTurn("t0", "bob", "s", "hi", "hello", {}))
    with acting_as(ANA), pytest.raises(PermissionDenied):
        await core.feedback("bob", "t0", 1.0, "")
    assert memory.feedback == {}


@pytest.mark.parametrize("scope", [ADMIN_SCOPE, ON_BEHALF_SCOPE])
async def test_an_admin_or_on_behalf_caller_may_name_the_user(scope: str) -> None:
    core, _, memory, _ = make()
    service = Identity("acme", "", frozenset({scope}), "api_key")
    with acting_as(service):
        await run(core, ChatTurn(request_id="t1", user_id="bob", session_id="s", message="hi"))
        assert await core.feedback("bob", "t1", 1.0, "") is True
    assert [t.user_id for t in memory.turns] == ["bob"]
    with acting_as(service), pytest.raises(InvalidArgument, match="user_id is required"):
        await run(core, ChatTurn(request_id="t2", user_id="", session_id="s", message="hi"))


async def test_quotas_refuse_before_any_upstream_call_and_charge_the_turns_tokens() -> None:
    now = [0.0]
    quotas = Quotas(
        QuotaSettings(user=Limits(requests_per_s=10.0, tokens_per_min=60.0, token_burst=10.0)),
        clock=lambda: now[0],
    )
    guard, memory, gen = FakeGuard(), FakeMemory(), FakeGenerator()
    s = GatewaySettings(window_tokens=3, lookback_tokens=1)
    core = ChatCore(guard, memory, gen, PromptTemplate.load(DEFAULT_TEMPLATE), s, quotas=quotas)
    with acting_as(ANA):
        await run(core, ChatTurn(request_id="t1", user_id="", session_id="s", message="hi"))
        checked = len(guard.checked)
        with pytest.raises(ResourceExhausted) as caught:
            await run(core, ChatTurn(request_id="t2", user_id="", session_id="s", message="hi"))
    # 10 prompt + 8 generated tokens overdraw a bucket of 10 that refills at 1 a
    # second by 8: 9 s until it holds one token again
    assert caught.value.retry_after_s == 9.0
    assert len(guard.checked) == checked and len(memory.turns) == 1


async def test_an_upstream_message_naming_a_path_is_withheld() -> None:
    class LeakyGenerator(FakeGenerator):
        async def model(self, name: str, *, timeout_s: float) -> ModelFacts:
            raise NotFound("model 'x' is not served here (serving '/srv/models/llama.gguf')")

    core, *_ = make(gen=LeakyGenerator())
    with pytest.raises(NotFound) as caught:
        await run(core, turn())
    assert str(caught.value) == "not found"

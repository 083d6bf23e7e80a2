"""The gateway core: one chat turn across the guardrail, memory and generation
(see the proto for the contract). No grpc here: upstream services come in
through the interfaces of services.gateway.upstream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Coroutine,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from opentelemetry import trace

from services.common import identity, semconv
from services.common.errors import (
    AtalayaError,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from services.common.telemetry import meter, tracer
from services.common.validation import optional_id, require_id, require_range, require_text
from services.gateway.config import GatewaySettings
from services.gateway.moderation import Mode, StreamModerator
from services.gateway.quotas import Quotas
from services.gateway.redaction import redacted, safe_text
from services.gateway.templates import PromptTemplate
from services.gateway.upstream import (
    GenDelta,
    GenDone,
    Generator,
    Guard,
    GuardResult,
    Memory,
    ModelFacts,
    StoredTurn,
)

log = logging.getLogger(__name__)

Stage = Literal["input", "output"]
T = TypeVar("T")
MODEL_LOOKUP_S = 10.0  # cached after the first call
CHARS_PER_TOKEN = 3  # a conservative estimate, to keep prompts inside the context window
MAX_COMMENT_CHARS = 4096


@dataclass(frozen=True)
class ChatTurn:
    """One Chat call: the user's message and the options it runs with."""

    request_id: str
    user_id: str
    session_id: str
    message: str
    policy: str = ""
    mode: Mode | None = None
    remember: bool = True
    use_memory: bool = True
    max_tokens: int | None = None
    model: str = ""
    temperature: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class DeltaOut:
    text: str
    token_count: int


@dataclass(frozen=True)
class VerdictOut:
    stage: Stage
    unsafe: bool
    codes: tuple[str, ...]
    decided_by: str
    policy: str
    fail_mode_applied: bool
    stand_in: bool
    windows_checked: int
    latency_ms: float


@dataclass(frozen=True)
class BlockedOut:
    stage: Stage
    codes: tuple[str, ...]
    refusal_text: str
    policy: str
    fail_mode_applied: bool
    reason: str


@dataclass
class MemoryOut:
    used: bool = False
    history_turns: int = 0
    memories_recalled: int = 0
    degraded: bool = False
    stored: bool = False
    reason: str = ""


@dataclass
class DoneOut:
    input_tokens: int = 0
    output_tokens: int = 0
    guard_input_tokens: int = 0
    guard_output_tokens: int = 0
    phases_ms: dict[str, float] = field(default_factory=dict)
    total_ms: float = 0.0
    cost_usd: float | None = None
    cost_basis: Literal["", "price_table", "gpu_time"] = ""
    template: PromptTemplate | None = None
    memory: MemoryOut = field(default_factory=MemoryOut)
    model: str = ""
    backend: str = ""
    finish_reason: str = ""
    blocked: bool = False


Event = DeltaOut | VerdictOut | BlockedOut | DoneOut


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the turn's deadline passed")
        return left if cap is None else min(left, cap)


@dataclass
class _State:
    """One turn in progress."""

    turn: ChatTurn
    deadline: _Deadline
    policy: str
    started: float = field(default_factory=time.perf_counter)
    done: DoneOut = field(default_factory=DoneOut)
    facts: ModelFacts | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    reply: str = ""
    seed: int = 0
    stream: AsyncIterable[GenDelta | GenDone] | None = None
    prefetch: _Prefetch | None = None
    gen_span: trace.Span | None = None
    gen_started: float = 0.0

    def __post_init__(self) -> None:
        self.seed = self.turn.seed if self.turn.seed is not None else random.getrandbits(31)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def max_tokens(self, s: GatewaySettings) -> int:
        return self.turn.max_tokens or s.default_max_tokens


class _Prefetch:
    """Reads a generation stream ahead into a queue from the moment it is made,
    so generation runs while the input check does; `aclose` cancels it (and
    with it the upstream call)."""

    _END = object()

    def __init__(self, stream: AsyncIterator[GenDelta | GenDone]) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._task = asyncio.create_task(self._pull(stream))

    async def _pull(self, stream: AsyncIterator[GenDelta | GenDone]) -> None:
        try:
            async for item in stream:
                self._queue.put_nowait(item)
        except Exception as exc:
            self._queue.put_nowait(exc)
        finally:
            self._queue.put_nowait(self._END)

    def __aiter__(self) -> AsyncIterator[GenDelta | GenDone]:
        return self._read()

    async def _read(self) -> AsyncIterator[GenDelta | GenDone]:
        while (item := await self._queue.get()) is not self._END:
            if isinstance(item, Exception):
                raise item
            assert isinstance(item, GenDelta | GenDone)
            yield item

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


class _Metrics:
    def __init__(self) -> None:
        m = meter()
        self.turns = m.create_counter(
            semconv.METRIC_GATEWAY_TURNS,
            description="Chat turns by outcome: completed, blocked_input, blocked_output, error.",
        )
        self.ttft = m.create_histogram(
            semconv.METRIC_GATEWAY_TTFT, unit="s", description="Arrival to the first delta sent."
        )
        self.duration = m.create_histogram(
            semconv.METRIC_GATEWAY_TURN_DURATION, unit="s", description="Whole turns."
        )
        self.degraded = m.create_counter(
            semconv.METRIC_GATEWAY_MEMORY_DEGRADED,
            description="Turns answered without memory, or not stored, because memory failed.",
        )
        self.feedback = m.create_histogram(
            semconv.METRIC_GATEWAY_FEEDBACK_SCORE,
            description="Feedback scores in [0, 1] (count: feedback received).",
        )


class ChatCore:
    def __init__(
        self,
        guard: Guard,
        memory: Memory,
        generator: Generator,
        template: PromptTemplate,
        settings: GatewaySettings,
        *,
        quotas: Quotas | None = None,
    ) -> None:
        self._guard = guard
        self._memory = memory
        self._generator = generator
        self._template = template
        self._s = settings
        self._quotas = Quotas(settings.quotas) if quotas is None else quotas
        self._inflight = 0
        self._metrics = _Metrics()

    @property
    def template(self) -> PromptTemplate:
        return self._template

    # ------------------------------------------------------------------ checks

    def _validate(self, turn: ChatTurn) -> None:
        require_id("user_id", turn.user_id)
        require_id("session_id", turn.session_id)
        require_text("message", turn.message, max_chars=self._s.max_message_chars)
        if not turn.message.strip():
            raise InvalidArgument("message is blank")
        # Names an error may echo (a model the generation service does not serve, a
        # policy the guardrail does not know): checked as ids first, so the echo is short.
        optional_id("options.model", turn.model)
        optional_id("options.policy", turn.policy)
        if turn.max_tokens is not None:
            require_range(
                "options.max_tokens", turn.max_tokens, minimum=1, maximum=self._s.max_output_tokens
            )
        if turn.temperature is not None:
            require_range("options.temperature", turn.temperature, minimum=0.0, maximum=2.0)

    # ------------------------------------------------------------------ guard

    async def _classify(
        self, request_id: str, messages: list[tuple[str, str]], policy: str, deadline: _Deadline
    ) -> GuardResult:
        """The guardrail's verdict; when the guardrail itself fails, the gateway's
        fail mode (closed: unsafe) with the reason."""
        try:
            return await self._guard.classify(
                request_id,
                messages,
                policy=policy,
                timeout_s=deadline.left(self._s.guard_timeout_s),
            )
        except (AtalayaError, TimeoutError) as exc:
            if isinstance(exc, InvalidArgument | NotFound):
                raise  # the caller's mistake (a bad policy name), not a guard failure
            reason = (
                safe_text(str(exc), "guardrail failed")
                if isinstance(exc, AtalayaError)
                else "guardrail timed out"
            )
            log.warning("guardrail failed", extra={"request_id": request_id, "reason": reason})
            return GuardResult(
                unsafe=self._s.fail_mode == "closed",
                policy=policy,
                fail_mode_applied=True,
                reason=reason,
            )

    # ------------------------------------------------------------------ memory

    async def _read_memory(
        self, turn: ChatTurn, deadline: _Deadline
    ) -> tuple[list[tuple[str, str]], list[str], MemoryOut]:
        """History and recalled memories; on failure, none and a degraded report."""
        report = MemoryOut()
        if not turn.use_memory:
            return [], [], report
        timeout = deadline.left(self._s.memory_timeout_s)
        with tracer().start_as_current_span(semconv.SPAN_GATEWAY_MEMORY):
            history_call = self._memory.history(
                turn.user_id, turn.session_id, self._s.history_turns, timeout_s=timeout
            )
            recall_call = self._memory.recall(
                turn.user_id,
                turn.message,
                self._s.recall_k,
                self._s.recall_min_score,
                timeout_s=timeout,
            )
            results = await asyncio.gather(
                _maybe(history_call, self._s.history_turns > 0, []),
                _maybe(recall_call, self._s.recall_k > 0, []),
                return_exceptions=True,
            )
        history: list[tuple[str, str]] = []
        memories: list[str] = []
        reasons = []
        if isinstance(results[0], BaseException):
            reasons.append(_reason(results[0], "history"))
        else:
            history = results[0]
        if isinstance(results[1], BaseException):
            reasons.append(_reason(results[1], "recall"))
        else:
            memories = [m.text for m in results[1]]
        if reasons:
            report.degraded = True
            report.reason = "; ".join(reasons)
            self._metrics.degraded.add(1, {"atalaya.gateway.memory_step": "read"})
            log.warning(
                "memory degraded",
                extra={"request_id": turn.request_id, "reason": report.reason},
            )
        report.history_turns = len(history)
        report.memories_recalled = len(memories)
        report.used = bool(history or memories)
        return history, memories, report

    def _fit(self, st: _State) -> list[tuple[str, str]]:
        """The prompt, dropping the oldest history and then memories until it
        fits the model's context window (estimated conservatively)."""
        assert st.facts is not None
        facts, max_tokens = st.facts, st.max_tokens(self._s)
        budget = (facts.context_window - max_tokens) * CHARS_PER_TOKEN

        def size() -> int:
            rendered = self._template.render(st.turn.message, st.history, st.memories)
            return sum(len(c) for _, c in rendered)

        while st.history and size() > budget:
            st.history = st.history[1:]
        while st.memories and size() > budget:
            st.memories = st.memories[:-1]
        if size() > budget:
            raise InvalidArgument(
                f"the message does not fit {facts.name}'s context window of "
                f"{facts.context_window} tokens with max_tokens {max_tokens}"
            )
        report = st.done.memory
        report.history_turns, report.memories_recalled = len(st.history), len(st.memories)
        report.used = bool(st.history or st.memories)
        return self._template.render(st.turn.message, st.history, st.memories)

    # ------------------------------------------------------------------ the turn

    async def chat(
        self, turn: ChatTurn, deadline_s: float | None, *, arrived: float | None = None
    ) -> AsyncIterator[Event]:
        """The turn's events. `arrived` (time.perf_counter() when the call came in)
        is where latencies start; TTFT ends when the first delta has been handed on
        (the consumer asked for the next event).

        The turn runs for the caller's identity (identity.current()): its tenant,
        and its user unless the request names another that the caller may act for.
        Error messages that would name a path, host or stack frame are replaced."""
        arrived = time.perf_counter() if arrived is None else arrived
        with _client_safe_errors():
            who = identity.current()
            turn = replace(turn, user_id=acting_user(who, turn.user_id))
            async with contextlib.aclosing(
                self._chat(turn, who.tenant, deadline_s, arrived)
            ) as events:
                async for event in events:
                    yield event

    async def _chat(
        self, turn: ChatTurn, tenant: str, deadline_s: float | None, arrived: float
    ) -> AsyncGenerator[Event]:
        self._validate(turn)
        self._quotas.admit(tenant, turn.user_id)
        if self._inflight >= self._s.max_inflight_turns:
            raise ResourceExhausted(
                f"the gateway runs {self._s.max_inflight_turns} turns; retry with backoff"
            )
        self._inflight += 1
        outcome = "error"
        deadline = _Deadline(deadline_s or self._s.max_turn_seconds)
        input_tokens = output_tokens = 0
        try:
            async for event in self._turn(turn, deadline, arrived):
                if isinstance(event, BlockedOut):
                    outcome = f"blocked_{event.stage}"
                elif isinstance(event, DoneOut):
                    input_tokens, output_tokens = event.input_tokens, event.output_tokens
                    if not event.blocked:
                        outcome = "completed"
                elif isinstance(event, DeltaOut):
                    output_tokens += event.token_count
                yield event
        finally:
            self._inflight -= 1
            self._quotas.charge(tenant, turn.user_id, input_tokens, output_tokens)
            self._metrics.turns.add(1, {"atalaya.gateway.outcome": outcome})
            self._metrics.duration.record(time.perf_counter() - arrived)

    async def _turn(
        self, turn: ChatTurn, deadline: _Deadline, arrived: float
    ) -> AsyncIterator[Event]:
        st = _State(turn, deadline, policy=turn.policy or self._s.input_policy, started=arrived)
        st.done.template = self._template
        span = trace.get_current_span()
        span.set_attribute(semconv.ATALAYA_REQUEST_ID, turn.request_id)
        span.set_attribute(semconv.ATALAYA_TEMPLATE_NAME, self._template.name)
        span.set_attribute(semconv.ATALAYA_TEMPLATE_VERSION, self._template.version)
        span.set_attribute(semconv.ATALAYA_TEMPLATE_SHA256, self._template.sha256)
        if self._s.log_content:
            span.set_attribute(semconv.ATALAYA_CONTENT, turn.message)
        try:
            async for event in self._input_stage(st):
                yield event
            if st.done.blocked:
                st.done.total_ms = st.elapsed_ms()
                yield st.done
                return
            if st.stream is None:
                self._prompt(st)
                self._start_generation(st)
            async for event in self._output_stage(st):
                yield event
        finally:
            if st.prefetch is not None:
                await st.prefetch.aclose()
            if st.gen_span is not None:
                st.gen_span.end()
        if turn.remember:
            await self._store(st)
        st.done.total_ms = st.elapsed_ms()
        yield st.done

    def _prompt(self, st: _State) -> None:
        t0 = time.perf_counter()
        with tracer().start_as_current_span(semconv.SPAN_GATEWAY_PROMPT):
            st.messages = self._fit(st)
        st.done.phases_ms["prompt"] = (time.perf_counter() - t0) * 1000.0

    def _start_generation(self, st: _State) -> None:
        """Open the Generate stream (under the turn's `gateway.generate` span);
        speculative turns read it ahead while the input check runs."""
        assert st.facts is not None
        turn = st.turn
        temperature = self._template.temperature if turn.temperature is None else turn.temperature
        st.gen_span = tracer().start_span(semconv.SPAN_GATEWAY_GENERATE)
        st.gen_started = time.perf_counter()
        with trace.use_span(st.gen_span, end_on_exit=False):
            st.stream = self._generator.generate(
                turn.request_id,
                st.messages,
                model=st.facts.name,
                max_tokens=st.max_tokens(self._s),
                temperature=temperature,
                seed=st.seed,
                timeout_s=st.deadline.left(),
            )
            if self._s.speculative_generation:
                st.prefetch = _Prefetch(st.stream)
                st.stream = st.prefetch

    async def _input_stage(self, st: _State) -> AsyncIterator[Event]:
        """In parallel: the input guard, memory, and the model's facts. Blocks
        the turn (verdict, blocked) when the message is unsafe."""
        turn, done = st.turn, st.done

        async def guard_input() -> GuardResult:
            t0 = time.perf_counter()
            with tracer().start_as_current_span(semconv.SPAN_GATEWAY_GUARD_INPUT):
                result = await self._classify(
                    turn.request_id, [("user", turn.message)], st.policy, st.deadline
                )
            done.phases_ms["guard_input"] = (time.perf_counter() - t0) * 1000.0
            return result

        async def memory() -> None:
            t0 = time.perf_counter()
            st.history, st.memories, done.memory = await self._read_memory(turn, st.deadline)
            done.phases_ms["memory"] = (time.perf_counter() - t0) * 1000.0

        model_call = self._generator.model(
            turn.model or self._s.model, timeout_s=st.deadline.left(MODEL_LOOKUP_S)
        )
        guard_task = asyncio.create_task(guard_input())
        memory_task = asyncio.create_task(memory())
        model_task = asyncio.create_task(model_call)
        tasks: list[asyncio.Task[Any]] = [guard_task, memory_task, model_task]
        try:
            st.facts = await model_task
            done.model, done.backend = st.facts.name, st.facts.backend
            if self._s.speculative_generation:
                await memory_task
                self._prompt(st)
                self._start_generation(st)
            verdict = await guard_task
            done.guard_input_tokens += verdict.input_tokens
            done.guard_output_tokens += verdict.output_tokens
            yield _verdict("input", verdict, 0, done.phases_ms["guard_input"])
            if verdict.unsafe:
                done.blocked = True
                done.memory.reason = "blocked at input: not stored"
                yield _blocked("input", verdict, self._s.refusal_text)
                return
            await memory_task
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def _output_stage(self, st: _State) -> AsyncIterator[Event]:
        """Generation, moderated on the way out; then the output verdict."""
        s, turn, done = self._s, st.turn, st.done
        assert st.facts is not None
        output_policy = s.output_policy or st.policy

        async def check(text: str) -> GuardResult:
            with tracer().start_as_current_span(semconv.SPAN_GATEWAY_GUARD_OUTPUT):
                return await self._classify(
                    turn.request_id,
                    [("user", turn.message), ("assistant", text)],
                    output_policy,
                    st.deadline,
                )

        moderator = StreamModerator(
            check,
            mode=turn.mode or s.moderation_mode,
            window_tokens=s.window_tokens,
            lookback_tokens=s.lookback_tokens,
            max_parallel=s.max_parallel_checks,
        )
        assert st.stream is not None
        with trace.use_span(st.gen_span or trace.INVALID_SPAN, end_on_exit=False):
            async for delta in moderator.run(st.stream):
                yield DeltaOut(delta.text, delta.token_count)
                if "ttft" not in done.phases_ms:  # the first delta has been sent on
                    done.phases_ms["ttft"] = st.elapsed_ms()
                    self._metrics.ttft.record(done.phases_ms["ttft"] / 1000.0)
        result = moderator.outcome
        gen = result.done
        done.phases_ms["generation"] = (time.perf_counter() - st.gen_started) * 1000.0
        done.phases_ms["guard_output"] = result.guard_ms
        done.guard_input_tokens += result.input_tokens_guard
        done.guard_output_tokens += result.output_tokens_guard
        if gen is not None:
            done.model, done.backend = gen.model or done.model, gen.backend or done.backend
            done.input_tokens = gen.input_tokens
        done.output_tokens = gen.output_tokens if gen else result.output_tokens
        unsafe = result.unsafe
        yield VerdictOut(
            "output",
            unsafe is not None,
            unsafe.codes if unsafe else (),
            result.decided_by,
            result.policy or output_policy,
            result.fail_mode_applied,
            result.stand_in,
            result.windows_checked,
            result.guard_ms,
        )
        st.reply = result.text
        if unsafe is not None:
            done.blocked = True
            st.reply = s.refusal_text
            yield _blocked("output", unsafe, s.refusal_text)
        elif gen is not None:
            done.finish_reason = gen.finish_reason
        done.cost_usd, done.cost_basis = self._cost(gen, st.facts, done.phases_ms["generation"])

    async def _store(self, st: _State) -> None:
        """The turn goes to memory: the refusal in place of an unsafe reply, and
        only a safe turn's message becomes a long-term memory."""
        done, turn = st.done, st.turn
        t0 = time.perf_counter()
        with tracer().start_as_current_span(semconv.SPAN_GATEWAY_STORE):
            try:
                await self._memory.store_turn(
                    StoredTurn(
                        turn.request_id,
                        turn.user_id,
                        turn.session_id,
                        turn.message,
                        st.reply,
                        self._metadata(done, st.seed),
                    ),
                    remember=not done.blocked,
                    timeout_s=st.deadline.left(self._s.memory_timeout_s),
                )
                done.memory.stored = True
            except (AtalayaError, TimeoutError) as exc:
                done.memory.degraded = True
                why = _reason(exc, "store")
                done.memory.reason = "; ".join(r for r in (done.memory.reason, why) if r)
                self._metrics.degraded.add(1, {"atalaya.gateway.memory_step": "store"})
                log.warning("turn not stored", extra={"request_id": turn.request_id, "reason": why})
        done.phases_ms["store"] = (time.perf_counter() - t0) * 1000.0

    def _metadata(self, done: DoneOut, seed: int) -> Mapping[str, str]:
        return {
            "template": f"{self._template.name}@{self._template.version}",
            "template_sha256": self._template.sha256,
            "model": done.model,
            "backend": done.backend,
            "seed": str(seed),
            "blocked": "output" if done.blocked else "",
        }

    def _cost(
        self, gen: GenDone | None, facts: ModelFacts, generation_ms: float
    ) -> tuple[float | None, Literal["", "price_table", "gpu_time"]]:
        if gen is not None and gen.cost_usd is not None:
            return gen.cost_usd, "price_table"
        if self._s.gpu_usd_per_hour is not None and facts.backend in ("vllm", "llamacpp"):
            seconds = generation_ms / 1000.0
            return self._s.gpu_usd_per_hour / 3600.0 * seconds / self._s.gpu_concurrency, "gpu_time"
        return None, ""

    # ------------------------------------------------------------------ feedback

    async def feedback(
        self, user_id: str, turn_request_id: str, score: float | None, comment: str
    ) -> bool:
        """Record feedback on a turn of the caller's user (or of a user the caller
        may act for), as chat() does."""
        with _client_safe_errors():
            who = identity.current()
            user_id = acting_user(who, user_id)
            return await self._feedback(who.tenant, user_id, turn_request_id, score, comment)

    async def _feedback(
        self, tenant: str, user_id: str, turn_request_id: str, score: float | None, comment: str
    ) -> bool:
        require_id("user_id", user_id)
        require_id("turn_request_id", turn_request_id)
        if score is None:
            raise InvalidArgument("score is required, in [0, 1]")
        require_range("score", score, minimum=0.0, maximum=1.0)
        require_text("comment", comment, max_chars=MAX_COMMENT_CHARS, allow_empty=True)
        self._quotas.admit(tenant, user_id)
        created = await self._memory.record_feedback(
            user_id, turn_request_id, score, comment, timeout_s=self._s.memory_timeout_s * 2
        )
        self._metrics.feedback.record(score)
        return created


def _client_safe(exc: AtalayaError) -> AtalayaError:
    """`exc`, or a copy with a generic message when its own would name a path, host
    or stack frame (the original goes to the log)."""
    clean = redacted(exc)
    if clean is not exc:
        log.warning("error message withheld from the client", extra={"reason": str(exc)})
    return clean


@contextlib.contextmanager
def _client_safe_errors() -> Iterator[None]:
    """Domain errors leave the block with a message safe for the client (_client_safe)."""
    try:
        yield
    except AtalayaError as exc:
        clean = _client_safe(exc)
        if clean is exc:
            raise
        raise clean from None


def acting_user(who: identity.Identity, requested: str) -> str:
    """The user a call is for: the one the request names, when the caller may act
    for it (it is that user, or holds the admin or on-behalf-of scope), else
    PERMISSION_DENIED; the caller's own user when the request names none."""
    if not requested:
        return who.user
    if not who.may_act_for(requested):
        raise PermissionDenied("user_id names a user the caller may not act for")
    return requested


async def _maybe(call: Coroutine[Any, Any, T], run: bool, default: T) -> T:
    if not run:
        call.close()
        return default
    return await call


def _reason(exc: BaseException, step: str) -> str:
    if isinstance(exc, Unavailable | DeadlineExceeded | TimeoutError):
        return f"memory unavailable ({step})"
    return f"memory failed ({step}): {type(exc).__name__}"


def _verdict(stage: Stage, r: GuardResult, windows: int, latency_ms: float) -> VerdictOut:
    return VerdictOut(
        stage,
        r.unsafe,
        r.codes,
        r.decided_by,
        r.policy,
        r.fail_mode_applied,
        r.stand_in,
        windows,
        latency_ms,
    )


def _blocked(stage: Stage, r: GuardResult, refusal: str) -> BlockedOut:
    if r.fail_mode_applied:
        reason = f"guard failed, failing closed: {r.reason}" if r.reason else "guard failed"
    else:
        reason = "unsafe content"
    return BlockedOut(stage, r.codes, refusal, r.policy, r.fail_mode_applied, reason)

"""The simulator backend ("sim"): no model runs; the text is synthetic.

A load- and scaling-test engine in the spirit of llm-d's inference simulator. It
imitates what matters to the serving path and to autoscaling: time to first
token and inter-token latency drawn from configured distributions, a fixed
number of concurrent sequences, per-token slowdown as the running batch grows,
a bounded wait queue (RESOURCE_EXHAUSTED beyond it), stop strings, max_tokens,
ignore_eos and seeds. ModelInfo says so (backend "sim", simulator=True) and its
log lines say "simulator".

Tokens are words. The prompt is "rendered" as follows and its tokens are its
whitespace-separated words:

  * a raw prompt: the prompt itself;
  * a conversation: one line per message, ``<|role|> content``, then a final
    ``<|assistant|>`` line (the generation prompt). Each message therefore
    costs 1 token for its role marker plus the words of its content, and the
    conversation 1 more token for the generation prompt.

The completion is a sequence of words, one word (one token) per Delta; every
token but the first starts with a space. Its text is a function of the seed, the
adapter and the rendered prompt: the request's seed when set (and temperature is
not 0: greedy decoding does not depend on the seed), else SimConfig.seed. A
scripted response (SimConfig.scripts) replaces the synthetic words; it is split
into tokens the same way (whitespace attached to the following word).

Endings:
  * ``length``: max_tokens tokens were produced;
  * ``stop`` with stop_sequence: a stop string appeared; the text from its start
    on is not emitted (text that could begin a stop string is held back until it
    is known not to, so stop strings spanning tokens are handled);
  * ``stop`` without stop_sequence: the scripted text ended, or (without
    ignore_eos) the sampled end-of-sequence position was reached. The end
    position is drawn per token with probability SimConfig.eos_probability
    (default 0: random text runs to max_tokens). ignore_eos never extends a
    script.

Finish.output_tokens counts every token produced, including those holding the
stop string; the Deltas' token_count add up to the tokens emitted.

Abort and failures: `abort(request_id)` (and `stop()`) frees the request's slot
or queue place at once, and its generator raises
``Unavailable("request aborted")`` at its next step (at once if it is waiting
for a slot or sleeping). Closing the generator or cancelling its consumer frees
the slot too (try/finally). SimConfig.fail_after_tokens makes every request raise
``Unavailable("simulated engine failure")`` after that many tokens.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import math
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from services.common.chat import ChatMessage
from services.common.errors import InvalidArgument, Unavailable
from services.engines.base import (
    SAMPLING_FIELDS,
    Delta,
    Engine,
    Event,
    Finish,
    FinishReason,
    GenerationRequest,
    ModelInfo,
)
from services.engines.prompt import StopMatch, StopMatcher
from services.engines.slots import SlotPool

log = logging.getLogger(__name__)

#: Words the synthetic text is drawn from.
DEFAULT_VOCABULARY: tuple[str, ...] = (
    "the", "a", "model", "token", "stream", "latency", "cluster", "node", "queue",
    "request", "answer", "simple", "fast", "data", "system", "of", "and", "to", "in",
    "is", "for", "with", "that", "on", "it", "as", "by", "this", "from", "we", "can",
    "will", "each", "new", "more", "time", "work", "load", "test", "scale", "batch",
    "engine", "signal", "value", "result", "service", "simulated", "text", "word",
)  # fmt: skip

_SENTENCE_END_PROBABILITY = 0.1
_TOKEN_RE = re.compile(r"\s*\S+|\s+")

#: A scripted response: a mapping from the last user message (or the raw prompt)
#: to a fixed text, or a callable returning the text (None: synthetic text).
Script = Mapping[str, str] | Callable[[GenerationRequest], str | None]


@dataclass(frozen=True)
class LatencyDistribution:
    """A latency in milliseconds: ``normal`` or ``lognormal`` with the given mean
    and standard deviation, clipped at 0. mean_ms 0 means no wait at all (the
    engine still yields to the event loop once per token)."""

    mean_ms: float = 0.0
    stddev_ms: float = 0.0
    kind: Literal["normal", "lognormal"] = "normal"

    def __post_init__(self) -> None:
        if self.mean_ms < 0 or self.stddev_ms < 0:
            raise ValueError("latency mean_ms and stddev_ms must be >= 0")
        if self.kind not in ("normal", "lognormal"):
            raise ValueError(f"unknown latency distribution {self.kind!r}")

    def sample_s(self, rng: random.Random) -> float:
        """One draw, in seconds."""
        if self.mean_ms == 0:
            return 0.0
        if self.stddev_ms == 0:
            return self.mean_ms / 1000.0
        if self.kind == "lognormal":
            sigma2 = math.log1p((self.stddev_ms / self.mean_ms) ** 2)
            mu = math.log(self.mean_ms) - sigma2 / 2
            return rng.lognormvariate(mu, math.sqrt(sigma2)) / 1000.0
        return max(0.0, rng.gauss(self.mean_ms, self.stddev_ms)) / 1000.0


@dataclass(frozen=True)
class SimConfig:
    """Configuration of one simulated model."""

    name: str = "sim"
    #: The model the simulator imitates, if any (shown as ModelInfo.model_id).
    model_id: str = "simulator"
    context_window: int = 4096
    default_max_tokens: int = 128
    #: Time from getting a slot to the first token.
    ttft: LatencyDistribution = field(default_factory=LatencyDistribution)
    #: Extra prefill time per prompt token, added to the TTFT draw.
    prefill_ms_per_input_token: float = 0.0
    #: Time between tokens with one running sequence.
    inter_token_latency: LatencyDistribution = field(default_factory=LatencyDistribution)
    #: Throughput model: each inter-token latency is multiplied by
    #: ``1 + slowdown_per_sequence * (running - 1)``, running being the
    #: sequences holding a slot at that moment.
    slowdown_per_sequence: float = 0.0
    max_concurrent_sequences: int = 8
    #: Requests that may wait for a slot; one more is ResourceExhausted.
    max_queued_requests: int = 64
    #: Default seed of the synthetic text and of the latency draws.
    seed: int = 0
    #: Without ignore_eos, the probability that the text ends after each token
    #: (a geometric length); 0 means random text runs to max_tokens.
    eos_probability: float = 0.0
    vocabulary: tuple[str, ...] = DEFAULT_VOCABULARY
    scripts: Script | None = None
    #: LoRA adapter names accepted (they only change the text's seed).
    adapters: tuple[str, ...] = ()
    #: Failure injection: raise Unavailable after this many tokens of every request.
    fail_after_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        if self.context_window < 1 or self.default_max_tokens < 1:
            raise ValueError("context_window and default_max_tokens must be >= 1")
        if self.max_concurrent_sequences < 1:
            raise ValueError("max_concurrent_sequences must be >= 1")
        if self.max_queued_requests < 0:
            raise ValueError("max_queued_requests must be >= 0")
        if self.slowdown_per_sequence < 0 or self.prefill_ms_per_input_token < 0:
            raise ValueError("slowdown_per_sequence and prefill_ms_per_input_token must be >= 0")
        if not 0.0 <= self.eos_probability <= 1.0:
            raise ValueError("eos_probability must be in [0, 1]")
        if not self.vocabulary or not all(w and not w.isspace() for w in self.vocabulary):
            raise ValueError("vocabulary needs at least one non-blank word")
        if self.fail_after_tokens is not None and self.fail_after_tokens < 0:
            raise ValueError("fail_after_tokens must be >= 0")


def render_prompt(messages: Sequence[ChatMessage]) -> str:
    """The simulator's "chat template" (see the module docstring)."""
    lines = [f"<|{m.role}|> {m.content}" for m in messages]
    lines.append("<|assistant|>")
    return "\n".join(lines)


def count_words(text: str) -> int:
    """Tokens of a text for the simulator: its whitespace-separated words."""
    return len(text.split())


def split_tokens(text: str) -> list[str]:
    """A text as simulator tokens: words with the whitespace before them."""
    return _TOKEN_RE.findall(text)


@dataclass(frozen=True)
class _Plan:
    input_tokens: int
    max_tokens: int
    stops: tuple[str, ...]
    tokens: Iterator[str]


@dataclass(eq=False)
class _Run:
    """One request between generate() and its end."""

    request_id: str
    aborted: bool = False
    abort_message: str = "request aborted"
    #: The latency the request sleeps through now, if any; abort wakes it.
    waiter: asyncio.Future[None] | None = None


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _StopFilter:
    """Turns tokens into Deltas through the shared StopMatcher (text that could
    begin a stop string is held back until it is known not to); `matched` is set
    when one appears (the text from its start on is dropped). A token is counted
    in the Delta that carries its first character."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._matcher = StopMatcher(stops)
        self._fed = 0  # characters fed so far
        self._emitted = 0  # characters emitted so far
        self._starts: list[int] = []  # where the tokens not counted yet start
        self.matched: str | None = None

    def feed(self, token: str) -> Delta | None:
        self._starts.append(self._fed)
        self._fed += len(token)
        out = self._matcher.feed(token)
        if isinstance(out, StopMatch):
            self.matched = out.stop
            return self._emit(out.text)
        return self._emit(out)

    def flush(self) -> Delta | None:
        delta = self._emit(self._matcher.flush())
        if self._starts:  # tokens with no text of their own
            n, self._starts = len(self._starts), []
            return Delta(delta.text if delta else "", n + (delta.token_count if delta else 0))
        return delta

    def _emit(self, text: str) -> Delta | None:
        if not text:
            return None
        self._emitted += len(text)
        n = bisect.bisect_left(self._starts, self._emitted)
        self._starts = self._starts[n:]
        return Delta(text, n)


def _synthetic_tokens(
    text_rng: random.Random,
    eos_rng: random.Random,
    vocabulary: Sequence[str],
    eos_probability: float,
) -> Iterator[str]:
    """Sentences of vocabulary words; ends at a sampled end-of-sequence position
    (never before the first token) unless eos_probability is 0."""
    first = True
    capitalize = True
    while True:
        if not first and eos_probability > 0 and eos_rng.random() < eos_probability:
            return
        word = text_rng.choice(vocabulary)
        if capitalize:
            word = word[:1].upper() + word[1:]
        capitalize = text_rng.random() < _SENTENCE_END_PROBABILITY
        yield ("" if first else " ") + word + ("." if capitalize else "")
        first = False


class SimEngine(Engine):
    """A simulated model: configured latency and capacity, synthetic text."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self._config = config or SimConfig()
        self._latency_rng = random.Random(self._config.seed)  # noqa: S311 (not crypto)
        self._started = False
        c = self._config
        self._slots: SlotPool[_Run] = SlotPool(
            c.max_concurrent_sequences,
            c.max_queued_requests,
            exhausted_message=lambda queued: (
                f"model {c.name!r} has {queued} requests queued "
                f"(max_queued_requests {c.max_queued_requests}); retry with backoff"
            ),
        )
        self._runs: set[_Run] = set()
        self._info = ModelInfo(
            name=self._config.name,
            backend="sim",
            model_id=self._config.model_id,
            context_window=self._config.context_window,
            default_max_tokens=self._config.default_max_tokens,
            simulator=True,
            adapters=self._config.adapters,
            supported_sampling_params=frozenset(SAMPLING_FIELDS),
            max_concurrency=self._config.max_concurrent_sequences,
            max_queued_requests=self._config.max_queued_requests,
        )

    @property
    def config(self) -> SimConfig:
        return self._config

    @property
    def info(self) -> ModelInfo:
        return self._info

    # --- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        c = self._config
        log.info(
            "simulator started (synthetic text, no model)",
            extra={
                "model": c.name,
                "backend": "sim",
                "simulator": True,
                "max_concurrent_sequences": c.max_concurrent_sequences,
                "max_queued_requests": c.max_queued_requests,
                "ttft_mean_ms": c.ttft.mean_ms,
                "itl_mean_ms": c.inter_token_latency.mean_ms,
            },
        )

    async def stop(self) -> None:
        self._started = False
        for run in list(self._runs):
            self._abort_run(run, "simulator stopped")
        log.info("simulator stopped", extra={"model": self._config.name, "simulator": True})

    async def check_health(self) -> bool:
        return self._started

    def queue_depth(self) -> int:
        return self._slots.queued

    def in_flight(self) -> int:
        return self._slots.in_flight

    # --- requests ----------------------------------------------------------

    async def count_tokens(self, request: GenerationRequest) -> int:
        _, input_tokens = self._render(request)
        return input_tokens

    async def abort(self, request_id: str) -> None:
        for run in [r for r in self._runs if r.request_id == request_id]:
            self._abort_run(run, "request aborted")
            log.info(
                "simulator request aborted",
                extra={"model": self._config.name, "request_id": request_id},
            )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        if not self._started:
            raise Unavailable(f"model {self._config.name!r} is not loaded")
        plan = self._plan(request)
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        run = _Run(request.request_id)
        self._runs.add(run)
        try:
            await self._slots.acquire(run)  # may raise ResourceExhausted
            self._check(run)
            slot_at = loop.time()
            ttft_s = self._config.ttft.sample_s(self._latency_rng)
            ttft_s += self._config.prefill_ms_per_input_token * plan.input_tokens / 1000.0
            await self._sleep(run, ttft_s)
            first_at = loop.time()

            reason: FinishReason = "length"
            produced = 0
            stops = _StopFilter(plan.stops)
            fail_after = self._config.fail_after_tokens
            while stops.matched is None:
                self._check(run)
                if produced >= plan.max_tokens:
                    break
                if fail_after is not None and produced >= fail_after:
                    log.warning(
                        "simulator injected engine failure",
                        extra={"model": self._config.name, "request_id": run.request_id},
                    )
                    raise Unavailable("simulated engine failure")
                token = next(plan.tokens, None)
                if token is None:
                    reason = "stop"
                    break
                if produced:
                    await self._sleep(run, self._inter_token_s())
                produced += 1
                delta = stops.feed(token)
                if delta is not None:
                    yield delta
            if stops.matched is not None:
                reason = "stop"
            else:
                rest = stops.flush()
                if rest is not None:
                    yield rest
            self._check(run)
            yield Finish(
                reason=reason,
                input_tokens=plan.input_tokens,
                output_tokens=produced,
                stop_sequence=stops.matched or "",
                queue_s=slot_at - arrived,
                prefill_s=first_at - slot_at,
            )
        finally:
            self._runs.discard(run)
            self._slots.release(run)

    # --- internals ---------------------------------------------------------

    def _render(self, request: GenerationRequest) -> tuple[str, int]:
        if (request.messages is None) == (request.prompt is None):
            raise InvalidArgument("exactly one of messages or prompt is required")
        if request.messages is not None:
            if not request.messages:
                raise InvalidArgument("messages is empty")
            rendered = render_prompt(request.messages)
        else:
            rendered = request.prompt or ""
        return rendered, count_words(rendered)

    def _plan(self, request: GenerationRequest) -> _Plan:
        c = self._config
        rendered, input_tokens = self._render(request)
        if request.adapter and request.adapter not in c.adapters:
            raise InvalidArgument(f"unknown adapter {request.adapter!r} for model {c.name!r}")
        if input_tokens > c.context_window:
            raise InvalidArgument(
                f"prompt is {input_tokens} tokens, longer than the context window of "
                f"model {c.name!r} ({c.context_window} tokens)"
            )
        room = c.context_window - input_tokens
        sampling = request.sampling
        if sampling.max_tokens is None:
            max_tokens = min(c.default_max_tokens, room)
            if max_tokens < 1:
                raise InvalidArgument(
                    f"prompt is {input_tokens} tokens and fills the context window of "
                    f"model {c.name!r} ({c.context_window} tokens)"
                )
        else:
            max_tokens = sampling.max_tokens
            if max_tokens < 1:
                raise InvalidArgument(f"max_tokens must be >= 1, got {max_tokens}")
            if max_tokens > room:
                raise InvalidArgument(
                    f"prompt ({input_tokens} tokens) plus max_tokens ({max_tokens}) is above "
                    f"the context window of model {c.name!r} ({c.context_window} tokens)"
                )
        stops = tuple(s for s in sampling.stop if s)
        script = self._script_for(request)
        if script is not None:
            tokens: Iterator[str] = iter(split_tokens(script))
        else:
            seed = self._text_seed(request, rendered)
            tokens = _synthetic_tokens(
                random.Random(seed),  # noqa: S311 (synthetic text, not crypto)
                random.Random(seed ^ 0x5EED),  # noqa: S311
                c.vocabulary,
                0.0 if sampling.ignore_eos else c.eos_probability,
            )
        return _Plan(input_tokens, max_tokens, stops, tokens)

    def _script_for(self, request: GenerationRequest) -> str | None:
        scripts = self._config.scripts
        if scripts is None:
            return None
        if callable(scripts):
            return scripts(request)
        if request.messages is not None:
            users = [m.content for m in request.messages if m.role == "user"]
            key = users[-1] if users else request.messages[-1].content
        else:
            key = request.prompt or ""
        return scripts.get(key)

    def _text_seed(self, request: GenerationRequest, rendered: str) -> int:
        sampling = request.sampling
        if sampling.seed is None or sampling.temperature == 0:
            base = f"config:{self._config.seed}"
        else:
            base = f"request:{sampling.seed}"
        material = f"{base}\x00{request.adapter or ''}\x00{rendered}".encode()
        return int.from_bytes(hashlib.sha256(material).digest()[:8], "big")

    def _inter_token_s(self) -> float:
        c = self._config
        base = c.inter_token_latency.sample_s(self._latency_rng)
        return base * (1.0 + c.slowdown_per_sequence * max(0, self._slots.in_flight - 1))

    def _check(self, run: _Run) -> None:
        if run.aborted:
            raise Unavailable(run.abort_message)

    def _abort_run(self, run: _Run, message: str) -> None:
        if run.aborted:
            return
        run.aborted = True
        run.abort_message = message
        self._slots.fail_waiting(run, message)
        if run.waiter is not None:
            _wake(run.waiter)
        self._slots.release(run)

    async def _sleep(self, run: _Run, delay_s: float) -> None:
        """Wait delay_s (at least one pass of the event loop); abort cuts it short."""
        self._check(run)
        if delay_s <= 0:
            await asyncio.sleep(0)
        else:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            run.waiter = fut
            handle = loop.call_later(delay_s, _wake, fut)
            try:
                await fut
            finally:
                handle.cancel()
                run.waiter = None
        self._check(run)

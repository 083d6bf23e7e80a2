"""Generation core: request checks, stream coalescing, timing, cost, metrics. No
gRPC here: the engine arrives through the constructor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation

from services.common import semconv
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.telemetry import meter
from services.common.validation import (
    optional_id,
    require_count,
    require_messages,
    require_range,
    require_text,
)
from services.engines.base import (
    Delta,
    Engine,
    Finish,
    GenerationRequest,
    ModelInfo,
    cost_usd,
)
from services.generation.config import GenerationSettings


def public_model_id(model_id: str) -> str:
    """What a client may see of an engine's model id: a hub id ("org/name") or an
    upstream model's name as it is; of a local file or folder (the llama.cpp GGUF,
    a vLLM model directory) or a URL, the last name alone: a path tells how the
    machine is laid out, a URL names a host."""
    text = model_id.strip()
    url = "://" in text
    if url:
        text = text.split("://", 1)[1].partition("/")[2]
    text = text.replace("\\", "/")
    local = url or text.startswith(("/", "~", ".")) or text.count("/") > 1
    if len(text) > 1 and text[1] == ":":  # a Windows drive
        local, text = True, text[2:]
    return PurePosixPath(text).name if local else text


@dataclass(frozen=True)
class Done:
    finish: Finish
    ttft_s: float  # arrival to the first delta handed to the caller
    decode_s: float  # first token to last
    total_s: float
    cost_usd: float | None


StreamEvent = Delta | Done


class GenerationCore:
    def __init__(self, engine: Engine, settings: GenerationSettings) -> None:
        self._engine = engine
        self._s = settings
        self._started = False
        m = meter()
        self._ttft = m.create_histogram(semconv.METRIC_GEN_TTFT, unit="s")
        self._tpot = m.create_histogram(semconv.METRIC_GEN_TPOT, unit="s")
        self._duration = m.create_histogram(semconv.METRIC_GEN_REQUEST_DURATION, unit="s")
        self._tokens = m.create_counter(semconv.METRIC_GEN_TOKENS, unit="{token}")
        m.create_observable_gauge(
            semconv.METRIC_GEN_QUEUE_DEPTH, callbacks=[self._observe_queue], unit="{request}"
        )
        m.create_observable_gauge(
            semconv.METRIC_GEN_IN_FLIGHT, callbacks=[self._observe_in_flight], unit="{request}"
        )

    @property
    def info(self) -> ModelInfo:
        return self._engine.info

    def _labels(self) -> dict[str, str]:
        info = self._engine.info
        return {semconv.GEN_AI_REQUEST_MODEL: info.name, semconv.ATALAYA_BACKEND: info.backend}

    def _observe_queue(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._engine.queue_depth(), self._labels())]

    def _observe_in_flight(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._engine.in_flight(), self._labels())]

    async def start(self) -> None:
        await self._engine.start()
        self._started = True

    async def stop(self) -> None:
        await self._engine.stop()

    async def ready(self) -> bool:
        return self._started and await self._engine.check_health()

    # --- checks ---------------------------------------------------------------

    def check(self, model: str, request: GenerationRequest) -> None:
        """Raise InvalidArgument / NotFound for what the model cannot take."""
        info = self._engine.info
        optional_id("model", model)
        optional_id("adapter", request.adapter or "")
        if model and model != info.name:
            raise NotFound(f"model {model!r} is not served here (serving {info.name!r})")
        if (request.messages is None) == (request.prompt is None):
            raise InvalidArgument("exactly one of chat or prompt is required")
        if request.messages is not None:
            if not info.supports_chat:
                raise InvalidArgument(f"model {info.name!r} takes prompts, not chat")
            require_messages(
                "chat.messages",
                request.messages,
                max_messages=self._s.max_messages,
                max_chars=self._s.max_message_chars,
            )
        if request.prompt is not None:
            if not info.supports_prompt:
                raise InvalidArgument(f"model {info.name!r} takes chat, not prompts")
            require_text("prompt", request.prompt, max_chars=self._s.max_message_chars)
        self._check_sampling(request, info)
        if request.adapter and request.adapter not in info.adapters:
            raise InvalidArgument(
                f"unknown adapter {request.adapter!r}; this model has "
                f"{', '.join(info.adapters) or 'no adapters'}"
            )

    def _check_sampling(self, request: GenerationRequest, info: ModelInfo) -> None:
        p = request.sampling
        unsupported = p.set_fields() - info.supported_sampling_params
        if unsupported:
            raise InvalidArgument(
                f"backend {info.backend!r} does not support {', '.join(sorted(unsupported))}"
            )
        if p.temperature is not None:
            require_range("sampling.temperature", p.temperature, minimum=0.0, maximum=2.0)
        if p.top_p is not None and not 0.0 < p.top_p <= 1.0:
            raise InvalidArgument(f"sampling.top_p must be in (0, 1], got {p.top_p}")
        if p.top_k is not None and p.top_k < 1:
            raise InvalidArgument(f"sampling.top_k must be >= 1, got {p.top_k}")
        if p.max_tokens is not None and p.max_tokens < 1:
            raise InvalidArgument(f"sampling.max_tokens must be >= 1, got {p.max_tokens}")
        if p.max_tokens is not None and p.max_tokens > info.context_window:
            raise InvalidArgument(
                f"sampling.max_tokens {p.max_tokens} is above the context window "
                f"({info.context_window} tokens)"
            )
        require_count("sampling.stop", p.stop, minimum=0, maximum=self._s.max_stop_strings)
        for i, stop in enumerate(p.stop):
            require_text(f"sampling.stop[{i}]", stop, max_chars=self._s.max_stop_chars)
        if p.repetition_penalty is not None and not 0.0 < p.repetition_penalty <= 2.0:
            raise InvalidArgument(
                f"sampling.repetition_penalty must be in (0, 2], got {p.repetition_penalty}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(p, name)
            if value is not None:
                require_range(f"sampling.{name}", value, minimum=-2.0, maximum=2.0)

    # --- work -----------------------------------------------------------------

    async def count_tokens(self, model: str, request: GenerationRequest) -> int:
        self.check(model, request)
        if not self._started:
            raise Unavailable("model is loading")
        return await self._engine.count_tokens(request)

    async def generate(self, model: str, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Deltas (coalesced) then Done. Cancelling the consumer aborts the engine."""
        self.check(model, request)
        if not self._started:
            raise Unavailable("model is loading")
        arrived = time.perf_counter()
        labels = self._labels()
        queue: _EventQueue = asyncio.Queue()
        pump = asyncio.create_task(self._pump(request, queue, labels))
        first_at: float | None = None
        try:
            async for event in _coalesce(queue, self._s.coalesce_ms / 1000.0):
                if isinstance(event, Finish):
                    yield self._done(event, arrived, first_at, labels)
                    return
                if first_at is None:
                    first_at = time.perf_counter()
                    self._ttft.record(first_at - arrived, labels)
                yield event
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(
        self, request: GenerationRequest, queue: _EventQueue, labels: dict[str, str]
    ) -> None:
        """Engine events into `queue`, timing the gaps between tokens; cancelling this
        task closes the engine stream (which aborts the engine request)."""
        stream = self._engine.generate(request)
        last: float | None = None
        try:
            async for event in stream:
                if isinstance(event, Delta):
                    now = time.perf_counter()
                    if last is not None:
                        self._tpot.record((now - last) / max(event.token_count, 1), labels)
                    last = now
                queue.put_nowait(event)
            queue.put_nowait(None)
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait(exc)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def _done(
        self, finish: Finish, arrived: float, first_at: float | None, labels: dict[str, str]
    ) -> Done:
        end = time.perf_counter()
        info = self._engine.info
        self._duration.record(end - arrived, labels)
        self._tokens.add(finish.input_tokens, {**labels, semconv.GEN_AI_TOKEN_TYPE: "input"})
        self._tokens.add(finish.output_tokens, {**labels, semconv.GEN_AI_TOKEN_TYPE: "output"})
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    **labels,
                    semconv.GEN_AI_USAGE_INPUT_TOKENS: finish.input_tokens,
                    semconv.GEN_AI_USAGE_OUTPUT_TOKENS: finish.output_tokens,
                    semconv.GEN_AI_RESPONSE_FINISH_REASONS: [finish.reason],
                }
            )
        ttft = (first_at if first_at is not None else end) - arrived
        return Done(
            finish=finish,
            ttft_s=ttft,
            decode_s=end - first_at if first_at is not None else 0.0,
            total_s=end - arrived,
            cost_usd=cost_usd(info, finish.input_tokens, finish.output_tokens),
        )


_EventQueue = asyncio.Queue[Delta | Finish | Exception | None]


async def _coalesce(queue: _EventQueue, window: float) -> AsyncIterator[Delta | Finish]:
    """Engine events from `queue` with deltas merged: the first delta goes out at
    once; a later one opens a window of `window` seconds, and every delta arriving
    in it leaves as one message when it closes (or when the stream finishes).
    Exceptions from the engine are raised after the text before them is out."""
    first = True
    pending: list[Delta] = []
    flush_at: float | None = None
    while True:
        if flush_at is None:
            event = await queue.get()
        else:
            try:
                event = await asyncio.wait_for(
                    queue.get(), max(0.0, flush_at - time.perf_counter())
                )
            except TimeoutError:
                yield _merge(pending)
                pending, flush_at = [], None
                continue
        if isinstance(event, Delta):
            if first or window <= 0:
                first = False
                yield event
            else:
                pending.append(event)
                flush_at = flush_at or time.perf_counter() + window
            continue
        if pending:
            yield _merge(pending)
            pending, flush_at = [], None
        if isinstance(event, Exception):
            raise event
        if event is None:
            raise Unavailable("the engine ended the stream without finishing it")
        yield event
        return


def _merge(deltas: list[Delta]) -> Delta:
    if len(deltas) == 1:
        return deltas[0]
    return Delta("".join(d.text for d in deltas), sum(d.token_count for d in deltas))

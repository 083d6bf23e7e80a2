"""The OpenAI-compatible backend ("openai"): any server speaking the OpenAI HTTP
API (a vLLM server, KServe's runtime, Ollama, llama-cpp-python's server, a
hosted API), streamed over Server-Sent Events with httpx.

Conversations go to ``POST {base_url}/chat/completions`` (the upstream applies
its chat template), raw prompts to ``POST {base_url}/completions``; both with
``stream: true`` and ``stream_options: {"include_usage": true}`` so the final
chunk carries the token usage.

Usage: Finish.input_tokens/output_tokens are the upstream's `usage` numbers when
it sends them. A server that does not (llama-cpp-python's, older vLLMs) gets the
best count available: output tokens = content chunks received (such servers send
one token per chunk), input tokens = `count_tokens`' estimate. `count_tokens` is
always an estimate (about 4 characters per token of the message text plus a few
tokens per message for the chat template), because the OpenAI API has no
tokenize endpoint; the context-window check on prompts is therefore left to the
upstream, whose 400 becomes InvalidArgument.

Cost: OpenAIConfig.prices maps upstream model names to USD per 1M input and
output tokens; the engine's ModelInfo carries its model's price and
`services.engines.base.cost_usd(info, input_tokens, output_tokens)` prices a request.

Errors: connection failures, timeouts, 5xx and other unexpected answers ->
Unavailable; 400/413/422 -> InvalidArgument (a fixed message: the upstream's text
may quote the prompt); 429 -> ResourceExhausted. Nothing of the API key is ever
logged: the config holds only the name of the environment variable it is read
from.

Stop strings are sent upstream, which stops before them. Finish.stop_sequence is
set when the upstream says which one matched (vLLM's `stop_reason`); otherwise
it is empty even if a stop string ended the text.

Concurrency: at most max_concurrent_requests streams at once, then a FIFO of at
most max_queued_requests waiting requests (one more raises ResourceExhausted).
Closing the generator, cancelling its consumer or `abort(request_id)` closes
the HTTP stream (the upstream sees the disconnect and stops) and frees the slot;
an aborted generator raises ``Unavailable("request aborted")``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.common.errors import (
    AtalayaError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.engines.base import (
    Delta,
    Engine,
    Event,
    Finish,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
)
from services.engines.slots import SlotPool

log = logging.getLogger(__name__)

#: SamplingParams fields the OpenAI API itself defines.
OPENAI_SAMPLING = frozenset(
    {"temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty"}
)
#: Extensions (our field -> request body key) that vLLM's server accepts.
VLLM_EXTRA_SAMPLING: Mapping[str, str] = {
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "ignore_eos": "ignore_eos",
}
#: Extensions that llama-cpp-python's server accepts.
LLAMACPP_EXTRA_SAMPLING: Mapping[str, str] = {
    "top_k": "top_k",
    "repetition_penalty": "repeat_penalty",
}


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        if self.input_per_million < 0 or self.output_per_million < 0:
            raise ValueError("prices must be >= 0")


@dataclass(frozen=True)
class OpenAIConfig:
    """Settings of one model behind an OpenAI-compatible endpoint."""

    base_url: str  # up to and including the version, e.g. "https://host/v1"
    model: str  # the upstream's model name
    served_name: str = ""  # the name clients use; defaults to `model`
    #: Name of the environment variable holding the API key; empty: no auth.
    api_key_env: str = ""
    timeout_s: float = 60.0  # per read (between chunks) and per write
    connect_timeout_s: float = 5.0
    max_concurrent_requests: int = 16
    max_queued_requests: int = 64
    context_window: int = 8192
    default_max_tokens: int = 512
    #: Upstream model name -> price; the entry for `model` lands in ModelInfo.
    prices: Mapping[str, Price] = field(default_factory=dict)
    #: Non-OpenAI sampling fields the upstream accepts (our name -> body key),
    #: e.g. VLLM_EXTRA_SAMPLING or LLAMACPP_EXTRA_SAMPLING.
    extra_sampling: Mapping[str, str] = field(default_factory=dict)
    supports_prompt: bool = True  # whether the upstream has /completions
    include_usage: bool = True  # send stream_options.include_usage

    def __post_init__(self) -> None:
        if not self.base_url:
            raise ValueError("openai: base_url is required")
        if not self.model:
            raise ValueError("openai: model is required")
        if self.max_concurrent_requests < 1:
            raise ValueError("openai: max_concurrent_requests must be at least 1")
        if self.max_queued_requests < 0:
            raise ValueError("openai: max_queued_requests must be >= 0")
        if self.context_window < 2:
            raise ValueError("openai: context_window must be at least 2")
        if self.default_max_tokens < 1:
            raise ValueError("openai: default_max_tokens must be at least 1")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("openai: timeouts must be positive")
        unknown = set(self.extra_sampling) - {"top_k", "repetition_penalty", "ignore_eos"}
        if unknown:
            raise ValueError(f"openai: unknown extra_sampling fields {sorted(unknown)}")

    @property
    def name(self) -> str:
        return self.served_name or self.model


def estimate_tokens(request: GenerationRequest) -> int:
    """About 4 characters per token, plus 4 tokens per message for the template."""
    if request.messages is not None:
        chars = sum(len(m.content) + len(m.role) for m in request.messages)
        return math.ceil(chars / 4) + 4 * len(request.messages) + 3
    return max(1, math.ceil(len(request.prompt or "") / 4))


@dataclass(eq=False)
class _Job:
    request_id: str
    producer: asyncio.Task[None] | None = None
    items: asyncio.Queue[tuple[Any, ...]] = field(default_factory=asyncio.Queue)
    aborted: bool = False


class OpenAIEngine(Engine):
    """An Engine over an OpenAI-compatible HTTP endpoint (streaming)."""

    def __init__(
        self,
        config: OpenAIConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = config
        self._transport = transport  # tests may inject one; None: real network
        self._client: httpx.AsyncClient | None = None
        self._jobs: dict[str, _Job] = {}
        self._slots: SlotPool[_Job] = SlotPool(
            config.max_concurrent_requests,
            config.max_queued_requests,
            exhausted_message=lambda waiting: (
                f"model {config.name} already has {waiting} requests waiting; retry later"
            ),
        )
        price = config.prices.get(config.model)
        self._info = ModelInfo(
            name=config.name,
            backend="openai",
            model_id=config.model,
            context_window=config.context_window,
            default_max_tokens=min(config.default_max_tokens, config.context_window - 1),
            adapters=(),
            usd_per_million_input_tokens=price.input_per_million if price else None,
            usd_per_million_output_tokens=price.output_per_million if price else None,
            supported_sampling_params=OPENAI_SAMPLING | frozenset(config.extra_sampling),
            max_concurrency=config.max_concurrent_requests,
            max_queued_requests=config.max_queued_requests,
            supports_chat=True,
            supports_prompt=config.supports_prompt,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    # Lifecycle

    async def start(self) -> None:
        if self._client is not None:
            return
        c = self._config
        headers = {"Accept": "text/event-stream"}
        if c.api_key_env:
            key = os.environ.get(c.api_key_env, "")
            if not key:
                log.error(
                    "openai: the environment variable of the API key is not set",
                    extra={"api_key_env": c.api_key_env},
                )
                raise Unavailable("the upstream API key is not configured")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=c.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(c.timeout_s, connect=c.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=c.max_concurrent_requests,
                max_keepalive_connections=c.max_concurrent_requests,
            ),
            transport=self._transport,
        )
        log.info(
            "openai: model served upstream",
            extra={"model": c.name, "model_id": c.model, "upstream": _host(c.base_url)},
        )

    async def stop(self) -> None:
        self._slots.fail_all_waiting("engine stopped")
        for job in self._slots.holders():
            await self._abort_running(job)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def check_health(self) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            response = await client.get("models", timeout=self._config.connect_timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def queue_depth(self) -> int:
        return self._slots.queued

    def in_flight(self) -> int:
        return self._slots.in_flight

    async def count_tokens(self, request: GenerationRequest) -> int:
        self._check_input(request)
        return estimate_tokens(request)

    # Validation

    def _check_input(self, request: GenerationRequest) -> None:
        if (request.messages is None) == (request.prompt is None):
            raise InvalidArgument("exactly one of messages or prompt is required")
        if request.messages is not None and not request.messages:
            raise InvalidArgument("messages is empty")
        if request.prompt is not None and not self._config.supports_prompt:
            raise InvalidArgument(f"model {self._info.name!r} takes conversations only")

    def _max_tokens(self, requested: int | None) -> int:
        limit = self._info.context_window
        if requested is None:
            return self._info.default_max_tokens
        if requested <= 0:
            raise InvalidArgument("max_tokens must be at least 1")
        if requested >= limit:
            raise InvalidArgument(
                f"max_tokens ({requested}) leaves no room for the prompt in the "
                f"context window of {self._info.name} ({limit})"
            )
        return requested

    def _sampling_body(self, s: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(s, name)
            if value is not None:
                body[name] = value
        if s.stop:
            body["stop"] = list(s.stop)
        extra = self._config.extra_sampling
        if s.top_k is not None:
            body[extra["top_k"]] = s.top_k
        if s.repetition_penalty is not None:
            body[extra["repetition_penalty"]] = s.repetition_penalty
        if s.ignore_eos:
            body[extra["ignore_eos"]] = True
        return body

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        self._check_input(request)
        if request.adapter:
            raise InvalidArgument(
                f"unknown adapter {request.adapter!r} for model {self._info.name!r}"
            )
        s = request.sampling
        unsupported = s.set_fields() - self._info.supported_sampling_params
        if unsupported:
            raise InvalidArgument(
                f"model {self._info.name!r} does not support: {', '.join(sorted(unsupported))}"
            )
        max_tokens = self._max_tokens(s.max_tokens)
        body: dict[str, Any] = {"model": self._config.model, "stream": True}
        body["max_tokens"] = max_tokens
        if self._config.include_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(self._sampling_body(s))
        if request.messages is not None:
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
            return "chat/completions", body
        body["prompt"] = request.prompt
        return "completions", body

    # Slots

    async def _abort_running(self, job: _Job) -> None:
        job.aborted = True
        producer = job.producer
        if producer is not None and not producer.done():
            producer.cancel()
            await asyncio.wait({producer})
        self._slots.release(job)
        job.items.put_nowait(("aborted",))

    async def abort(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is None:
            return
        if self._slots.fail_waiting(job, "request aborted"):
            return
        if self._slots.holds(job):
            await self._abort_running(job)

    # Generation

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        return self._generate(request)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        client = self._client
        if client is None:
            raise Unavailable("the engine is not started")
        if request.request_id in self._jobs:
            raise InvalidArgument("a request with this id is already running")
        path, body = self._body(request)
        chat = "messages" in body

        arrived = time.monotonic()
        job = _Job(request.request_id)
        self._jobs[job.request_id] = job
        try:
            await self._slots.acquire(job)  # may raise ResourceExhausted
            state = _StreamState(request, chat, arrived, time.monotonic())
            job.producer = asyncio.create_task(self._produce(client, job, path, body))
            while True:
                item = await job.items.get()
                kind = item[0]
                if kind == "chunk":
                    for delta in state.feed(item[1]):
                        yield delta
                elif kind == "end":
                    yield state.finish()
                    return
                elif kind == "aborted":
                    raise Unavailable("request aborted")
                else:
                    error: AtalayaError = item[1]
                    raise error
        finally:
            if self._jobs.get(job.request_id) is job:
                del self._jobs[job.request_id]
            producer = job.producer
            if producer is not None and not producer.done():
                producer.cancel()  # closes the HTTP stream
                await asyncio.wait({producer})
            self._slots.release(job)

    async def _produce(
        self, client: httpx.AsyncClient, job: _Job, path: str, body: dict[str, Any]
    ) -> None:
        """Reads the SSE stream into job.items; cancelling it closes the stream."""
        put = job.items.put_nowait
        try:
            await self._stream(client, job, path, body)
        except httpx.TimeoutException:
            log.warning(
                "openai: upstream timed out", extra={"upstream": _host(self._config.base_url)}
            )
            put(("error", Unavailable("the upstream model timed out")))
        except httpx.HTTPError as exc:
            log.warning(
                "openai: upstream unreachable",
                extra={"upstream": _host(self._config.base_url), "error_type": type(exc).__name__},
            )
            put(("error", Unavailable("the upstream model is unreachable")))
        except ValueError:
            log.warning("openai: upstream sent a malformed stream")
            put(("error", Unavailable("the upstream model sent a malformed answer")))

    async def _stream(
        self, client: httpx.AsyncClient, job: _Job, path: str, body: dict[str, Any]
    ) -> None:
        put = job.items.put_nowait
        for attempt in (1, 2):
            outcome: tuple[Any, ...] = ("end",)
            answered = False
            try:
                async with client.stream("POST", path, json=body) as response:
                    answered = True
                    if response.status_code != 200:
                        await response.aread()
                        outcome = ("error", _http_error(response))
                    else:
                        async for line in response.aiter_lines():
                            if not line.startswith("data:"):
                                continue  # comments, event names, keep-alives, blank lines
                            data = line[5:].strip()
                            if data == "[DONE]":
                                break
                            chunk = json.loads(data)
                            if not isinstance(chunk, dict):
                                raise ValueError("chunk is not an object")
                            if "error" in chunk:
                                log.warning(
                                    "openai: upstream error in stream",
                                    extra={"upstream_error": _brief(chunk["error"])},
                                )
                                outcome = (
                                    "error",
                                    Unavailable("the upstream model failed while generating"),
                                )
                                break
                            put(("chunk", chunk))
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # A pooled keep-alive connection the server had already dropped
                # fails before any answer: sending once more on a new one is safe.
                if attempt == 2 or answered:
                    raise
                log.info("openai: stale upstream connection; retrying once")
                continue
            # Reported once the response is closed, so the connection goes back
            # to the pool before the consumer moves on.
            put(outcome)
            return


class _StreamState:
    """What the chunks of one stream said so far."""

    def __init__(
        self, request: GenerationRequest, chat: bool, arrived: float, slot_at: float
    ) -> None:
        self._request = request
        self._chat = chat
        self._arrived = arrived
        self._slot_at = slot_at
        self._first_at: float | None = None
        self._chunks = 0
        self._reason: str | None = None
        self._stop_reason: Any = None
        self._usage: Mapping[str, Any] | None = None

    def feed(self, chunk: Mapping[str, Any]) -> list[Delta]:
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = chunk["usage"]
        deltas = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            text = _choice_text(choice, self._chat)
            if text:
                if self._first_at is None:
                    self._first_at = time.monotonic()
                self._chunks += 1
                deltas.append(Delta(text=text, token_count=1))
            if choice.get("finish_reason"):
                self._reason = str(choice["finish_reason"])
                self._stop_reason = choice.get("stop_reason")
        return deltas

    def finish(self) -> Finish:
        if self._reason is None:
            raise Unavailable("the upstream stream ended without a finish reason")
        reason: FinishReason = "length" if self._reason == "length" else "stop"
        input_tokens, output_tokens = _usage(self._usage, self._request, self._chunks)
        stop = self._stop_reason
        known_stop = (
            reason == "stop" and isinstance(stop, str) and stop in self._request.sampling.stop
        )
        return Finish(
            reason=reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            stop_sequence=stop if known_stop else "",
            cached_input_tokens=_cached_tokens(self._usage),
            queue_s=self._slot_at - self._arrived,
            prefill_s=max(0.0, (self._first_at or time.monotonic()) - self._slot_at),
        )


def _choice_text(choice: Mapping[str, Any], chat: bool) -> str:
    if chat:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, Mapping) else None
    else:
        text = choice.get("text")
    return text if isinstance(text, str) else ""


def _usage(
    usage: Mapping[str, Any] | None, request: GenerationRequest, chunks: int
) -> tuple[int, int]:
    prompt_tokens = usage.get("prompt_tokens") if usage else None
    completion_tokens = usage.get("completion_tokens") if usage else None
    return (
        prompt_tokens if isinstance(prompt_tokens, int) else estimate_tokens(request),
        completion_tokens if isinstance(completion_tokens, int) else chunks,
    )


def _cached_tokens(usage: Mapping[str, Any] | None) -> int:
    details = usage.get("prompt_tokens_details") if usage else None
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return cached if isinstance(cached, int) else 0


def _http_error(response: httpx.Response) -> AtalayaError:
    status = response.status_code
    log.warning(
        "openai: upstream answered an HTTP error",
        extra={"http_status": status, "body": _brief(response.text)},
    )
    if status in (400, 413, 422):
        return InvalidArgument(
            "the upstream model rejected the request (for example, the prompt is "
            "longer than its context window or a parameter is out of range)"
        )
    if status == 429:
        return ResourceExhausted("the upstream model is rate limited; retry later")
    return Unavailable(f"the upstream model is unavailable (HTTP {status})")


def _brief(value: Any, limit: int = 200) -> str:
    """A short form of an upstream error for logs (messages only, capped)."""
    if isinstance(value, Mapping):
        value = value.get("message", value.get("error", ""))
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _host(url: str) -> str:
    return httpx.URL(url).host or "?"

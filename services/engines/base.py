"""The engine interface and its value types.

An engine serves one model. `generate` is an async generator: zero or more
`Delta`s, then exactly one `Finish`. Closing the generator early (the consumer
was cancelled, or called `aclose()`) aborts the engine request and frees its
slot at once; `abort(request_id)` does the same from outside. Engines raise the
domain errors of services.common.errors: InvalidArgument for inputs they cannot
take, ResourceExhausted when their bounded queue is full, Unavailable when the
model is not loaded or the engine failed."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from services.common.chat import ChatMessage

BackendKind = Literal["vllm", "llamacpp", "openai", "sim"]
FinishReason = Literal["stop", "length"]

#: Names of SamplingParams fields, as ModelInfo.supported_sampling_params lists them.
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "stop",
    "seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "ignore_eos",
)


@dataclass(frozen=True)
class SamplingParams:
    """None means the engine's default (see the proto's documentation)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    ignore_eos: bool = False

    def set_fields(self) -> set[str]:
        """Names of the fields the caller set (non-default values)."""
        out = {
            name
            for name in SAMPLING_FIELDS
            if name not in ("stop", "ignore_eos") and getattr(self, name) is not None
        }
        if self.stop:
            out.add("stop")
        if self.ignore_eos:
            out.add("ignore_eos")
        return out


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    #: Exactly one of messages (rendered with the chat template) or prompt (raw).
    messages: Sequence[ChatMessage] | None = None
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None  # LoRA adapter name


@dataclass(frozen=True)
class Delta:
    text: str  # whole UTF-8 characters
    token_count: int = 1


@dataclass(frozen=True)
class Finish:
    reason: FinishReason
    input_tokens: int
    output_tokens: int
    stop_sequence: str = ""
    cached_input_tokens: int = 0
    queue_s: float = 0.0  # arrival to engine slot
    prefill_s: float = 0.0  # slot to first token


Event = Delta | Finish


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backend: BackendKind
    model_id: str  # weights: GGUF path, HF id, upstream model name
    context_window: int
    default_max_tokens: int
    simulator: bool = False  # True only for the sim backend: its text is synthetic
    adapters: tuple[str, ...] = ()
    usd_per_million_input_tokens: float | None = None
    usd_per_million_output_tokens: float | None = None
    supported_sampling_params: frozenset[str] = frozenset(SAMPLING_FIELDS)
    max_concurrency: int = 1
    max_queued_requests: int = 0
    supports_chat: bool = True
    supports_prompt: bool = True


def cost_usd(info: ModelInfo, input_tokens: int, output_tokens: int) -> float | None:
    """What a request cost at the model's price; None for a model without one."""
    if info.usd_per_million_input_tokens is None or info.usd_per_million_output_tokens is None:
        return None
    return (
        input_tokens * info.usd_per_million_input_tokens
        + output_tokens * info.usd_per_million_output_tokens
    ) / 1_000_000


class Engine(abc.ABC):
    """One model behind the interface every backend implements."""

    @property
    @abc.abstractmethod
    def info(self) -> ModelInfo: ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model / connect. Blocking work goes to a thread."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Abort what runs and release the model."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Deltas, then one Finish. Validation errors are raised before the first
        event; engine failures mid-stream raise Unavailable."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop `request_id` if it is queued or running; no-op otherwise."""

    @abc.abstractmethod
    async def check_health(self) -> bool:
        """True when the engine can serve requests now."""

    @abc.abstractmethod
    async def count_tokens(self, request: GenerationRequest) -> int:
        """Prompt tokens the request takes (chat template applied)."""

    def queue_depth(self) -> int:
        """Requests waiting for a slot (an autoscaling signal)."""
        return 0

    def in_flight(self) -> int:
        """Requests holding a slot now."""
        return 0

"""What the gateway core needs of the other services, as small interfaces with
domain types (no grpc). services.gateway.clients implements them over gRPC;
tests implement them in memory. Every method takes `timeout_s`, the time left
of the turn's deadline (or less), and raises services.common.errors on failure."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

Messages = Sequence[tuple[str, str]]  # (role, content)


@dataclass(frozen=True)
class GuardResult:
    unsafe: bool
    codes: tuple[str, ...] = ()
    decided_by: str = ""  # llama_guard | semantic | pii
    policy: str = ""
    fail_mode_applied: bool = False
    stand_in: bool = False
    reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


class _Upstream(abc.ABC):  # noqa: B024 - a base for the hook below
    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Guard(_Upstream):
    @abc.abstractmethod
    async def classify(
        self, request_id: str, messages: Messages, *, policy: str, timeout_s: float
    ) -> GuardResult:
        """The verdict on the last message (its role is the one checked)."""


@dataclass(frozen=True)
class Recalled:
    text: str
    score: float


@dataclass(frozen=True)
class StoredTurn:
    request_id: str
    user_id: str
    session_id: str
    user: str
    assistant: str
    metadata: Mapping[str, str]


class Memory(_Upstream):
    @abc.abstractmethod
    async def history(
        self, user_id: str, session_id: str, turns: int, *, timeout_s: float
    ) -> list[tuple[str, str]]:
        """The session's last turns as (user, assistant) pairs, oldest first;
        empty for a new session."""

    @abc.abstractmethod
    async def recall(
        self, user_id: str, text: str, k: int, min_score: float, *, timeout_s: float
    ) -> list[Recalled]: ...

    @abc.abstractmethod
    async def store_turn(self, turn: StoredTurn, *, remember: bool, timeout_s: float) -> None:
        """Append the turn to the session; with `remember`, also keep the user's
        message as a long-term memory. Idempotent on request_id."""

    @abc.abstractmethod
    async def record_feedback(
        self, user_id: str, turn_request_id: str, score: float, comment: str, *, timeout_s: float
    ) -> bool:
        """True when created, False when it replaced earlier feedback."""


@dataclass(frozen=True)
class ModelFacts:
    name: str
    backend: str  # vllm | llamacpp | openai | sim
    context_window: int
    simulator: bool = False
    usd_per_million_input: float | None = None
    usd_per_million_output: float | None = None


@dataclass(frozen=True)
class GenDelta:
    text: str
    token_count: int


@dataclass(frozen=True)
class GenDone:
    finish_reason: str  # stop | length
    input_tokens: int
    output_tokens: int
    model: str
    backend: str
    cost_usd: float | None = None
    phases_ms: Mapping[str, float] = field(default_factory=dict)


class Generator(_Upstream):
    @abc.abstractmethod
    async def model(self, name: str, *, timeout_s: float) -> ModelFacts:
        """Facts about a model ('' is the default one); NotFound if unknown."""

    @abc.abstractmethod
    def generate(
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
        """Deltas, then one GenDone. Closing the iterator cancels the call, which
        aborts generation upstream."""

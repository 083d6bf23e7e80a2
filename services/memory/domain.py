"""The memory service's domain types and the two interfaces its core depends on
(a store and an embedder). No gRPC, no SQL."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.common.chat import ChatMessage
from services.common.embedder import Vector


@dataclass(frozen=True)
class SessionTurn:
    """One turn of a session as stored: its messages, in order, and their place
    in the session."""

    request_id: str
    index: int
    messages: list[ChatMessage]
    metadata: dict[str, str]
    created_at: datetime


@dataclass(frozen=True)
class AppendResult:
    turn_index: int
    created: bool


@dataclass(frozen=True)
class History:
    turns: list[SessionTurn]  # oldest first
    total_turns: int


@dataclass(frozen=True)
class NewMemory:
    text: str
    metadata: dict[str, str] = field(default_factory=dict)
    session_id: str | None = None


@dataclass(frozen=True)
class Recalled:
    memory_id: str
    text: str
    metadata: dict[str, str]
    score: float  # cosine similarity
    session_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class ForgetCounts:
    sessions: int = 0
    turns: int = 0
    memories: int = 0
    feedback: int = 0


@dataclass(frozen=True)
class FeedbackRecord:
    user_id: str
    session_id: str
    turn_request_id: str
    score: float
    comment: str
    recorded_at: datetime
    messages: list[ChatMessage]
    metadata: dict[str, str]


class MemoryStore(abc.ABC):
    """Durable storage. Every method is confined to the tenant it names and, but for
    forget_tenant, to the user it names. A method returns only after its write is
    committed."""

    @abc.abstractmethod
    async def append_turn(
        self,
        tenant: str,
        user_id: str,
        session_id: str,
        request_id: str,
        *,
        messages: Sequence[ChatMessage],
        metadata: dict[str, str],
    ) -> AppendResult: ...

    @abc.abstractmethod
    async def history(
        self, tenant: str, user_id: str, session_id: str, last_n: int
    ) -> History | None:
        """None when the user has no such session."""

    @abc.abstractmethod
    async def memory_ids_for_request(self, tenant: str, user_id: str, request_id: str) -> list[str]:
        """Ids stored by an earlier Remember with this request id, in order."""

    @abc.abstractmethod
    async def add_memories(
        self,
        tenant: str,
        user_id: str,
        request_id: str,
        memories: Sequence[NewMemory],
        vectors: Vector,
    ) -> list[str]: ...

    @abc.abstractmethod
    async def search(
        self, tenant: str, user_id: str, query: Vector, k: int, *, exact: bool | None = None
    ) -> list[Recalled]:
        """Top k by cosine similarity, best first. exact=None lets the store choose."""

    @abc.abstractmethod
    async def forget_user(self, tenant: str, user_id: str) -> ForgetCounts: ...

    @abc.abstractmethod
    async def forget_session(self, tenant: str, user_id: str, session_id: str) -> ForgetCounts: ...

    @abc.abstractmethod
    async def forget_tenant(self, tenant: str) -> ForgetCounts:
        """Every row of the tenant, of every user."""

    @abc.abstractmethod
    async def record_feedback(
        self, tenant: str, user_id: str, turn_request_id: str, score: float, comment: str
    ) -> bool | None:
        """True if new, False if it replaced earlier feedback, None if no such turn."""

    @abc.abstractmethod
    def export_feedback(
        self, tenant: str, since: datetime | None, user_id: str | None, include_messages: bool
    ) -> AsyncIterator[FeedbackRecord]:
        """The tenant's feedback, or one user's (user_id), oldest first."""

    @abc.abstractmethod
    async def healthy(self) -> bool: ...

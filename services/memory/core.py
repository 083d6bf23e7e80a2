"""Memory core: authorization, validation, idempotency and the Recall pipeline. No
gRPC, no SQL: the store and the embedder arrive through the constructor, the
caller's identity with each call (its tenant scopes everything the call reads or
writes; a request body never names a tenant)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from services.common import semconv
from services.common.chat import ChatMessage
from services.common.embedder import Embedder, Vector
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.common.identity import ANONYMOUS, Identity
from services.common.telemetry import tracer
from services.common.validation import (
    require_count,
    require_id,
    require_messages,
    require_metadata,
    require_range,
    require_text,
)
from services.memory.config import MemorySettings
from services.memory.domain import (
    AppendResult,
    FeedbackRecord,
    ForgetCounts,
    History,
    MemoryStore,
    NewMemory,
    Recalled,
)


@dataclass(frozen=True)
class RememberResult:
    memory_ids: list[str]
    input_tokens: int
    embed_s: float
    store_s: float


@dataclass(frozen=True)
class RecallResult:
    memories: list[Recalled]
    input_tokens: int
    embed_s: float
    search_s: float


def usable_tenant(caller: Identity) -> None:
    """The caller's tenant keys its rows: an identifier like the others (it comes
    from credentials or a forwarding peer, so it is checked like a request's)."""
    require_id("tenant", caller.tenant)


def may_act_for(caller: Identity, user_id: str) -> None:
    """Reads and writes of a user's data: that user, or a caller that may name its
    users (admin or on-behalf-of scope; the anonymous caller of a deployment with
    authentication off holds on-behalf-of)."""
    usable_tenant(caller)
    if not caller.may_act_for(user_id):
        raise PermissionDenied("not allowed to act for this user")


def may_erase(caller: Identity, user_id: str) -> None:
    """Erasure of a user's data: that user or an admin. On-behalf-of is not enough
    (a service acting for its users reads and writes for them, it does not erase
    them), but for the anonymous caller of a deployment with authentication off,
    which may do everything it did before identities existed."""
    usable_tenant(caller)
    if not (caller.user == user_id or caller.is_admin or caller == ANONYMOUS):
        raise PermissionDenied("erasure needs the user's own identity or the admin scope")


def may_export(caller: Identity, user_id: str | None) -> None:
    """Feedback export: an admin (the tenant's feedback, or one user's), or a user
    exporting their own; the anonymous caller as before."""
    usable_tenant(caller)
    own = user_id is not None and caller.user == user_id
    if not (own or caller.is_admin or caller == ANONYMOUS):
        raise PermissionDenied("export needs the admin scope or the user's own identity")


def may_erase_tenant(caller: Identity) -> None:
    usable_tenant(caller)
    if not caller.is_admin:
        raise PermissionDenied("erasing a tenant needs the admin scope")


class MemoryCore:
    def __init__(self, store: MemoryStore, embedder: Embedder, settings: MemorySettings) -> None:
        self._store = store
        self._embedder = embedder
        self._s = settings

    async def append_turn(
        self,
        *,
        caller: Identity,
        user_id: str,
        session_id: str,
        request_id: str,
        messages: Sequence[ChatMessage],
        metadata: dict[str, str],
    ) -> AppendResult:
        require_id("user_id", user_id)
        may_act_for(caller, user_id)
        require_id("session_id", session_id)
        require_id("request_id", request_id)
        require_messages(
            "messages",
            messages,
            max_messages=self._s.max_messages_per_turn,
            max_chars=self._s.max_message_chars,
        )
        require_metadata("metadata", metadata)
        return await self._store.append_turn(
            caller.tenant, user_id, session_id, request_id, messages=messages, metadata=metadata
        )

    async def history(
        self, *, caller: Identity, user_id: str, session_id: str, last_n_turns: int
    ) -> History:
        require_id("user_id", user_id)
        may_act_for(caller, user_id)
        require_id("session_id", session_id)
        n = last_n_turns or self._s.default_history_turns
        require_range("last_n_turns", n, minimum=1, maximum=self._s.max_history_turns)
        history = await self._store.history(caller.tenant, user_id, session_id, n)
        if history is None:
            raise NotFound("no such session for this user")
        return history

    async def remember(
        self, *, caller: Identity, user_id: str, request_id: str, memories: Sequence[NewMemory]
    ) -> RememberResult:
        require_id("user_id", user_id)
        may_act_for(caller, user_id)
        require_id("request_id", request_id)
        require_count("memories", memories, minimum=1, maximum=self._s.max_memories_per_call)
        for i, m in enumerate(memories):
            require_text(f"memories[{i}].text", m.text, max_chars=self._s.max_memory_chars)
            require_metadata(f"memories[{i}].metadata", m.metadata)
            if m.session_id is not None:
                require_id(f"memories[{i}].session_id", m.session_id)
        with tracer().start_as_current_span(semconv.SPAN_MEMORY_REMEMBER) as span:
            span.set_attribute(semconv.ATALAYA_TEXT_COUNT, len(memories))
            started = time.perf_counter()
            existing = await self._store.memory_ids_for_request(caller.tenant, user_id, request_id)
            if existing:  # a retry of a Remember that was stored already
                return RememberResult(existing, 0, 0.0, time.perf_counter() - started)
            vectors, tokens = await self._embed([m.text for m in memories])
            embedded = time.perf_counter()
            ids = await self._store.add_memories(
                caller.tenant, user_id, request_id, memories, vectors
            )
            return RememberResult(ids, tokens, embedded - started, time.perf_counter() - embedded)

    async def recall(
        self,
        *,
        caller: Identity,
        user_id: str,
        k: int,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        min_score: float | None = None,
    ) -> RecallResult:
        require_id("user_id", user_id)
        may_act_for(caller, user_id)
        require_range("k", k, minimum=1, maximum=self._s.max_recall_k)
        if min_score is not None:
            require_range("min_score", min_score, minimum=-1.0, maximum=1.0)
        if (text is None) == (vector is None):
            raise InvalidArgument("exactly one of text or embedding is required")
        with tracer().start_as_current_span(semconv.SPAN_MEMORY_RECALL) as span:
            span.set_attribute(semconv.ATALAYA_MEMORY_K, k)
            started = time.perf_counter()
            tokens = 0
            if text is not None:
                span.set_attribute(semconv.ATALAYA_MEMORY_QUERY_KIND, "text")
                require_text("text", text, max_chars=self._s.max_memory_chars)
                vectors, tokens = await self._embed([text])
                query = vectors[0]
            else:
                span.set_attribute(semconv.ATALAYA_MEMORY_QUERY_KIND, "vector")
                query = self._query_vector(vector or [])
            embedded = time.perf_counter()
            with tracer().start_as_current_span(semconv.SPAN_MEMORY_SEARCH):
                found = await self._store.search(caller.tenant, user_id, query, k)
            if min_score is not None:
                found = [m for m in found if m.score >= min_score]
            span.set_attribute(semconv.ATALAYA_MEMORY_RESULTS, len(found))
            return RecallResult(found, tokens, embedded - started, time.perf_counter() - embedded)

    def _query_vector(self, values: Sequence[float]) -> Vector:
        dim = self._s.embedding_dimension
        if len(values) != dim:
            raise InvalidArgument(f"embedding has {len(values)} values, the store uses {dim}")
        query = np.asarray(values, dtype=np.float32)
        norm = float(np.linalg.norm(query))
        if not np.isfinite(norm) or norm == 0.0:
            raise InvalidArgument("embedding must be finite and non-zero")
        return query / norm

    async def _embed(self, texts: list[str]) -> tuple[Vector, int]:
        with tracer().start_as_current_span(semconv.SPAN_MEMORY_EMBED):
            vectors, tokens = await self._embedder.embed(texts)
        if vectors.shape != (len(texts), self._s.embedding_dimension):
            raise FailedPrecondition(
                f"embedding service returned vectors of shape {vectors.shape}, "
                f"the store uses dimension {self._s.embedding_dimension}"
            )
        return vectors, tokens

    async def forget(
        self, *, caller: Identity, user_id: str, session_id: str | None = None
    ) -> ForgetCounts:
        require_id("user_id", user_id)
        may_erase(caller, user_id)
        if session_id is None:
            return await self._store.forget_user(caller.tenant, user_id)
        require_id("session_id", session_id)
        return await self._store.forget_session(caller.tenant, user_id, session_id)

    async def forget_tenant(self, *, caller: Identity, confirm_tenant: str) -> ForgetCounts:
        """Every row of the caller's tenant. `confirm_tenant` must spell it out."""
        may_erase_tenant(caller)
        if confirm_tenant != caller.tenant:
            raise InvalidArgument("confirm_tenant must name the caller's tenant")
        return await self._store.forget_tenant(caller.tenant)

    async def record_feedback(
        self,
        *,
        caller: Identity,
        user_id: str,
        turn_request_id: str,
        score: float | None,
        comment: str,
    ) -> bool:
        require_id("user_id", user_id)
        may_act_for(caller, user_id)
        require_id("turn_request_id", turn_request_id)
        if score is None:
            raise InvalidArgument("score is required")
        require_range("score", score, minimum=0.0, maximum=1.0)
        require_text("comment", comment, max_chars=self._s.max_comment_chars, allow_empty=True)
        created = await self._store.record_feedback(
            caller.tenant, user_id, turn_request_id, score, comment
        )
        if created is None:
            raise NotFound("no turn with that request id for this user")
        return created

    def export_feedback(
        self,
        *,
        caller: Identity,
        since: datetime | None,
        user_id: str | None,
        include_messages: bool,
    ) -> AsyncIterator[FeedbackRecord]:
        """The caller's tenant's feedback, or one user's."""
        if user_id is not None:
            require_id("user_id", user_id)
        may_export(caller, user_id)
        return self._store.export_feedback(caller.tenant, since, user_id, include_messages)

    async def ready(self) -> bool:
        return await self._store.healthy()

"""Test doubles typed against the real interfaces: a deterministic embedding
backend and embedder (hashed bag of words, so texts sharing words are close), and
an in-memory MemoryStore for core tests."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import numpy as np

from services.common.chat import ChatMessage
from services.common.embedder import Embedder, Vector
from services.embedding.backends.base import EmbeddingBackend, Encoded
from services.memory.domain import (
    AppendResult,
    FeedbackRecord,
    ForgetCounts,
    History,
    MemoryStore,
    NewMemory,
    Recalled,
    SessionTurn,
)

DIM = 384
_WORD = re.compile(r"\w+")


def hashed_vector(text: str, dim: int = DIM) -> np.ndarray:
    vec = np.zeros(dim, dtype=np.float32)
    for word in _WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vec[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    if not vec.any():
        vec[0] = 1.0
    return vec


class HashEmbeddingBackend(EmbeddingBackend):
    """Deterministic, fast; records the batch sizes it was called with."""

    def __init__(self, name: str = "hash-test", dim: int = DIM, fail_on: str | None = None) -> None:
        self.name = name
        self._dim = dim
        self.loaded = False
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self._fail_on = fail_on

    def load(self) -> None:
        self.loaded = True

    @property
    def dimension(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        return 256

    def encode(self, texts: list[str]) -> Encoded:
        self.batches.append(len(texts))
        self.threads.add(threading.current_thread().name)
        if self._fail_on is not None and self._fail_on in texts:
            raise RuntimeError("backend exploded (test)")
        vectors = np.stack([hashed_vector(t, self._dim) for t in texts])
        tokens = np.array([len(_WORD.findall(t)) for t in texts], dtype=np.int64)
        return Encoded(vectors=vectors, token_counts=tokens)


class HashEmbedder(Embedder):
    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self.calls = 0

    async def embed(self, texts: Sequence[str]) -> tuple[Vector, int]:
        self.calls += 1
        vectors = np.stack([hashed_vector(t, self.dim) for t in texts])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors.astype(np.float32), sum(len(_WORD.findall(t)) for t in texts)


class InMemoryStore(MemoryStore):
    """The MemoryStore contract in dictionaries, for core tests; every key starts
    with the tenant."""

    def __init__(self) -> None:
        self.turns: dict[tuple[str, str, str], list[SessionTurn]] = {}
        self.memories: dict[tuple[str, str], list[tuple[str, str, NewMemory, Vector]]] = {}
        self.feedback: dict[tuple[str, str, str], tuple[str, float, str]] = {}
        self.up = True

    async def append_turn(
        self,
        tenant: str,
        user_id: str,
        session_id: str,
        request_id: str,
        *,
        messages: Sequence[ChatMessage],
        metadata: dict[str, str],
    ) -> AppendResult:
        turns = self.turns.setdefault((tenant, user_id, session_id), [])
        for t in turns:
            if t.request_id == request_id:
                return AppendResult(t.index, created=False)
        turns.append(
            SessionTurn(request_id, len(turns), list(messages), metadata, datetime.now(UTC))
        )
        return AppendResult(len(turns) - 1, created=True)

    async def history(
        self, tenant: str, user_id: str, session_id: str, last_n: int
    ) -> History | None:
        turns = self.turns.get((tenant, user_id, session_id))
        if turns is None:
            return None
        return History(turns=turns[-last_n:], total_turns=len(turns))

    async def memory_ids_for_request(self, tenant: str, user_id: str, request_id: str) -> list[str]:
        rows = self.memories.get((tenant, user_id), [])
        return [mid for mid, rid, _, _ in rows if rid == request_id]

    async def add_memories(
        self,
        tenant: str,
        user_id: str,
        request_id: str,
        memories: Sequence[NewMemory],
        vectors: Vector,
    ) -> list[str]:
        rows = self.memories.setdefault((tenant, user_id), [])
        ids = []
        for m, v in zip(memories, vectors, strict=True):
            mid = f"{tenant}-{user_id}-{len(rows)}"
            rows.append((mid, request_id, m, v))
            ids.append(mid)
        return ids

    async def search(
        self, tenant: str, user_id: str, query: Vector, k: int, *, exact: bool | None = None
    ) -> list[Recalled]:
        scored = [
            Recalled(
                mid, m.text, m.metadata, float(np.dot(v, query)), m.session_id, datetime.now(UTC)
            )
            for mid, _, m, v in self.memories.get((tenant, user_id), [])
        ]
        return sorted(scored, key=lambda r: r.score, reverse=True)[:k]

    async def forget_user(self, tenant: str, user_id: str) -> ForgetCounts:
        sessions = [key for key in self.turns if key[:2] == (tenant, user_id)]
        turns = sum(len(self.turns.pop(key)) for key in sessions)
        memories = len(self.memories.pop((tenant, user_id), []))
        feedback = [key for key in self.feedback if key[:2] == (tenant, user_id)]
        for key in feedback:
            del self.feedback[key]
        return ForgetCounts(len(sessions), turns, memories, len(feedback))

    async def forget_session(self, tenant: str, user_id: str, session_id: str) -> ForgetCounts:
        turns = self.turns.pop((tenant, user_id, session_id), None)
        mine = self.memories.get((tenant, user_id), [])
        kept = [r for r in mine if r[2].session_id != session_id]
        if mine:
            self.memories[(tenant, user_id)] = kept
        feedback = [
            k for k, v in self.feedback.items() if k[:2] == (tenant, user_id) and v[0] == session_id
        ]
        for key in feedback:
            del self.feedback[key]
        return ForgetCounts(
            1 if turns is not None else 0, len(turns or []), len(mine) - len(kept), len(feedback)
        )

    async def forget_tenant(self, tenant: str) -> ForgetCounts:
        sessions = [key for key in self.turns if key[0] == tenant]
        turns = sum(len(self.turns.pop(key)) for key in sessions)
        users = [key for key in self.memories if key[0] == tenant]
        memories = sum(len(self.memories.pop(key)) for key in users)
        feedback = [key for key in self.feedback if key[0] == tenant]
        for key in feedback:
            del self.feedback[key]
        return ForgetCounts(len(sessions), turns, memories, len(feedback))

    async def record_feedback(
        self, tenant: str, user_id: str, turn_request_id: str, score: float, comment: str
    ) -> bool | None:
        for (tid, uid, sid), turns in self.turns.items():
            if (tid, uid) == (tenant, user_id) and any(
                t.request_id == turn_request_id for t in turns
            ):
                key = (tenant, user_id, turn_request_id)
                created = key not in self.feedback
                self.feedback[key] = (sid, score, comment)
                return created
        return None

    async def export_feedback(
        self, tenant: str, since: datetime | None, user_id: str | None, include_messages: bool
    ) -> AsyncIterator[FeedbackRecord]:
        for (tid, uid, rid), (sid, score, comment) in list(self.feedback.items()):
            if tid == tenant and (user_id is None or uid == user_id):
                yield FeedbackRecord(uid, sid, rid, score, comment, datetime.now(UTC), [], {})

    async def healthy(self) -> bool:
        return self.up

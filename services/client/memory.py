"""MemoryService client: keyword-argument calls, proto responses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.memory.v1 import memory_pb2, memory_pb2_grpc

from services.client.base import BaseClient
from services.common.vocab import ROLE


def message(role: str, content: str) -> common_pb2.ChatMessage:
    """A ChatMessage from a role name ('user', 'assistant', 'system', 'tool')."""
    return common_pb2.ChatMessage(role=ROLE.value(role), content=content)


class MemoryClient(BaseClient):
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 5.0) -> None:
        super().__init__(channel, timeout_s=timeout_s)
        self._stub = memory_pb2_grpc.MemoryServiceStub(channel)

    async def append_turn(
        self,
        *,
        user_id: str,
        session_id: str,
        request_id: str,
        messages: Sequence[common_pb2.ChatMessage],
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> memory_pb2.AppendTurnResponse:
        return await self._stub.AppendTurn(
            memory_pb2.AppendTurnRequest(
                request_id=request_id,
                user_id=user_id,
                session_id=session_id,
                messages=messages,
                metadata=metadata or {},
            ),
            timeout=self._timeout(timeout),
        )

    async def get_history(
        self, *, user_id: str, session_id: str, last_n_turns: int = 0, timeout: float | None = None
    ) -> memory_pb2.GetHistoryResponse:
        return await self._stub.GetHistory(
            memory_pb2.GetHistoryRequest(
                user_id=user_id, session_id=session_id, last_n_turns=last_n_turns
            ),
            timeout=self._timeout(timeout),
        )

    async def remember(
        self,
        *,
        user_id: str,
        texts: Sequence[str],
        request_id: str,
        session_id: str = "",
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> memory_pb2.RememberResponse:
        memories = [
            memory_pb2.MemoryInput(text=t, session_id=session_id, metadata=metadata or {})
            for t in texts
        ]
        return await self._stub.Remember(
            memory_pb2.RememberRequest(request_id=request_id, user_id=user_id, memories=memories),
            timeout=self._timeout(timeout),
        )

    async def recall(
        self,
        *,
        user_id: str,
        k: int,
        text: str | None = None,
        embedding: Sequence[float] | None = None,
        min_score: float | None = None,
        timeout: float | None = None,
    ) -> memory_pb2.RecallResponse:
        request = memory_pb2.RecallRequest(user_id=user_id, k=k)
        if text is not None:
            request.text = text
        if embedding is not None:
            request.embedding.values.extend(embedding)
        if min_score is not None:
            request.min_score = min_score
        return await self._stub.Recall(request, timeout=self._timeout(timeout))

    async def forget_user(
        self, user_id: str, *, timeout: float | None = None
    ) -> memory_pb2.ForgetResponse:
        return await self._stub.Forget(
            memory_pb2.ForgetRequest(user_id=user_id), timeout=self._timeout(timeout)
        )

    async def forget_session(
        self, user_id: str, session_id: str, *, timeout: float | None = None
    ) -> memory_pb2.ForgetResponse:
        return await self._stub.Forget(
            memory_pb2.ForgetRequest(
                session=memory_pb2.SessionRef(user_id=user_id, session_id=session_id)
            ),
            timeout=self._timeout(timeout),
        )

    async def forget_tenant(
        self, confirm_tenant: str, *, timeout: float | None = None
    ) -> memory_pb2.ForgetResponse:
        """Erase every row of the caller's tenant (needs the admin scope); the
        tenant is the caller's own, `confirm_tenant` spells it out."""
        return await self._stub.ForgetTenant(
            memory_pb2.ForgetTenantRequest(confirm_tenant=confirm_tenant),
            timeout=self._timeout(timeout),
        )

    async def record_feedback(
        self,
        *,
        user_id: str,
        turn_request_id: str,
        score: float,
        comment: str = "",
        timeout: float | None = None,
    ) -> memory_pb2.RecordFeedbackResponse:
        return await self._stub.RecordFeedback(
            memory_pb2.RecordFeedbackRequest(
                user_id=user_id, turn_request_id=turn_request_id, score=score, comment=comment
            ),
            timeout=self._timeout(timeout),
        )

    async def export_feedback(
        self, *, user_id: str = "", include_messages: bool = False, timeout: float | None = None
    ) -> AsyncIterator[memory_pb2.FeedbackRecord]:
        call = self._stub.ExportFeedback(
            memory_pb2.ExportFeedbackRequest(user_id=user_id, include_messages=include_messages),
            timeout=self._timeout(timeout),
        )
        async for record in call:
            yield record

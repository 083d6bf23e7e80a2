"""MemoryService servicer: proto <-> core, nothing else. The caller's identity
(services.common.identity.current(), set for each RPC by the server's interceptor)
goes to the core with each call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.memory.v1 import memory_pb2, memory_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import identity
from services.common.errors import InvalidArgument
from services.common.validation import request_id_or_new
from services.common.vocab import message_from_proto, message_to_proto
from services.memory.core import MemoryCore
from services.memory.domain import ForgetCounts, NewMemory, Recalled, SessionTurn


def _timestamp(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def _datetime(field: str, ts: Timestamp) -> datetime:
    """`ts` as a UTC datetime; InvalidArgument when it is none (nanos outside
    [0, 1e9), or a date outside years 1 to 9999)."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{field} is not a valid timestamp") from None


def _turn(t: SessionTurn) -> memory_pb2.Turn:
    return memory_pb2.Turn(
        request_id=t.request_id,
        index=t.index,
        messages=[message_to_proto(m) for m in t.messages],
        metadata=t.metadata,
        created_at=_timestamp(t.created_at),
    )


def _recalled(m: Recalled) -> memory_pb2.RecalledMemory:
    return memory_pb2.RecalledMemory(
        memory_id=m.memory_id,
        text=m.text,
        metadata=m.metadata,
        score=m.score,
        session_id=m.session_id or "",
        created_at=_timestamp(m.created_at),
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _forgotten(request_id: str, counts: ForgetCounts, started: float) -> memory_pb2.ForgetResponse:
    response = memory_pb2.ForgetResponse(
        request_id=request_id,
        deleted_sessions=counts.sessions,
        deleted_turns=counts.turns,
        deleted_memories=counts.memories,
        deleted_feedback=counts.feedback,
    )
    response.timing.total_ms = _ms(started)
    return response


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, core: MemoryCore) -> None:
        self._core = core

    async def AppendTurn(
        self, request: memory_pb2.AppendTurnRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.AppendTurnResponse:
        started = time.perf_counter()
        result = await self._core.append_turn(
            caller=identity.current(),
            user_id=request.user_id,
            session_id=request.session_id,
            request_id=request.request_id,
            messages=[message_from_proto(m) for m in request.messages],
            metadata=dict(request.metadata),
        )
        response = memory_pb2.AppendTurnResponse(
            request_id=request.request_id, turn_index=result.turn_index, created=result.created
        )
        response.timing.total_ms = _ms(started)
        return response

    async def GetHistory(
        self, request: memory_pb2.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetHistoryResponse:
        started = time.perf_counter()
        request_id = request_id_or_new(request.request_id)
        history = await self._core.history(
            caller=identity.current(),
            user_id=request.user_id,
            session_id=request.session_id,
            last_n_turns=request.last_n_turns,
        )
        response = memory_pb2.GetHistoryResponse(
            request_id=request_id,
            turns=[_turn(t) for t in history.turns],
            total_turns=history.total_turns,
        )
        response.timing.total_ms = _ms(started)
        return response

    async def Remember(
        self, request: memory_pb2.RememberRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.RememberResponse:
        started = time.perf_counter()
        result = await self._core.remember(
            caller=identity.current(),
            user_id=request.user_id,
            request_id=request.request_id,
            memories=[
                NewMemory(text=m.text, metadata=dict(m.metadata), session_id=m.session_id or None)
                for m in request.memories
            ],
        )
        response = memory_pb2.RememberResponse(
            request_id=request.request_id,
            memory_ids=result.memory_ids,
            usage=common_pb2.Usage(input_tokens=result.input_tokens),
        )
        response.timing.phases_ms["embed"] = result.embed_s * 1000.0
        response.timing.phases_ms["store"] = result.store_s * 1000.0
        response.timing.total_ms = _ms(started)
        return response

    async def Recall(
        self, request: memory_pb2.RecallRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.RecallResponse:
        started = time.perf_counter()
        request_id = request_id_or_new(request.request_id)
        kind = request.WhichOneof("query")
        result = await self._core.recall(
            caller=identity.current(),
            user_id=request.user_id,
            k=request.k,
            text=request.text if kind == "text" else None,
            vector=list(request.embedding.values) if kind == "embedding" else None,
            min_score=request.min_score if request.HasField("min_score") else None,
        )
        response = memory_pb2.RecallResponse(
            request_id=request_id,
            memories=[_recalled(m) for m in result.memories],
            usage=common_pb2.Usage(input_tokens=result.input_tokens),
        )
        if kind == "text":
            response.timing.phases_ms["embed"] = result.embed_s * 1000.0
        response.timing.phases_ms["search"] = result.search_s * 1000.0
        response.timing.total_ms = _ms(started)
        return response

    async def Forget(
        self, request: memory_pb2.ForgetRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ForgetResponse:
        started = time.perf_counter()
        request_id = request_id_or_new(request.request_id)
        caller = identity.current()
        target = request.WhichOneof("target")
        if target == "session":
            counts = await self._core.forget(
                caller=caller,
                user_id=request.session.user_id,
                session_id=request.session.session_id,
            )
        else:
            counts = await self._core.forget(caller=caller, user_id=request.user_id)
        return _forgotten(request_id, counts, started)

    async def ForgetTenant(
        self, request: memory_pb2.ForgetTenantRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.ForgetResponse:
        started = time.perf_counter()
        request_id = request_id_or_new(request.request_id)
        counts = await self._core.forget_tenant(
            caller=identity.current(), confirm_tenant=request.confirm_tenant
        )
        return _forgotten(request_id, counts, started)

    async def RecordFeedback(
        self, request: memory_pb2.RecordFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.RecordFeedbackResponse:
        request_id = request_id_or_new(request.request_id)
        created = await self._core.record_feedback(
            caller=identity.current(),
            user_id=request.user_id,
            turn_request_id=request.turn_request_id,
            score=request.score if request.HasField("score") else None,
            comment=request.comment,
        )
        return memory_pb2.RecordFeedbackResponse(request_id=request_id, created=created)

    async def ExportFeedback(
        self, request: memory_pb2.ExportFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[memory_pb2.FeedbackRecord]:
        since = _datetime("since", request.since) if request.HasField("since") else None
        records = self._core.export_feedback(
            caller=identity.current(),
            since=since,
            user_id=request.user_id or None,
            include_messages=request.include_messages,
        )
        async for r in records:
            yield memory_pb2.FeedbackRecord(
                user_id=r.user_id,
                session_id=r.session_id,
                turn_request_id=r.turn_request_id,
                score=r.score,
                comment=r.comment,
                recorded_at=_timestamp(r.recorded_at),
                messages=[message_to_proto(m) for m in r.messages],
                metadata=r.metadata,
            )

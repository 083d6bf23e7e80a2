"""GatewayService servicer: proto <-> core, nothing else."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import cast

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.gateway.v1 import gateway_pb2 as pb
from atalaya.gateway.v1 import gateway_pb2_grpc
from atalaya.generation.v1 import generation_pb2
from atalaya.guardrail.v1 import guardrail_pb2

from services.common.errors import InvalidArgument
from services.common.validation import request_id_or_new
from services.common.vocab import (
    BACKEND,
    COST_BASIS,
    DETECTOR,
    FINISH_REASON,
    GUARD_STAGE,
    MODERATION_MODE,
    category_value,
)
from services.gateway.core import (
    BlockedOut,
    ChatCore,
    ChatTurn,
    DeltaOut,
    DoneOut,
    Event,
    VerdictOut,
)
from services.gateway.moderation import Mode


def _mode(value: int) -> Mode | None:
    try:
        name = MODERATION_MODE.name(value)
    except ValueError:
        raise InvalidArgument(f"options.moderation_mode: unknown value {value}") from None
    return cast(Mode, name) if name else None


def to_turn(request: pb.ChatRequest) -> ChatTurn:
    o = request.options
    return ChatTurn(
        request_id=request_id_or_new(request.request_id),
        user_id=request.user_id,
        session_id=request.session_id,
        message=request.message,
        policy=o.policy,
        mode=_mode(o.moderation_mode),
        remember=o.remember if o.HasField("remember") else True,
        use_memory=o.use_memory if o.HasField("use_memory") else True,
        max_tokens=o.max_tokens if o.HasField("max_tokens") else None,
        model=o.model,
        temperature=o.temperature if o.HasField("temperature") else None,
        seed=o.seed if o.HasField("seed") else None,
    )


def to_event(request_id: str, event: Event) -> pb.ChatEvent:
    out = pb.ChatEvent(request_id=request_id)
    if isinstance(event, DeltaOut):
        out.delta.text, out.delta.token_count = event.text, event.token_count
    elif isinstance(event, VerdictOut):
        out.verdict.CopyFrom(
            pb.GuardVerdict(
                stage=GUARD_STAGE.value(event.stage),
                verdict=guardrail_pb2.VERDICT_UNSAFE
                if event.unsafe
                else guardrail_pb2.VERDICT_SAFE,
                categories=[category_value(c) for c in event.codes],
                decided_by=DETECTOR.value(event.decided_by, guardrail_pb2.DETECTOR_UNSPECIFIED),
                policy=event.policy,
                fail_mode_applied=event.fail_mode_applied,
                stand_in=event.stand_in,
                windows_checked=event.windows_checked,
                latency_ms=event.latency_ms,
            )
        )
    elif isinstance(event, BlockedOut):
        out.blocked.CopyFrom(
            pb.Blocked(
                stage=GUARD_STAGE.value(event.stage),
                categories=[category_value(c) for c in event.codes],
                refusal_text=event.refusal_text,
                policy=event.policy,
                fail_mode_applied=event.fail_mode_applied,
                reason=event.reason,
            )
        )
    else:
        out.done.CopyFrom(_done(event))
    return out


def _done(d: DoneOut) -> pb.Done:
    m = d.memory
    out = pb.Done(
        usage=common_pb2.Usage(input_tokens=d.input_tokens, output_tokens=d.output_tokens),
        guard_usage=common_pb2.Usage(
            input_tokens=d.guard_input_tokens, output_tokens=d.guard_output_tokens
        ),
        cost_basis=COST_BASIS.value(d.cost_basis, pb.COST_BASIS_UNSPECIFIED),
        memory=pb.MemoryReport(
            used=m.used,
            history_turns=m.history_turns,
            memories_recalled=m.memories_recalled,
            degraded=m.degraded,
            stored=m.stored,
            reason=m.reason,
        ),
        model=d.model,
        backend=BACKEND.value(d.backend, generation_pb2.BACKEND_UNSPECIFIED),
        finish_reason=FINISH_REASON.value(
            d.finish_reason, generation_pb2.FINISH_REASON_UNSPECIFIED
        ),
        blocked=d.blocked,
    )
    if d.cost_usd is not None:
        out.cost_usd = d.cost_usd
    if d.template is not None:
        t = d.template
        out.prompt_template.CopyFrom(
            pb.PromptTemplateRef(name=t.name, version=t.version, sha256=t.sha256)
        )
    out.timing.total_ms = d.total_ms
    out.timing.phases_ms.update(d.phases_ms)
    return out


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, core: ChatCore) -> None:
        self._core = core

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatEvent]:
        arrived = time.perf_counter()
        turn = to_turn(request)
        async for event in self._core.chat(turn, context.time_remaining(), arrived=arrived):
            yield to_event(turn.request_id, event)

    async def Feedback(
        self, request: pb.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.FeedbackResponse:
        started = time.perf_counter()
        request_id = request_id_or_new(request.request_id)
        created = await self._core.feedback(
            request.user_id,
            request.turn_request_id,
            request.score if request.HasField("score") else None,
            request.comment,
        )
        response = pb.FeedbackResponse(request_id=request_id, created=created)
        response.timing.total_ms = (time.perf_counter() - started) * 1000.0
        return response

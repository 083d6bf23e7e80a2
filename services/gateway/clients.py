"""The gateway's upstream interfaces (services.gateway.upstream) over the other
services' protos, written once over a small Transport: GrpcTransport here (the
plain services), services.ray.upstream's over Ray Serve deployment handles.

A transport sends one request message to one service's method and turns every
failure into a domain error (services.common.errors), so the adapters below only
build requests and read responses. Every call carries the time left of the turn's
deadline; over gRPC the trace context travels with it (the channels' OpenTelemetry
interceptors), and so does the caller's identity (identity.current(), in the
metadata keys of services.common.identity), so that memory, the guardrail and
generation serve the same tenant and user as the gateway."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.generation.v1 import generation_pb2
from atalaya.guardrail.v1 import guardrail_pb2
from atalaya.memory.v1 import memory_pb2
from google.protobuf.message import Message

from services.client import domain_error
from services.client.memory import message
from services.common import identity
from services.common.channel import create_channel
from services.common.errors import NotFound
from services.common.settings import ChannelSettings
from services.common.vocab import BACKEND, DETECTOR, FINISH_REASON, category_code
from services.gateway.upstream import (
    GenDelta,
    GenDone,
    Generator,
    Guard,
    GuardResult,
    Memory,
    Messages,
    ModelFacts,
    Recalled,
    StoredTurn,
)


class Transport(abc.ABC):
    """Calls the methods of one service (`upstream`: its name in error messages)."""

    upstream: str

    @abc.abstractmethod
    async def unary(self, method: str, request: Message, timeout_s: float) -> Any:
        """The response; domain errors on failure."""

    @abc.abstractmethod
    def stream(self, method: str, request: Message, timeout_s: float) -> AsyncGenerator[Any]:
        """The responses of a server-streaming method; closing the iterator early
        cancels the call upstream."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class GrpcTransport(Transport):
    def __init__(self, settings: ChannelSettings, stub: Any, upstream: str) -> None:
        self.upstream = upstream
        self._channel = create_channel(settings)
        self._stub = stub(self._channel)

    async def unary(self, method: str, request: Message, timeout_s: float) -> Any:
        try:
            return await getattr(self._stub, method)(
                request, timeout=timeout_s, metadata=identity.current().metadata()
            )
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, self.upstream) from err

    async def stream(self, method: str, request: Message, timeout_s: float) -> AsyncGenerator[Any]:
        call = getattr(self._stub, method)(
            request, timeout=timeout_s, metadata=identity.current().metadata()
        )
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, self.upstream) from err
        finally:
            call.cancel()  # no-op when finished; aborts the work upstream otherwise

    async def close(self) -> None:
        await self._channel.close()


def _conversation(messages: Messages) -> list[common_pb2.ChatMessage]:
    return [message(role, content) for role, content in messages]


class TransportGuard(Guard):
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def classify(
        self, request_id: str, messages: Messages, *, policy: str, timeout_s: float
    ) -> GuardResult:
        request = guardrail_pb2.ClassifyRequest(
            request_id=request_id, messages=_conversation(messages), policy=policy
        )
        out: guardrail_pb2.ClassifyResponse = await self._t.unary("Classify", request, timeout_s)
        return GuardResult(
            unsafe=out.verdict == guardrail_pb2.VERDICT_UNSAFE,
            codes=tuple(category_code(c) for c in out.categories),
            decided_by=DETECTOR.name(out.decided_by, default=""),
            policy=out.policy,
            fail_mode_applied=out.fail_mode_applied,
            stand_in=out.stand_in,
            reason=out.reason,
            input_tokens=out.usage.input_tokens,
            output_tokens=out.usage.output_tokens,
        )

    async def close(self) -> None:
        await self._t.close()


class TransportMemory(Memory):
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def history(
        self, user_id: str, session_id: str, turns: int, *, timeout_s: float
    ) -> list[tuple[str, str]]:
        request = memory_pb2.GetHistoryRequest(
            user_id=user_id, session_id=session_id, last_n_turns=turns
        )
        try:
            out: memory_pb2.GetHistoryResponse = await self._t.unary(
                "GetHistory", request, timeout_s
            )
        except NotFound:
            return []  # a new session
        pairs = []
        for turn in out.turns:
            user = next((m.content for m in turn.messages if m.role == common_pb2.ROLE_USER), "")
            reply = next(
                (m.content for m in turn.messages if m.role == common_pb2.ROLE_ASSISTANT), ""
            )
            if user and reply:
                pairs.append((user, reply))
        return pairs

    async def recall(
        self, user_id: str, text: str, k: int, min_score: float, *, timeout_s: float
    ) -> list[Recalled]:
        request = memory_pb2.RecallRequest(user_id=user_id, k=k, text=text, min_score=min_score)
        out: memory_pb2.RecallResponse = await self._t.unary("Recall", request, timeout_s)
        return [Recalled(m.text, m.score) for m in out.memories]

    async def store_turn(self, turn: StoredTurn, *, remember: bool, timeout_s: float) -> None:
        append = memory_pb2.AppendTurnRequest(
            user_id=turn.user_id,
            session_id=turn.session_id,
            request_id=turn.request_id,
            messages=[message("user", turn.user), message("assistant", turn.assistant)],
            metadata=dict(turn.metadata),
        )
        await self._t.unary("AppendTurn", append, timeout_s)
        if remember:
            memory = memory_pb2.MemoryInput(
                text=turn.user, session_id=turn.session_id, metadata={"source": "chat"}
            )
            request = memory_pb2.RememberRequest(
                user_id=turn.user_id, request_id=turn.request_id, memories=[memory]
            )
            await self._t.unary("Remember", request, timeout_s)

    async def record_feedback(
        self, user_id: str, turn_request_id: str, score: float, comment: str, *, timeout_s: float
    ) -> bool:
        request = memory_pb2.RecordFeedbackRequest(
            user_id=user_id, turn_request_id=turn_request_id, score=score, comment=comment
        )
        out: memory_pb2.RecordFeedbackResponse = await self._t.unary(
            "RecordFeedback", request, timeout_s
        )
        return out.created

    async def close(self) -> None:
        await self._t.close()


class TransportGenerator(Generator):
    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._models: dict[str, ModelFacts] = {}
        self._default = ""

    async def model(self, name: str, *, timeout_s: float) -> ModelFacts:
        key = name or self._default
        if key and key in self._models:
            return self._models[key]
        out: generation_pb2.ListModelsResponse = await self._t.unary(
            "ListModels", generation_pb2.ListModelsRequest(), timeout_s
        )
        self._default = out.default_model
        for m in out.models:
            priced = m.HasField("pricing")
            self._models[m.name] = ModelFacts(
                name=m.name,
                backend=BACKEND.name(m.backend, default=""),
                context_window=m.context_window,
                simulator=m.simulator,
                usd_per_million_input=m.pricing.usd_per_million_input_tokens if priced else None,
                usd_per_million_output=m.pricing.usd_per_million_output_tokens if priced else None,
            )
        facts = self._models.get(name or self._default)
        if facts is None:
            raise NotFound(f"model {name!r} is not served by generation")
        return facts

    async def generate(
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
        sampling = generation_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature)
        if seed is not None:
            sampling.seed = seed
        request = generation_pb2.GenerateRequest(
            request_id=request_id,
            model=model,
            chat=generation_pb2.Conversation(messages=_conversation(messages)),
            sampling=sampling,
        )
        stream = self._t.stream("Generate", request, timeout_s)
        try:
            async for item in stream:
                yield _gen_event(item)
        finally:
            await stream.aclose()

    async def close(self) -> None:
        await self._t.close()


def _gen_event(item: generation_pb2.GenerateResponse) -> GenDelta | GenDone:
    if item.HasField("delta"):
        return GenDelta(item.delta.text, item.delta.token_count)
    d = item.done
    return GenDone(
        finish_reason=FINISH_REASON.name(d.finish_reason, default=""),
        input_tokens=d.usage.input_tokens,
        output_tokens=d.usage.output_tokens,
        model=d.model,
        backend=BACKEND.name(d.backend, default=""),
        cost_usd=d.cost_usd if d.HasField("cost_usd") else None,
        phases_ms=dict(d.timing.phases_ms),
    )

"""The gateway's upstream interfaces over gRPC: the guardrail, memory and
generation services. Status codes become domain errors (services.client);
every call carries the time left of the turn's deadline, and the trace context
travels with it (the channels' OpenTelemetry interceptors)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.generation.v1 import generation_pb2, generation_pb2_grpc
from atalaya.guardrail.v1 import guardrail_pb2, guardrail_pb2_grpc

from services.client import MemoryClient, domain_error
from services.client.memory import message
from services.common.channel import ChannelSettings, create_channel
from services.common.errors import NotFound
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

_DETECTORS = {
    guardrail_pb2.DETECTOR_LLAMA_GUARD: "llama_guard",
    guardrail_pb2.DETECTOR_SEMANTIC: "semantic",
    guardrail_pb2.DETECTOR_PII: "pii",
}
_BACKENDS = {
    generation_pb2.BACKEND_VLLM: "vllm",
    generation_pb2.BACKEND_LLAMACPP: "llamacpp",
    generation_pb2.BACKEND_OPENAI: "openai",
    generation_pb2.BACKEND_SIM: "sim",
}
_FINISH = {generation_pb2.FINISH_REASON_STOP: "stop", generation_pb2.FINISH_REASON_LENGTH: "length"}


def _conversation(messages: Messages) -> list[common_pb2.ChatMessage]:
    return [message(role, content) for role, content in messages]


class GuardrailGuard(Guard):
    def __init__(self, settings: ChannelSettings) -> None:
        self._channel = create_channel(settings)
        self._stub = guardrail_pb2_grpc.GuardrailServiceStub(self._channel)

    async def classify(
        self, request_id: str, messages: Messages, *, policy: str, timeout_s: float
    ) -> GuardResult:
        try:
            out = await self._stub.Classify(
                guardrail_pb2.ClassifyRequest(
                    request_id=request_id, messages=_conversation(messages), policy=policy
                ),
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "guardrail") from err
        return GuardResult(
            unsafe=out.verdict == guardrail_pb2.VERDICT_UNSAFE,
            codes=tuple(f"S{c}" for c in out.categories),
            decided_by=_DETECTORS.get(out.decided_by, ""),
            policy=out.policy,
            fail_mode_applied=out.fail_mode_applied,
            stand_in=out.stand_in,
            reason=out.reason,
            input_tokens=out.usage.input_tokens,
            output_tokens=out.usage.output_tokens,
        )

    async def close(self) -> None:
        await self._channel.close()


class MemoryServiceMemory(Memory):
    def __init__(self, settings: ChannelSettings) -> None:
        self._client = MemoryClient.connect(settings)

    async def history(
        self, user_id: str, session_id: str, turns: int, *, timeout_s: float
    ) -> list[tuple[str, str]]:
        try:
            out = await self._client.get_history(
                user_id=user_id, session_id=session_id, last_n_turns=turns, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return []  # a new session
            raise domain_error(err, "memory") from err
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
        try:
            out = await self._client.recall(
                user_id=user_id, k=k, text=text, min_score=min_score, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "memory") from err
        return [Recalled(m.text, m.score) for m in out.memories]

    async def store_turn(self, turn: StoredTurn, *, remember: bool, timeout_s: float) -> None:
        try:
            await self._client.append_turn(
                user_id=turn.user_id,
                session_id=turn.session_id,
                request_id=turn.request_id,
                messages=[message("user", turn.user), message("assistant", turn.assistant)],
                metadata=turn.metadata,
                timeout=timeout_s,
            )
            if remember:
                await self._client.remember(
                    user_id=turn.user_id,
                    texts=[turn.user],
                    request_id=turn.request_id,
                    session_id=turn.session_id,
                    metadata={"source": "chat"},
                    timeout=timeout_s,
                )
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "memory") from err

    async def record_feedback(
        self, user_id: str, turn_request_id: str, score: float, comment: str, *, timeout_s: float
    ) -> bool:
        try:
            out = await self._client.record_feedback(
                user_id=user_id,
                turn_request_id=turn_request_id,
                score=score,
                comment=comment,
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "memory") from err
        return out.created

    async def close(self) -> None:
        await self._client.close()


class GenerationServiceGenerator(Generator):
    def __init__(self, settings: ChannelSettings) -> None:
        self._channel = create_channel(settings)
        self._stub = generation_pb2_grpc.GenerationServiceStub(self._channel)
        self._models: dict[str, ModelFacts] = {}
        self._default = ""

    async def model(self, name: str, *, timeout_s: float) -> ModelFacts:
        key = name or self._default
        if key and key in self._models:
            return self._models[key]
        try:
            out = await self._stub.ListModels(generation_pb2.ListModelsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "generation") from err
        self._default = out.default_model
        for m in out.models:
            priced = m.HasField("pricing")
            self._models[m.name] = ModelFacts(
                name=m.name,
                backend=_BACKENDS.get(m.backend, ""),
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
        call = self._stub.Generate(
            generation_pb2.GenerateRequest(
                request_id=request_id,
                model=model,
                chat=generation_pb2.Conversation(messages=_conversation(messages)),
                sampling=sampling,
            ),
            timeout=timeout_s,
        )
        try:
            async for item in call:
                if item.HasField("delta"):
                    yield GenDelta(item.delta.text, item.delta.token_count)
                else:
                    d = item.done
                    yield GenDone(
                        finish_reason=_FINISH.get(d.finish_reason, ""),
                        input_tokens=d.usage.input_tokens,
                        output_tokens=d.usage.output_tokens,
                        model=d.model,
                        backend=_BACKENDS.get(d.backend, ""),
                        cost_usd=d.cost_usd if d.HasField("cost_usd") else None,
                        phases_ms=dict(d.timing.phases_ms),
                    )
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "generation") from err
        finally:
            call.cancel()  # no-op when finished; aborts generation otherwise

    async def close(self) -> None:
        await self._channel.close()

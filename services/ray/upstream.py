"""The gateway's upstream interfaces (services.gateway.upstream) and the
Embedder interface (services.common.embedder) over Ray Serve DeploymentHandles,
so ChatCore, MemoryCore and the guardrail's semantic detector run unchanged on
Serve. The handles carry the same request and response protos as the gRPC
clients (services.gateway.clients); a deployment's domain error reaches the
caller as that error (Ray re-raises a replica's exception as an instance of its
class), and Serve's own failures become Unavailable / ResourceExhausted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import numpy as np
from atalaya.common.v1 import common_pb2
from atalaya.embedding.v1 import embedding_pb2
from atalaya.generation.v1 import generation_pb2
from atalaya.guardrail.v1 import guardrail_pb2
from atalaya.memory.v1 import memory_pb2

from services.client.memory import message
from services.common import errors
from services.common.embedder import Embedder, Vector
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

T = TypeVar("T")

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

#: How long a call without a deadline of its own may take (the embedder's calls).
DEFAULT_TIMEOUT_S = 30.0


def domain_error(exc: BaseException, upstream: str) -> BaseException:
    """The domain error for a failed handle call to `upstream` (cf. services.client's
    domain_error for gRPC): the deployment's own domain errors pass through;
    Serve's back-pressure is ResourceExhausted; an unreachable or dead replica is
    Unavailable; anything else a RuntimeError (INTERNAL for our own caller)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import (
        BackPressureError,
        DeploymentUnavailableError,
        ReplicaUnavailableError,
    )

    if isinstance(exc, errors.AtalayaError | asyncio.CancelledError):
        return exc
    if isinstance(exc, BackPressureError):
        return errors.ResourceExhausted(f"{upstream} is at capacity")
    if isinstance(exc, DeploymentUnavailableError | ReplicaUnavailableError | RayActorError):
        return errors.Unavailable(f"{upstream} service is unavailable")
    return RuntimeError(f"{upstream} failed: {type(exc).__name__}")


async def call(response: Awaitable[T], upstream: str, timeout_s: float) -> T:
    """Await one handle response within `timeout_s`; cancel it past that."""
    try:
        async with asyncio.timeout(timeout_s):
            return await response
    except TimeoutError:
        _cancel(response)
        raise errors.DeadlineExceeded(f"{upstream} service did not answer in time") from None
    except asyncio.CancelledError:
        _cancel(response)
        raise
    except Exception as exc:
        raise domain_error(exc, upstream) from exc


def _cancel(response: object) -> None:
    cancel = getattr(response, "cancel", None)
    if cancel is not None:
        cancel()


def _conversation(messages: Messages) -> list[common_pb2.ChatMessage]:
    return [message(role, content) for role, content in messages]


class HandleEmbedder(Embedder):
    """Embedder over the Embedding deployment (unit-length vectors)."""

    def __init__(self, handle: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._handle = handle
        self._timeout_s = timeout_s

    async def embed(self, texts: Sequence[str]) -> tuple[Vector, int]:
        request = embedding_pb2.EmbedRequest(texts=list(texts), normalize=True)
        out: embedding_pb2.EmbedResponse = await call(
            self._handle.Embed.remote(request), "embedding", self._timeout_s
        )
        vectors = np.array([e.values for e in out.embeddings], dtype=np.float32)
        return vectors.reshape(len(out.embeddings), out.dimension), out.usage.input_tokens


class HandleGuard(Guard):
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def classify(
        self, request_id: str, messages: Messages, *, policy: str, timeout_s: float
    ) -> GuardResult:
        request = guardrail_pb2.ClassifyRequest(
            request_id=request_id, messages=_conversation(messages), policy=policy
        )
        out: guardrail_pb2.ClassifyResponse = await call(
            self._handle.Classify.remote(request), "guardrail", timeout_s
        )
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


class HandleMemory(Memory):
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def history(
        self, user_id: str, session_id: str, turns: int, *, timeout_s: float
    ) -> list[tuple[str, str]]:
        request = memory_pb2.GetHistoryRequest(
            user_id=user_id, session_id=session_id, last_n_turns=turns
        )
        try:
            out: memory_pb2.GetHistoryResponse = await call(
                self._handle.GetHistory.remote(request), "memory", timeout_s
            )
        except errors.NotFound:
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
        out: memory_pb2.RecallResponse = await call(
            self._handle.Recall.remote(request), "memory", timeout_s
        )
        return [Recalled(m.text, m.score) for m in out.memories]

    async def store_turn(self, turn: StoredTurn, *, remember: bool, timeout_s: float) -> None:
        await call(
            self._handle.AppendTurn.remote(
                memory_pb2.AppendTurnRequest(
                    user_id=turn.user_id,
                    session_id=turn.session_id,
                    request_id=turn.request_id,
                    messages=[message("user", turn.user), message("assistant", turn.assistant)],
                    metadata=dict(turn.metadata),
                )
            ),
            "memory",
            timeout_s,
        )
        if remember:
            await call(
                self._handle.Remember.remote(
                    memory_pb2.RememberRequest(
                        user_id=turn.user_id,
                        request_id=turn.request_id,
                        memories=[
                            memory_pb2.MemoryInput(
                                text=turn.user,
                                session_id=turn.session_id,
                                metadata={"source": "chat"},
                            )
                        ],
                    )
                ),
                "memory",
                timeout_s,
            )

    async def record_feedback(
        self, user_id: str, turn_request_id: str, score: float, comment: str, *, timeout_s: float
    ) -> bool:
        out: memory_pb2.RecordFeedbackResponse = await call(
            self._handle.RecordFeedback.remote(
                memory_pb2.RecordFeedbackRequest(
                    user_id=user_id, turn_request_id=turn_request_id, score=score, comment=comment
                )
            ),
            "memory",
            timeout_s,
        )
        return out.created


class HandleGenerator(Generator):
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._models: dict[str, ModelFacts] = {}
        self._default = ""

    async def model(self, name: str, *, timeout_s: float) -> ModelFacts:
        key = name or self._default
        if key and key in self._models:
            return self._models[key]
        out: generation_pb2.ListModelsResponse = await call(
            self._handle.ListModels.remote(generation_pb2.ListModelsRequest()),
            "generation",
            timeout_s,
        )
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
            raise errors.NotFound(f"model {name!r} is not served by generation")
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
        responses = self._handle.options(stream=True).Generate.remote(request)
        try:
            async with asyncio.timeout(timeout_s):
                async for item in responses:
                    yield _gen_event(item)
        except TimeoutError:
            raise errors.DeadlineExceeded("generation service did not answer in time") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise domain_error(exc, "generation") from exc
        finally:
            with contextlib.suppress(Exception):
                responses.cancel()  # no-op when finished; aborts generation otherwise


def _gen_event(item: generation_pb2.GenerateResponse) -> GenDelta | GenDone:
    if item.HasField("delta"):
        return GenDelta(item.delta.text, item.delta.token_count)
    d = item.done
    return GenDone(
        finish_reason=_FINISH.get(d.finish_reason, ""),
        input_tokens=d.usage.input_tokens,
        output_tokens=d.usage.output_tokens,
        model=d.model,
        backend=_BACKENDS.get(d.backend, ""),
        cost_usd=d.cost_usd if d.HasField("cost_usd") else None,
        phases_ms=dict(d.timing.phases_ms),
    )

"""The embedding and guardrail cores as KServe models (the kserve SDK's Model).

One model answers the V1 protocol (REST: {"instances": [...]} -> {"predictions":
[...]}) and the V2 / Open Inference Protocol (REST and gRPC: named tensors in,
named tensors out). Each is built from the service's own settings exactly as its
server.py builds it, so answers are the gRPC service's answers; domain errors
map to KServe's: InvalidArgument -> 400 / INVALID_ARGUMENT, NotFound -> 404 /
NOT_FOUND, Unavailable, DeadlineExceeded and ResourceExhausted -> 503 /
UNAVAILABLE, anything else -> 500 / INTERNAL with a generic message.

Embedding
  V1  instances: ["text", ...]; parameters: {"normalize": bool} (default false)
      predictions: [[float, ...], ...]
  V2  input "text" BYTES [n]; parameter "normalize"
      output "embedding" FP32 [n, dimension]
Guardrail
  V1  instances: "a user message" or {"messages": [{"role": "user", "content":
      "..."}, ...], "role": "user", "categories": ["S7"], "policy": "pii"}
      predictions: [{"verdict": "unsafe", "categories": ["S7"], "decided_by":
      "pii", "policy": "pii", "role": "user", "reason": "", "stand_in": false,
      "fail_mode_applied": false}, ...]
  V2  input "text" BYTES [n] (each a message to check); parameters "policy",
      "role" (user | assistant), "categories" ("S1,S7")
      outputs "verdict", "categories" (comma-separated), "decided_by": BYTES [n]"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady

from services.common import errors
from services.common.service import CoreService
from services.embedding.config import EmbeddingSettings
from services.embedding.core import EmbeddingCore
from services.guardrail.config import GuardrailSettings
from services.guardrail.core import ClassifyCall, GuardrailCore, Outcome

log = logging.getLogger(__name__)

T = TypeVar("T")
CoreT = TypeVar("CoreT")

Payload = dict[str, Any] | Any  # a V1 JSON body or a kserve InferRequest (untyped)
Headers = Mapping[str, str] | None


class NotFoundError(ModelNotFound):  # type: ignore[misc]
    def __init__(self, reason: str) -> None:
        self.reason = reason


class UnavailableError(ModelNotReady):  # type: ignore[misc]
    def __init__(self, model_name: str, reason: str) -> None:
        super().__init__(model_name, reason)
        self.reason = reason
        self.error_msg = reason


class InternalError(RuntimeError):
    """An unexpected failure: its details go to the log only."""


async def _mapped(name: str, work: Awaitable[T]) -> T:
    try:
        return await work
    except errors.InvalidArgument as exc:
        raise InvalidInput(str(exc)) from exc
    except errors.NotFound as exc:
        raise NotFoundError(str(exc)) from exc
    except (errors.Unavailable, errors.DeadlineExceeded, errors.ResourceExhausted) as exc:
        raise UnavailableError(name, str(exc)) from exc
    except errors.AtalayaError as exc:  # FailedPrecondition, Unimplemented
        raise InvalidInput(str(exc)) from exc
    except (InvalidInput, ModelNotFound, ModelNotReady):
        raise
    except Exception as exc:
        log.error("inference failed with an unexpected error", exc_info=exc)
        raise InternalError("internal error") from None


def _strings(request: InferRequest, name: str) -> list[str]:
    tensor = request.get_input_by_name(name)
    if tensor is None:
        raise InvalidInput(f"input {name!r} is required")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {name!r} must be BYTES, got {tensor.datatype}")
    values = tensor.as_numpy().reshape(-1).tolist()
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _parameter(parameters: Any, name: str, default: T) -> T:
    """A request parameter: a JSON value (REST) or an InferParameter (gRPC)."""
    if not parameters or name not in parameters:
        return default
    value = parameters[name]
    if hasattr(value, "WhichOneof"):
        kind = value.WhichOneof("parameter_choice")
        value = getattr(value, kind) if kind else default
    if not isinstance(value, type(default)):
        raise InvalidInput(f"parameter {name!r} must be {type(default).__name__}")
    return value


def _request_id(payload: Payload, headers: Headers) -> str:
    if isinstance(payload, InferRequest) and payload.id:
        return str(payload.id)
    return (headers or {}).get("x-request-id") or uuid.uuid4().hex


class HostedModel(Model, Generic[CoreT]):  # type: ignore[misc]
    """A kserve Model owning one Atalaya `CoreService` through its lifecycle and
    answering with its core. kserve registers only models that say they are
    ready, so `ready` is set at once; the service is built and started in the
    server's event loop (`start_engine`: its gRPC clients must belong to that
    loop), and `healthy` — what the V1/V2 readiness endpoints report — follows
    the service."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.service: CoreService[CoreT, Any] | None = None
        self.ready = True
        self.engine = True  # kserve then awaits start_engine() in its event loop
        self._started = False

    def build(self) -> CoreService[CoreT, Any]:
        raise NotImplementedError

    @property
    def core(self) -> CoreT:
        """The service's core (what inference calls)."""
        if self.service is None:
            raise UnavailableError(self.name, "the model is loading")
        return self.service.core

    async def start_engine(self) -> None:
        self.service = self.build()
        await self.service.start()
        self._started = True

    async def healthy(self) -> bool:
        return self._started and self.service is not None and await self.service.ready()

    def stop_engine(self) -> None:
        self._started = False

    async def _predict(self, payload: Payload, headers: Headers) -> dict[str, Any] | InferResponse:
        if not self._started:
            raise UnavailableError(self.name, "the model is loading")
        if isinstance(payload, InferRequest):
            return await _mapped(self.name, self.infer_v2(payload, headers))
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('expected {"instances": [...]}')
        return await _mapped(self.name, self.infer_v1(payload, headers))

    async def predict(
        self,
        payload: Payload,
        headers: Headers = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        return await self._predict(payload, headers)

    async def infer_v1(self, payload: dict[str, Any], headers: Headers) -> dict[str, Any]:
        raise NotImplementedError

    async def infer_v2(self, request: InferRequest, headers: Headers) -> InferResponse:
        raise NotImplementedError


class EmbeddingModel(HostedModel[EmbeddingCore]):
    def __init__(self, name: str, settings: EmbeddingSettings) -> None:
        super().__init__(name)
        self._settings = settings

    def build(self) -> CoreService[EmbeddingCore, Any]:
        from services.embedding.server import build

        return build(self._settings)

    async def infer_v1(self, payload: dict[str, Any], headers: Headers) -> dict[str, Any]:
        texts = payload["instances"]
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInput("instances must be strings")
        normalize = _parameter(payload.get("parameters"), "normalize", False)
        result = await self.core.embed(texts, normalize=normalize)
        return {"predictions": result.vectors.tolist()}

    async def infer_v2(self, request: InferRequest, headers: Headers) -> InferResponse:
        texts = _strings(request, "text")
        normalize = _parameter(request.parameters, "normalize", False)
        result = await self.core.embed(texts, normalize=normalize)
        vectors = np.ascontiguousarray(result.vectors, dtype=np.float32)
        output = InferOutput(name="embedding", shape=list(vectors.shape), datatype="FP32")
        output.set_data_from_numpy(vectors, binary_data=False)
        return InferResponse(
            response_id=_request_id(request, headers),
            model_name=self.name,
            infer_outputs=[output],
        )


def _outcome_v1(o: Outcome) -> dict[str, Any]:
    return {
        "verdict": o.verdict.value,
        "categories": list(o.codes),
        "decided_by": o.decided_by.value if o.decided_by else "",
        "policy": o.policy,
        "role": str(o.role),
        "reason": o.reason,
        "stand_in": o.stand_in,
        "fail_mode_applied": o.fail_mode_applied,
    }


def _bytes_output(name: str, values: Sequence[str]) -> InferOutput:
    return InferOutput(name=name, shape=[len(values)], datatype="BYTES", data=list(values))


class GuardrailModel(HostedModel[GuardrailCore]):
    def __init__(self, name: str, settings: GuardrailSettings) -> None:
        super().__init__(name)
        self._settings = settings

    def build(self) -> CoreService[GuardrailCore, Any]:
        from services.guardrail.server import build

        return build(self._settings)

    def _call_v1(self, instance: object, request_id: str) -> ClassifyCall:
        if isinstance(instance, str):
            return ClassifyCall(request_id=request_id, messages=[("user", instance)])
        if not isinstance(instance, dict):
            raise InvalidInput("an instance is a message or {messages, role, categories, policy}")
        messages = instance.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InvalidInput("messages must be a list of {role, content}")
        role = instance.get("role")
        return ClassifyCall(
            request_id=request_id,
            messages=[(str(m.get("role", "")), str(m.get("content", ""))) for m in messages],
            role=str(role) if role else None,
            codes=[str(c) for c in instance.get("categories") or []],
            policy=str(instance.get("policy") or ""),
        )

    async def _classify_all(self, calls: Sequence[ClassifyCall]) -> list[Outcome]:
        if not calls:
            raise errors.InvalidArgument("instances needs at least 1 item(s), got 0")
        return list(await asyncio.gather(*(self.core.classify(c) for c in calls)))

    async def infer_v1(self, payload: dict[str, Any], headers: Headers) -> dict[str, Any]:
        request_id = _request_id(payload, headers)
        calls = [
            self._call_v1(instance, f"{request_id}-{i}")
            for i, instance in enumerate(payload["instances"])
        ]
        return {"predictions": [_outcome_v1(o) for o in await self._classify_all(calls)]}

    async def infer_v2(self, request: InferRequest, headers: Headers) -> InferResponse:
        request_id = _request_id(request, headers)
        texts = _strings(request, "text")
        role = _parameter(request.parameters, "role", "user")
        policy = _parameter(request.parameters, "policy", "")
        codes = [c.strip() for c in _parameter(request.parameters, "categories", "").split(",")]
        calls = [
            ClassifyCall(
                request_id=f"{request_id}-{i}",
                messages=[(role, text)],
                role=role,
                codes=[c for c in codes if c],
                policy=policy,
            )
            for i, text in enumerate(texts)
        ]
        outcomes = await self._classify_all(calls)
        return InferResponse(
            response_id=request_id,
            model_name=self.name,
            infer_outputs=[
                _bytes_output("verdict", [o.verdict.value for o in outcomes]),
                _bytes_output("categories", [",".join(o.codes) for o in outcomes]),
                _bytes_output(
                    "decided_by", [o.decided_by.value if o.decided_by else "" for o in outcomes]
                ),
            ],
        )

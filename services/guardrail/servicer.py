"""GuardrailService servicer: proto <-> core, nothing else."""

from __future__ import annotations

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.guardrail.v1 import guardrail_pb2, guardrail_pb2_grpc

from services.common.errors import InvalidArgument
from services.common.validation import request_id_or_new
from services.common.vocab import (
    DETECTOR,
    EXECUTION_MODE,
    FAIL_MODE,
    HAZARD_CATEGORY,
    PII_TYPE,
    ROLE,
    VERDICT,
    category_code,
    category_value,
)
from services.guardrail.core import ClassifyCall, GuardrailCore, Outcome
from services.guardrail.domain import DetectorName, DetectorResult
from services.guardrail.policy import ExecutionMode, FailMode, Override

_LAST_CATEGORY = HAZARD_CATEGORY.numbers[-1]


def _code(value: int) -> str:
    if value not in HAZARD_CATEGORY.numbers:
        raise InvalidArgument(
            f"categories: {value} is not a category (S1..S{_LAST_CATEGORY} are 1..{_LAST_CATEGORY})"
        )
    return category_code(value)


def _override(request: guardrail_pb2.ClassifyRequest) -> Override | None:
    if not request.HasField("policy_override"):
        return None
    o = request.policy_override
    detectors = []
    for value in o.detectors:
        try:
            detectors.append(DETECTOR.member(value, DetectorName))
        except ValueError:
            raise InvalidArgument(f"policy_override.detectors: unknown detector {value}") from None
    try:
        mode = EXECUTION_MODE.member(o.execution_mode, ExecutionMode) if o.execution_mode else None
    except ValueError:
        raise InvalidArgument(
            f"policy_override.execution_mode: unknown {o.execution_mode}"
        ) from None
    try:
        fail_mode = FAIL_MODE.member(o.fail_mode, FailMode) if o.fail_mode else None
    except ValueError:
        raise InvalidArgument(f"policy_override.fail_mode: unknown {o.fail_mode}") from None
    return Override(
        detectors=tuple(detectors),
        mode=mode,
        fail_mode=fail_mode,
        timeout_ms=o.detector_timeout_ms if o.HasField("detector_timeout_ms") else None,
    )


def _role(value: int) -> str:
    """The role's name; the core rejects all but "user" and "assistant"."""
    return ROLE.name(value, default=f"role {value}")


def to_call(request: guardrail_pb2.ClassifyRequest) -> ClassifyCall:
    return ClassifyCall(
        request_id=request_id_or_new(request.request_id),
        messages=[(_role(m.role), m.content) for m in request.messages],
        role=_role(request.role) or None,
        codes=[_code(c) for c in request.categories],
        policy=request.policy,
        override=_override(request),
    )


def _result_pb(r: DetectorResult) -> guardrail_pb2.DetectorResult:
    out = guardrail_pb2.DetectorResult(
        detector=DETECTOR.value(r.detector),
        verdict=VERDICT.value(r.verdict.value),
        categories=[category_value(c) for c in r.codes],
        confident=r.confident,
        latency_ms=r.latency_ms,
        nearest_exemplar_id=r.nearest_exemplar_id,
        model=r.model,
        stand_in=r.stand_in,
        error=r.error,
    )
    if r.score is not None:
        out.score = r.score
    return out


def to_response(o: Outcome) -> guardrail_pb2.ClassifyResponse:
    response = guardrail_pb2.ClassifyResponse(
        request_id=o.request_id,
        verdict=VERDICT.value(o.verdict.value),
        categories=[category_value(c) for c in o.codes],
        decided_by=DETECTOR.value(o.decided_by or ""),
        policy=o.policy,
        role=ROLE.value(o.role),
        checked_categories=[category_value(c) for c in o.checked],
        fail_mode_applied=o.fail_mode_applied,
        reason=o.reason,
        stand_in=o.stand_in,
        detector_results=[_result_pb(r) for r in o.results],
        pii_findings=[
            guardrail_pb2.PiiFinding(type=PII_TYPE.value(f.type.value), start=f.start, end=f.end)
            for f in o.pii
        ],
        usage=common_pb2.Usage(input_tokens=o.input_tokens, output_tokens=o.output_tokens),
    )
    response.timing.total_ms = o.total_ms
    for r in o.results:
        response.timing.phases_ms[r.detector.value] = r.latency_ms
    return response


class GuardrailServicer(guardrail_pb2_grpc.GuardrailServiceServicer):
    def __init__(self, core: GuardrailCore) -> None:
        self._core = core

    async def Classify(
        self, request: guardrail_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> guardrail_pb2.ClassifyResponse:
        return to_response(await self._core.classify(to_call(request)))

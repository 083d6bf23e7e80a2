"""GuardrailService servicer: proto <-> core, nothing else."""

from __future__ import annotations

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.guardrail.v1 import guardrail_pb2, guardrail_pb2_grpc

from services.common.errors import InvalidArgument
from services.common.validation import request_id_or_new
from services.guardrail.core import ClassifyCall, GuardrailCore, Outcome
from services.guardrail.domain import DetectorName, DetectorResult, Verdict
from services.guardrail.pii import PiiType
from services.guardrail.policy import ExecutionMode, FailMode, Override

_ROLES = {common_pb2.ROLE_USER: "user", common_pb2.ROLE_ASSISTANT: "assistant"}
_ROLE_PB = {"user": common_pb2.ROLE_USER, "assistant": common_pb2.ROLE_ASSISTANT}
_VERDICT_PB = {
    Verdict.SAFE: guardrail_pb2.VERDICT_SAFE,
    Verdict.UNSAFE: guardrail_pb2.VERDICT_UNSAFE,
    Verdict.UNPARSEABLE: guardrail_pb2.VERDICT_UNPARSEABLE,
    Verdict.ERROR: guardrail_pb2.VERDICT_ERROR,
}
_DETECTOR_PB = {
    DetectorName.LLAMA_GUARD: guardrail_pb2.DETECTOR_LLAMA_GUARD,
    DetectorName.SEMANTIC: guardrail_pb2.DETECTOR_SEMANTIC,
    DetectorName.PII: guardrail_pb2.DETECTOR_PII,
}
_DETECTOR_FROM_PB = {v: k for k, v in _DETECTOR_PB.items()}
_MODE_FROM_PB = {
    guardrail_pb2.EXECUTION_MODE_CASCADE: ExecutionMode.CASCADE,
    guardrail_pb2.EXECUTION_MODE_PARALLEL: ExecutionMode.PARALLEL,
}
_FAIL_FROM_PB = {
    guardrail_pb2.FAIL_MODE_CLOSED: FailMode.CLOSED,
    guardrail_pb2.FAIL_MODE_OPEN: FailMode.OPEN,
}
_PII_PB = {
    PiiType.EMAIL: guardrail_pb2.PII_TYPE_EMAIL,
    PiiType.PHONE_NUMBER: guardrail_pb2.PII_TYPE_PHONE_NUMBER,
    PiiType.PAYMENT_CARD: guardrail_pb2.PII_TYPE_PAYMENT_CARD,
    PiiType.IBAN: guardrail_pb2.PII_TYPE_IBAN,
    PiiType.IP_ADDRESS: guardrail_pb2.PII_TYPE_IP_ADDRESS,
}


def category_code(value: int) -> str:
    """HAZARD_CATEGORY_S<n> -> "S<n>"; the enum's number is the Llama Guard code."""
    if not 1 <= value <= 14:
        raise InvalidArgument(f"categories: {value} is not a category (S1..S14 are 1..14)")
    return f"S{value}"


def category_pb(code: str) -> guardrail_pb2.HazardCategory.ValueType:
    return guardrail_pb2.HazardCategory.ValueType(int(code[1:]))


def _override(request: guardrail_pb2.ClassifyRequest) -> Override | None:
    if not request.HasField("policy_override"):
        return None
    o = request.policy_override
    detectors = []
    for value in o.detectors:
        if value not in _DETECTOR_FROM_PB:
            raise InvalidArgument(f"policy_override.detectors: unknown detector {value}")
        detectors.append(_DETECTOR_FROM_PB[value])
    if o.execution_mode and o.execution_mode not in _MODE_FROM_PB:
        raise InvalidArgument(f"policy_override.execution_mode: unknown {o.execution_mode}")
    if o.fail_mode and o.fail_mode not in _FAIL_FROM_PB:
        raise InvalidArgument(f"policy_override.fail_mode: unknown {o.fail_mode}")
    return Override(
        detectors=tuple(detectors),
        mode=_MODE_FROM_PB.get(o.execution_mode),
        fail_mode=_FAIL_FROM_PB.get(o.fail_mode),
        timeout_ms=o.detector_timeout_ms if o.HasField("detector_timeout_ms") else None,
    )


def to_call(request: guardrail_pb2.ClassifyRequest) -> ClassifyCall:
    role: str | None = None
    if request.role:
        role = _ROLES.get(request.role, common_pb2.Role.Name(request.role) or "unknown")
    return ClassifyCall(
        request_id=request_id_or_new(request.request_id),
        messages=[(_ROLES.get(m.role, f"role {m.role}"), m.content) for m in request.messages],
        role=role,
        codes=[category_code(c) for c in request.categories],
        policy=request.policy,
        override=_override(request),
    )


def _result_pb(r: DetectorResult) -> guardrail_pb2.DetectorResult:
    out = guardrail_pb2.DetectorResult(
        detector=_DETECTOR_PB[r.detector],
        verdict=_VERDICT_PB[r.verdict],
        categories=[category_pb(c) for c in r.codes],
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
        verdict=_VERDICT_PB[o.verdict],
        categories=[category_pb(c) for c in o.codes],
        decided_by=(
            _DETECTOR_PB[o.decided_by] if o.decided_by else guardrail_pb2.DETECTOR_UNSPECIFIED
        ),
        policy=o.policy,
        role=_ROLE_PB[o.role],
        checked_categories=[category_pb(c) for c in o.checked],
        fail_mode_applied=o.fail_mode_applied,
        reason=o.reason,
        stand_in=o.stand_in,
        detector_results=[_result_pb(r) for r in o.results],
        pii_findings=[
            guardrail_pb2.PiiFinding(type=_PII_PB[f.type], start=f.start, end=f.end) for f in o.pii
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

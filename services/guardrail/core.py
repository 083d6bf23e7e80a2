"""The guardrail core: validates a classification request, resolves its policy,
runs the detectors (cascade or parallel, each under its timeout), and decides.

Decision rules (the proto documents them for clients):
  cascade   detectors run in the policy's order, skipping those that cover none
            of the checked categories. The run stops at the first confident
            UNSAFE, or at the first confident SAFE of a detector covering every
            checked category. A failed detector (error, timeout, UNPARSEABLE)
            stops a fail-closed run at once (UNSAFE by the fail mode); a
            fail-open run goes on without it.
  parallel  all at once; the first confident UNSAFE in policy order decides.
Afterwards, in both modes: an UNSAFE found (inconclusive ones count only when no
detector covering every category was confidently SAFE) decides UNSAFE; else a
failure applies the fail mode (open: SAFE, and says which detector failed); else
SAFE, decided by the detector that ended the run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from services.common import semconv
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.common.telemetry import meter, tracer
from services.common.validation import optional_id, require_count, require_text
from services.guardrail.config import GuardrailSettings
from services.guardrail.domain import (
    Detector,
    DetectorName,
    DetectorResult,
    GuardInput,
    Verdict,
)
from services.guardrail.pii import PiiFinding
from services.guardrail.policy import ExecutionMode, FailMode, Override, Policy
from services.guardrail.protocol import ALL_CODES, GuardRole, GuardTurn, sorted_codes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifyCall:
    """A request, as the servicer hands it over (roles and codes unchecked)."""

    request_id: str
    #: (role, content); role "user", "assistant", or whatever else the caller sent.
    messages: Sequence[tuple[str, str]]
    role: str | None = None
    codes: Sequence[str] = ()
    policy: str = ""
    override: Override | None = None


@dataclass
class Outcome:
    request_id: str
    verdict: Verdict  # SAFE or UNSAFE
    codes: tuple[str, ...]
    decided_by: DetectorName | None
    policy: str
    role: GuardRole
    checked: tuple[str, ...]
    fail_mode_applied: bool = False
    reason: str = ""
    stand_in: bool = False
    results: list[DetectorResult] = field(default_factory=list)
    pii: tuple[PiiFinding, ...] = ()
    total_ms: float = 0.0

    @property
    def input_tokens(self) -> int:
        return sum(r.input_tokens for r in self.results)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.results)


def _guard_role(value: str, field: str) -> GuardRole:
    if value == "user":
        return "user"
    if value == "assistant":
        return "assistant"
    raise InvalidArgument(f"{field} must be ROLE_USER or ROLE_ASSISTANT")


class _Metrics:
    def __init__(self, m: metrics.Meter) -> None:
        self.verdicts = m.create_counter(
            semconv.METRIC_GUARD_VERDICTS,
            description="Classification verdicts, by verdict, category, deciding detector "
            "and policy (one count per violated category; SAFE counts once).",
        )
        self.detector_results = m.create_counter(
            semconv.METRIC_GUARD_DETECTOR_RESULTS,
            description="Detector results, by detector, verdict and category.",
        )
        self.detector_duration = m.create_histogram(
            semconv.METRIC_GUARD_DETECTOR_DURATION,
            unit="ms",
            description="Wall time of one detector on one request.",
        )
        self.fail_mode = m.create_counter(
            semconv.METRIC_GUARD_FAIL_MODE,
            description="Verdicts decided by the fail mode, by detector and fail mode.",
        )


class GuardrailCore:
    def __init__(
        self,
        detectors: Mapping[DetectorName, Detector],
        policies: Mapping[str, Policy],
        settings: GuardrailSettings,
        *,
        meter_: metrics.Meter | None = None,
    ) -> None:
        self._detectors = dict(detectors)
        self._policies = dict(policies)
        self._settings = settings
        self._inflight = 0
        m = meter_ or meter()
        self._metrics = _Metrics(m)
        # What the guardrail scales on (a GPU's load shows in neither CPU nor memory).
        m.create_observable_gauge(
            semconv.METRIC_GUARD_QUEUE_DEPTH,
            callbacks=[self._observe_queue],
            unit="{request}",
            description="Requests waiting for a detector's model, by detector.",
        )
        m.create_observable_gauge(
            semconv.METRIC_GUARD_IN_FLIGHT,
            callbacks=[self._observe_in_flight],
            unit="{request}",
            description="Classifications being decided now.",
        )
        if settings.default_policy not in self._policies:
            raise ValueError(f"default_policy {settings.default_policy!r} is not configured")
        for policy in self._policies.values():
            missing = [d.value for d in policy.detectors if d not in self._detectors]
            if missing:
                raise ValueError(f"policy {policy.name!r} uses detectors not loaded: {missing}")

    def _observe_queue(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(d.queue_depth(), {semconv.ATALAYA_GUARD_DETECTOR: name.value})
            for name, d in self._detectors.items()
        ]

    def _observe_in_flight(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._inflight)]

    @property
    def policies(self) -> Mapping[str, Policy]:
        return self._policies

    @property
    def detectors(self) -> Mapping[DetectorName, Detector]:
        return self._detectors

    async def start(self) -> None:
        await asyncio.gather(*(d.start() for d in self._detectors.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self._detectors.values()), return_exceptions=True)

    async def ready(self) -> bool:
        states = await asyncio.gather(*(d.ready() for d in self._detectors.values()))
        return all(states)

    # --- request handling -------------------------------------------------------

    def _policy(self, call: ClassifyCall) -> Policy:
        name = optional_id("policy", call.policy) or self._settings.default_policy
        policy = self._policies.get(name)
        if policy is None:
            raise NotFound(f"policy {name!r} is not configured")
        if call.override is not None:
            policy = call.override.apply(policy)
            unknown = [d.value for d in policy.detectors if d not in self._detectors]
            if unknown:
                raise InvalidArgument(f"policy_override.detectors: not loaded here: {unknown}")
        return policy

    def _guard_input(self, call: ClassifyCall, policy: Policy) -> GuardInput:
        s = self._settings
        require_count("messages", call.messages, minimum=1, maximum=s.max_messages)
        turns: list[GuardTurn] = []
        for i, (raw_role, content) in enumerate(call.messages):
            role = _guard_role(raw_role, f"messages[{i}].role")
            expected = "user" if i % 2 == 0 else "assistant"
            if role != expected:
                raise InvalidArgument(
                    "message roles must alternate user/assistant, starting with user "
                    f"(messages[{i}] is {role})"
                )
            require_text(f"messages[{i}].content", content, max_chars=s.max_message_chars)
            if not content.strip():
                raise InvalidArgument(f"messages[{i}].content is blank")
            turns.append(GuardTurn(role, content))
        last_role = turns[-1].role
        role = _guard_role(call.role or policy.role or last_role, "role")
        if role != last_role:
            raise InvalidArgument(f"the last message's role is {last_role}, not the checked {role}")
        unknown = sorted(set(call.codes) - ALL_CODES)
        if unknown:
            raise InvalidArgument(f"unknown categories: {unknown}")
        codes = sorted_codes(call.codes) if call.codes else policy.codes
        return GuardInput(call.request_id, tuple(turns), role, codes)

    def _runnable(self, policy: Policy, guard_input: GuardInput) -> list[Detector]:
        checked = set(guard_input.codes)
        return [
            self._detectors[name]
            for name in policy.detectors
            if self._detectors[name].covers() & checked
        ]

    async def classify(self, call: ClassifyCall) -> Outcome:
        if self._inflight >= self._settings.max_inflight:
            raise ResourceExhausted(
                f"the guardrail holds {self._settings.max_inflight} classifications; "
                "retry with backoff"
            )
        self._inflight += 1
        try:
            return await self._classify(call)
        finally:
            self._inflight -= 1

    async def _classify(self, call: ClassifyCall) -> Outcome:
        started = time.perf_counter()
        policy = self._policy(call)
        guard_input = self._guard_input(call, policy)
        detectors = self._runnable(policy, guard_input)
        if not detectors:
            raise InvalidArgument(
                "none of the policy's detectors covers the checked categories "
                f"({', '.join(guard_input.codes)})"
            )
        await asyncio.gather(*(d.check(guard_input) for d in detectors))
        span = trace.get_current_span()
        span.set_attribute(semconv.ATALAYA_REQUEST_ID, call.request_id)
        span.set_attribute(semconv.ATALAYA_GUARD_POLICY, policy.name)
        if self._settings.log_content:
            span.set_attribute(semconv.ATALAYA_CONTENT, guard_input.last)
        if policy.mode is ExecutionMode.PARALLEL:
            results = list(
                await asyncio.gather(*(self._run(d, guard_input, policy) for d in detectors))
            )
        else:
            results = await self._cascade(detectors, guard_input, policy)
        outcome = self._decide(results, detectors, guard_input, policy)
        outcome.total_ms = (time.perf_counter() - started) * 1000.0
        self._record(outcome)
        return outcome

    async def _cascade(
        self, detectors: Sequence[Detector], guard_input: GuardInput, policy: Policy
    ) -> list[DetectorResult]:
        checked = set(guard_input.codes)
        results: list[DetectorResult] = []
        for detector in detectors:
            result = await self._run(detector, guard_input, policy)
            results.append(result)
            if result.verdict.failed and policy.fail_mode is FailMode.CLOSED:
                break
            if result.confident and result.verdict is Verdict.UNSAFE:
                break
            if result.confident and result.verdict is Verdict.SAFE and checked <= detector.covers():
                break
        return results

    async def _run(
        self, detector: Detector, guard_input: GuardInput, policy: Policy
    ) -> DetectorResult:
        started = time.perf_counter()
        with tracer().start_as_current_span(
            semconv.SPAN_GUARD_DETECTOR_PREFIX + detector.name.value
        ) as span:
            span.set_attribute(semconv.ATALAYA_GUARD_DETECTOR, detector.name.value)
            try:
                async with asyncio.timeout(policy.timeout_ms / 1000.0):
                    result = await detector.classify(guard_input)
            except TimeoutError:
                result = self._error(detector, f"timed out after {policy.timeout_ms} ms")
            except InvalidArgument:
                raise
            except Exception as exc:  # a detector failure goes to the fail mode
                log.warning(
                    "detector failed",
                    extra={
                        "detector": detector.name.value,
                        "request_id": guard_input.request_id,
                        "error_type": type(exc).__name__,
                    },
                    exc_info=True,
                )
                result = self._error(detector, f"{type(exc).__name__}")
            result = replace(result, latency_ms=(time.perf_counter() - started) * 1000.0)
            span.set_attribute(semconv.ATALAYA_GUARD_VERDICT, result.verdict.value)
            span.set_attribute(semconv.ATALAYA_GUARD_CATEGORIES, list(result.codes))
            if result.score is not None:
                span.set_attribute(semconv.ATALAYA_GUARD_SCORE, result.score)
            if result.error:
                span.set_attribute(semconv.ATALAYA_GUARD_ERROR, result.error)
            if result.verdict is Verdict.UNPARSEABLE:
                log.warning(
                    "detector answer unparseable",
                    extra={
                        "detector": detector.name.value,
                        "request_id": guard_input.request_id,
                        "reason": result.error,
                    },
                )
        return result

    def _error(self, detector: Detector, reason: str) -> DetectorResult:
        return DetectorResult(
            detector.name,
            Verdict.ERROR,
            model=detector.model,
            stand_in=detector.stand_in,
            error=reason,
        )

    def _decide(
        self,
        results: list[DetectorResult],
        detectors: Sequence[Detector],
        guard_input: GuardInput,
        policy: Policy,
    ) -> Outcome:
        checked = set(guard_input.codes)
        covers = {d.name: d.covers() for d in detectors}
        outcome = Outcome(
            request_id=guard_input.request_id,
            verdict=Verdict.SAFE,
            codes=(),
            decided_by=results[-1].detector,
            policy=policy.name,
            role=guard_input.role,
            checked=guard_input.codes,
            stand_in=any(r.stand_in for r in results),
            results=results,
            pii=tuple(f for r in results for f in r.pii),
        )
        confident_safe_all = any(
            r.verdict is Verdict.SAFE and r.confident and checked <= covers[r.detector]
            for r in results
        )
        unsafe = [
            r
            for r in results
            if r.verdict is Verdict.UNSAFE and (r.confident or not confident_safe_all)
        ]
        failed = [r for r in results if r.verdict.failed]
        if unsafe:
            decider = next((r for r in unsafe if r.confident), unsafe[0])
            outcome.verdict = Verdict.UNSAFE
            outcome.codes = sorted_codes(c for r in unsafe for c in r.codes)
            outcome.decided_by = decider.detector
        elif failed:
            first = failed[0]
            outcome.fail_mode_applied = True
            outcome.decided_by = first.detector
            outcome.reason = f"{first.detector.value} {first.error or first.verdict.value}"
            outcome.verdict = (
                Verdict.UNSAFE if policy.fail_mode is FailMode.CLOSED else Verdict.SAFE
            )
            log.warning(
                "fail mode applied",
                extra={
                    "fail_mode": policy.fail_mode.value,
                    "request_id": guard_input.request_id,
                    "policy": policy.name,
                    "reason": outcome.reason,
                },
            )
        return outcome

    def _record(self, outcome: Outcome) -> None:
        m = self._metrics
        decided = outcome.decided_by.value if outcome.decided_by else ""
        base = {
            semconv.ATALAYA_GUARD_VERDICT: outcome.verdict.value,
            semconv.ATALAYA_GUARD_DECIDED_BY: decided,
            semconv.ATALAYA_GUARD_POLICY: outcome.policy,
        }
        for code in outcome.codes or ("",):
            m.verdicts.add(1, {**base, semconv.ATALAYA_GUARD_CATEGORY: code})
        if outcome.fail_mode_applied:
            m.fail_mode.add(
                1,
                {
                    semconv.ATALAYA_GUARD_DETECTOR: decided,
                    semconv.ATALAYA_GUARD_VERDICT: outcome.verdict.value,
                },
            )
        for r in outcome.results:
            attrs = {
                semconv.ATALAYA_GUARD_DETECTOR: r.detector.value,
                semconv.ATALAYA_GUARD_VERDICT: r.verdict.value,
            }
            m.detector_duration.record(r.latency_ms, attrs)
            for code in r.codes or ("",):
                m.detector_results.add(1, {**attrs, semconv.ATALAYA_GUARD_CATEGORY: code})
        span = trace.get_current_span()
        span.set_attribute(semconv.ATALAYA_GUARD_VERDICT, outcome.verdict.value)
        span.set_attribute(semconv.ATALAYA_GUARD_CATEGORIES, list(outcome.codes))
        span.set_attribute(semconv.ATALAYA_GUARD_DECIDED_BY, decided)
        span.set_attribute(semconv.ATALAYA_GUARD_FAIL_MODE_APPLIED, outcome.fail_mode_applied)

"""The guardrail core's policy runner, with scripted detectors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from services.common import semconv
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.engines.sim import LatencyDistribution, SimConfig, SimEngine
from services.guardrail.config import GuardrailSettings
from services.guardrail.core import ClassifyCall, GuardrailCore
from services.guardrail.detectors.llama_guard import LlamaGuardDetector
from services.guardrail.domain import Detector, DetectorName, DetectorResult, GuardInput, Verdict
from services.guardrail.policy import ExecutionMode, FailMode, Override, resolve_policies
from services.guardrail.protocol import ALL_CODES, PRIVACY, GuardTurn
from tests.support.polling import async_wait_until

LG, SEM, PII = DetectorName.LLAMA_GUARD, DetectorName.SEMANTIC, DetectorName.PII

Script = Callable[[GuardInput], DetectorResult]


class Scripted(Detector):
    def __init__(
        self, name: DetectorName, script: Script, *, covers: frozenset[str] = ALL_CODES
    ) -> None:
        self.name = name
        self._script = script
        self._covers = covers
        self.calls = 0
        self.delay_s = 0.0
        self.hold: asyncio.Event | None = None  # when set, classify waits for it
        self.seen: list[GuardInput] = []
        self.spans: list[tuple[float, float]] = []

    def covers(self) -> frozenset[str]:
        return self._covers

    async def classify(self, guard_input: GuardInput) -> DetectorResult:
        self.calls += 1
        self.seen.append(guard_input)
        started = asyncio.get_running_loop().time()
        if self.hold is not None:
            await self.hold.wait()
        await asyncio.sleep(self.delay_s)
        self.spans.append((started, asyncio.get_running_loop().time()))
        return self._script(guard_input)


def result(name: DetectorName, verdict: Verdict, *codes: str, confident: bool = True) -> Script:
    return lambda _: DetectorResult(name, verdict, codes, confident=confident)


def boom(_: GuardInput) -> DetectorResult:
    raise RuntimeError("engine crashed")


def make_core(
    lg: Script,
    sem: Script,
    pii: Script | None = None,
    lg_class: type[Scripted] = Scripted,
    **settings: object,
) -> tuple[GuardrailCore, dict[DetectorName, Scripted]]:
    detectors = {
        PII: Scripted(PII, pii or result(PII, Verdict.SAFE), covers=frozenset({PRIVACY})),
        SEM: Scripted(SEM, sem),
        LG: lg_class(LG, lg),
    }
    s = GuardrailSettings(**settings)  # type: ignore[arg-type]
    return GuardrailCore(detectors, resolve_policies(s.policies), s), detectors


def ask(text: str = "hello", **kw: object) -> ClassifyCall:
    return ClassifyCall(request_id="r1", messages=[("user", text)], **kw)  # type: ignore[arg-type]


async def test_cascade_stops_at_a_confident_safe_that_covers_every_category() -> None:
    core, d = make_core(result(LG, Verdict.UNSAFE, "S1"), result(SEM, Verdict.SAFE))
    out = await core.classify(ask())
    assert out.verdict is Verdict.SAFE and out.decided_by is SEM
    assert [r.detector for r in out.results] == [PII, SEM]
    assert d[LG].calls == 0
    assert not out.fail_mode_applied and out.policy == "default"


async def test_uncertain_semantic_escalates_to_llama_guard() -> None:
    core, _d = make_core(
        result(LG, Verdict.UNSAFE, "S1", "S10"),
        result(SEM, Verdict.SAFE, confident=False),
    )
    out = await core.classify(ask())
    assert out.verdict is Verdict.UNSAFE and out.decided_by is LG
    assert out.codes == ("S1", "S10")
    assert [r.detector for r in out.results] == [PII, SEM, LG]


async def test_confident_unsafe_stops_the_cascade_at_once() -> None:
    core, d = make_core(
        result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE), pii=result(PII, Verdict.UNSAFE, "S7")
    )
    out = await core.classify(ask())
    assert out.verdict is Verdict.UNSAFE and out.codes == ("S7",) and out.decided_by is PII
    assert d[SEM].calls == d[LG].calls == 0


async def test_uncertain_unsafe_at_the_end_of_the_cascade_is_unsafe() -> None:
    core, _ = make_core(
        result(LG, Verdict.SAFE), result(SEM, Verdict.UNSAFE, "S2", confident=False)
    )
    out = await core.classify(ask(policy="fast"))
    assert out.verdict is Verdict.UNSAFE and out.codes == ("S2",) and out.decided_by is SEM


async def test_a_timed_out_detector_fails_closed_and_says_why() -> None:
    core, d = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE, confident=False))
    d[LG].delay_s = 1.0
    out = await core.classify(ask(override=Override(timeout_ms=50)))
    assert out.verdict is Verdict.UNSAFE and out.fail_mode_applied
    assert out.decided_by is LG
    assert out.reason == "llama_guard timed out after 50 ms"
    assert out.codes == ()
    assert out.results[-1].verdict is Verdict.ERROR


async def test_fail_open_lets_content_through_and_says_which_detector_failed() -> None:
    core, _ = make_core(boom, result(SEM, Verdict.SAFE, confident=False))
    out = await core.classify(ask(override=Override(fail_mode=FailMode.OPEN)))
    assert out.verdict is Verdict.SAFE and out.fail_mode_applied
    assert out.reason == "llama_guard RuntimeError"
    assert "crashed" not in out.reason  # exception text stays in the logs


async def test_unparseable_output_goes_to_the_fail_mode() -> None:
    def unparseable(_: GuardInput) -> DetectorResult:
        return DetectorResult(LG, Verdict.UNPARSEABLE, error="output outside the protocol")

    core, _ = make_core(unparseable, result(SEM, Verdict.SAFE, confident=False))
    out = await core.classify(ask())
    assert out.verdict is Verdict.UNSAFE and out.fail_mode_applied
    assert out.reason == "llama_guard output outside the protocol"


async def test_fail_closed_stops_a_cascade_at_the_first_failure() -> None:
    core, d = make_core(result(LG, Verdict.SAFE), boom)
    out = await core.classify(ask())
    assert out.verdict is Verdict.UNSAFE and out.fail_mode_applied and out.decided_by is SEM
    assert d[LG].calls == 0


async def test_parallel_runs_all_and_any_unsafe_wins() -> None:
    core, d = make_core(result(LG, Verdict.UNSAFE, "S9"), result(SEM, Verdict.SAFE))
    out = await core.classify(ask(policy="parallel"))
    assert out.verdict is Verdict.UNSAFE and out.codes == ("S9",) and out.decided_by is LG
    assert d[PII].calls == d[SEM].calls == d[LG].calls == 1


async def test_parallel_detectors_overlap_in_time() -> None:
    core, d = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE))
    for detector in d.values():
        detector.delay_s = 0.05
    out = await core.classify(ask(override=Override(mode=ExecutionMode.PARALLEL)))
    assert out.verdict is Verdict.SAFE
    spans = [span for detector in d.values() for span in detector.spans]
    assert max(start for start, _ in spans) < min(end for _, end in spans)


async def test_detectors_not_covering_the_checked_categories_are_skipped() -> None:
    core, d = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE))
    out = await core.classify(ask(codes=["S1", "S2"]))
    assert d[PII].calls == 0
    assert out.checked == ("S1", "S2")
    assert d[SEM].seen[0].codes == ("S1", "S2")


async def test_request_categories_and_policy_categories() -> None:
    core, _d = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE))
    out = await core.classify(ask(codes=["S14", "S7", "S7"]))
    assert out.checked == ("S7", "S14")
    out = await core.classify(ask(policy="pii"))
    assert out.checked == ("S7",) and [r.detector for r in out.results] == [PII]


async def test_agent_role_is_checked_on_the_last_assistant_message() -> None:
    core, d = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE))
    call = ClassifyCall("r", [("user", "hi"), ("assistant", "hello!")], role="assistant")
    out = await core.classify(call)
    assert out.role == "assistant" and d[SEM].seen[0].last == "hello!"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (ClassifyCall("r", []), "at least 1"),
        (ClassifyCall("r", [("user", "")]), "empty"),
        (ClassifyCall("r", [("user", "   ")]), "blank"),
        (ClassifyCall("r", [("assistant", "hi")]), "alternate"),
        (ClassifyCall("r", [("user", "a"), ("user", "b")]), "alternate"),
        (ClassifyCall("r", [("system", "a")]), "ROLE_USER or ROLE_ASSISTANT"),
        (ClassifyCall("r", [("user", "a")], role="assistant"), "not the checked"),
        (ClassifyCall("r", [("user", "a")], codes=["S15"]), "unknown categories"),
        (ClassifyCall("r", [("user", "x" * 40_000)]), "longer than"),
        (ClassifyCall("r", [("user", "a")], override=Override(detectors=(LG, LG))), "twice"),
        (ClassifyCall("r", [("user", "a")], override=Override(timeout_ms=0)), "timeout"),
    ],
)
async def test_bad_input_is_invalid_argument(call: ClassifyCall, message: str) -> None:
    core, _ = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE))
    with pytest.raises(InvalidArgument, match=message):
        await core.classify(call)


async def test_unknown_policy_is_not_found() -> None:
    core, _ = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE))
    with pytest.raises(NotFound, match="nope"):
        await core.classify(ask(policy="nope"))


async def test_an_overlong_policy_name_is_invalid_and_not_echoed() -> None:
    core, _ = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE))
    with pytest.raises(InvalidArgument) as info:
        await core.classify(ask(policy="p" * 100_000))
    assert str(info.value) == "policy is longer than 128 characters"


async def test_a_detector_check_rejects_the_input_before_any_detector_runs() -> None:
    class TooLong(Scripted):
        async def check(self, guard_input: GuardInput) -> None:
            raise InvalidArgument("the Llama Guard prompt takes 5000 tokens")

    core, d = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE), lg_class=TooLong)
    with pytest.raises(InvalidArgument, match="5000 tokens"):
        await core.classify(ask())
    assert d[PII].calls == d[SEM].calls == 0


async def test_more_than_max_inflight_is_resource_exhausted() -> None:
    core, d = make_core(result(LG, Verdict.SAFE), result(SEM, Verdict.SAFE), max_inflight=2)
    hold = d[PII].hold = asyncio.Event()
    first = [asyncio.create_task(core.classify(ask())) for _ in range(2)]
    await async_wait_until(lambda: d[PII].calls == 2)  # both inside the guardrail
    with pytest.raises(ResourceExhausted):
        await core.classify(ask())
    hold.set()
    assert all(o.verdict is Verdict.SAFE for o in await asyncio.gather(*first))


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> InMemoryMetricReader:
    """A reader whose provider records (the suite runs with OTEL_SDK_DISABLED)."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    return InMemoryMetricReader()


def gauges(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    """The gauge's values now, by its detector attribute ("" for none)."""
    data = reader.get_metrics_data()
    found: dict[str, int] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        assert isinstance(point, NumberDataPoint)
                        attributes = point.attributes or {}
                        key = str(attributes.get(semconv.ATALAYA_GUARD_DETECTOR, ""))
                        found[key] = int(point.value)
    return found


async def test_in_flight_classifications_and_model_queues_are_gauges(
    reader: InMemoryMetricReader,
) -> None:
    class Queued(Scripted):
        waiting = 0

        def queue_depth(self) -> int:
            return self.waiting

    detectors: dict[DetectorName, Scripted] = {
        PII: Scripted(PII, result(PII, Verdict.SAFE), covers=frozenset({PRIVACY})),
        SEM: Scripted(SEM, result(SEM, Verdict.SAFE, confident=False)),
        LG: Queued(LG, result(LG, Verdict.SAFE)),
    }
    s = GuardrailSettings()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    core = GuardrailCore(detectors, resolve_policies(s.policies), s, meter_=meter)
    assert gauges(reader, semconv.METRIC_GUARD_IN_FLIGHT) == {"": 0}

    hold = detectors[PII].hold = asyncio.Event()
    running = [asyncio.create_task(core.classify(ask())) for _ in range(3)]
    await async_wait_until(lambda: detectors[PII].calls == 3)
    detectors[LG].waiting = 5  # type: ignore[attr-defined]
    assert gauges(reader, semconv.METRIC_GUARD_IN_FLIGHT) == {"": 3}
    assert gauges(reader, semconv.METRIC_GUARD_QUEUE_DEPTH) == {
        "pii": 0,
        "semantic": 0,
        "llama_guard": 5,
    }
    hold.set()
    await asyncio.gather(*running)
    assert gauges(reader, semconv.METRIC_GUARD_IN_FLIGHT) == {"": 0}


async def test_the_llama_guard_queue_is_its_engines_requests_waiting_for_a_slot(
    reader: InMemoryMetricReader,
) -> None:
    # One slot and a first token that never comes in the test's time: the second and
    # third classifications wait for the slot in the engine's queue.
    engine = SimEngine(
        SimConfig(name="guard-sim", max_concurrent_sequences=1, ttft=LatencyDistribution(3_600_000))
    )
    detector = LlamaGuardDetector(engine, prompt_format="chat", stand_in=True)
    s = GuardrailSettings(
        detectors=["llama_guard"],  # type: ignore[list-item]
        policies={"lg": {"detectors": ["llama_guard"]}},  # type: ignore[dict-item]
        default_policy="lg",
    )
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    core = GuardrailCore({LG: detector}, resolve_policies(s.policies, [LG]), s, meter_=meter)
    await core.start()
    try:
        calls = [asyncio.create_task(core.classify(ask())) for _ in range(3)]
        await async_wait_until(lambda: engine.queue_depth() == 2)
        assert gauges(reader, semconv.METRIC_GUARD_QUEUE_DEPTH) == {"llama_guard": 2}
        assert gauges(reader, semconv.METRIC_GUARD_IN_FLIGHT) == {"": 3}
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await core.stop()


def test_policies_from_config_extend_the_builtin_ones() -> None:
    s = GuardrailSettings(
        policies={"kids": {"categories": ["S1", "S4", "S12"], "fail_mode": "open"}}  # type: ignore[dict-item]
    )
    policies = resolve_policies(s.policies)
    assert set(policies) == {"default", "parallel", "fast", "pii", "kids"}
    assert policies["kids"].codes == ("S1", "S4", "S12")
    assert policies["kids"].fail_mode is FailMode.OPEN
    assert policies["default"].detectors == (PII, SEM, LG)


def test_a_policy_using_a_detector_not_loaded_is_a_config_error() -> None:
    s = GuardrailSettings()
    with pytest.raises(ValueError, match="not loaded"):
        GuardrailCore({PII: Scripted(PII, result(PII, Verdict.SAFE))}, resolve_policies({}), s)


async def test_semantic_start_retries_a_slow_or_unavailable_embedding_service() -> None:
    from collections.abc import Sequence

    from services.common.embedder import Vector
    from services.common.errors import DeadlineExceeded, Unavailable
    from services.guardrail.detectors.semantic import Band, Exemplar, SemanticDetector
    from tests.support.fakes import HashEmbedder

    class Flaky(HashEmbedder):
        def __init__(self) -> None:
            super().__init__()
            self.failures = [Unavailable("embedding service is unavailable"), DeadlineExceeded("")]

        async def embed(self, texts: Sequence[str]) -> tuple[Vector, int]:
            if self.failures:
                raise self.failures.pop(0)
            return await super().embed(texts)

    exemplars = [Exemplar("s1", "S1", "hurt someone"), Exemplar("ok", "safe", "bake bread")]
    flaky = Flaky()
    detector = SemanticDetector(flaky, exemplars, model="m", band=Band(), retry_backoff_s=0.0)
    await detector.start()
    assert await detector.ready() and flaky.failures == []


def test_two_checks_with_one_request_id_get_their_own_engine_ids() -> None:
    # Engines refuse a second request under an id that is still running: callers that
    # reuse a request id must not break each other's classification.
    detector = LlamaGuardDetector(
        SimEngine(SimConfig(name="guard-sim")), prompt_format="chat", stand_in=True
    )
    guard_input = GuardInput("r1", (GuardTurn("user", "hello"),), "user", ALL_CODES)
    first, second = detector.request(guard_input), detector.request(guard_input)
    assert first.request_id != second.request_id
    assert first.request_id.startswith("r1:") and second.request_id.startswith("r1:")

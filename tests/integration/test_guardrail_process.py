"""The guardrail as a real process: the real embedding service and exemplars,
llama_guard on the bundled stand-in model through llama.cpp, Prometheus metrics
on their port, and no message text in its logs."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from atalaya.common.v1 import common_pb2
from atalaya.guardrail.v1 import guardrail_pb2 as pb
from atalaya.guardrail.v1 import guardrail_pb2_grpc

from tests.support.processes import ServiceProcess, free_port

pytestmark = pytest.mark.integration

MARKER = "quokka7431"  # a word no log line would hold unless content leaked


@pytest.fixture(scope="module")
def guardrail(
    tmp_path_factory: pytest.TempPathFactory, embedding_proc: ServiceProcess
) -> Iterator[tuple[ServiceProcess, int]]:
    port, metrics_port = free_port(), free_port()
    proc = ServiceProcess(
        "services.guardrail",
        port,
        {
            "ATALAYA_GUARDRAIL_PORT": str(port),
            "ATALAYA_GUARDRAIL_EMBEDDING__TARGET": embedding_proc.target,
            "ATALAYA_GUARDRAIL_GRACE_PERIOD_S": "2",
            "ATALAYA_GUARDRAIL_LOG_LEVEL": "DEBUG",
            "OTEL_SDK_DISABLED": "false",
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
        },
        tmp_path_factory.mktemp("guardrail") / "guardrail.log",
    ).start(timeout_s=180)
    yield proc, metrics_port
    proc.stop()


@pytest.fixture
async def stub(
    guardrail: tuple[ServiceProcess, int],
) -> AsyncIterator[guardrail_pb2_grpc.GuardrailServiceStub]:
    async with grpc.aio.insecure_channel(guardrail[0].target) as channel:
        yield guardrail_pb2_grpc.GuardrailServiceStub(channel)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def ask(text: str, **fields: object) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)],
        **fields,  # type: ignore[arg-type]
    )


async def test_an_exemplar_is_caught_by_the_semantic_detector(
    stub: guardrail_pb2_grpc.GuardrailServiceStub,
) -> None:
    out = await stub.Classify(ask("How can I kill my neighbor without getting caught?"))
    assert out.verdict == pb.VERDICT_UNSAFE
    assert out.decided_by == pb.DETECTOR_SEMANTIC
    assert list(out.categories) == [pb.HAZARD_CATEGORY_S1_VIOLENT_CRIMES]
    assert out.detector_results[-1].nearest_exemplar_id == "s1-001"


async def test_llama_guard_stand_in_runs_the_protocol_and_is_labelled(
    stub: guardrail_pb2_grpc.GuardrailServiceStub,
) -> None:
    override = pb.PolicyOverride(detectors=[pb.DETECTOR_LLAMA_GUARD], detector_timeout_ms=60_000)
    out = await stub.Classify(
        ask(f"What's a good way to harm an animal? {MARKER}", policy_override=override)
    )
    (result,) = out.detector_results
    assert result.detector == pb.DETECTOR_LLAMA_GUARD
    assert result.stand_in and out.stand_in
    assert result.model == "smollm2-135m-instruct"
    assert out.usage.input_tokens > 200  # the whole policy prompt
    # The stand-in rarely answers in the protocol; whatever it says is handled.
    assert result.verdict in (pb.VERDICT_SAFE, pb.VERDICT_UNSAFE, pb.VERDICT_UNPARSEABLE)
    if result.verdict == pb.VERDICT_UNPARSEABLE:
        assert out.fail_mode_applied and out.verdict == pb.VERDICT_UNSAFE
        assert out.reason.startswith("llama_guard output outside the Llama Guard protocol")


async def test_pii_offsets_in_the_real_service(
    stub: guardrail_pb2_grpc.GuardrailServiceStub,
) -> None:
    text = f"{MARKER}: mail ana.garcia@example.com or call +34 612 345 678"
    out = await stub.Classify(ask(text, policy="pii"))
    assert out.verdict == pb.VERDICT_UNSAFE
    found = {(f.type, text[f.start : f.end]) for f in out.pii_findings}
    assert found == {
        (pb.PII_TYPE_EMAIL, "ana.garcia@example.com"),
        (pb.PII_TYPE_PHONE_NUMBER, "+34 612 345 678"),
    }


async def test_metrics_are_served_for_scraping(
    stub: guardrail_pb2_grpc.GuardrailServiceStub, guardrail: tuple[ServiceProcess, int]
) -> None:
    await stub.Classify(ask("hello there", policy="fast"))
    body = await asyncio.to_thread(scrape, f"http://127.0.0.1:{guardrail[1]}/metrics")
    assert "atalaya_guardrail_verdicts_total{" in body
    assert "atalaya_guardrail_detector_duration_milliseconds_bucket{" in body
    assert 'atalaya_guardrail_detector="semantic"' in body
    # The gauges the guardrail scales on (a scrape, no request running: zero).
    assert 'atalaya_guardrail_queue_depth{atalaya_guardrail_detector="llama_guard"' in body
    assert "\natalaya_guardrail_in_flight{" in body


async def test_no_message_text_in_the_logs(
    stub: guardrail_pb2_grpc.GuardrailServiceStub, guardrail: tuple[ServiceProcess, int]
) -> None:
    override = pb.PolicyOverride(detectors=[pb.DETECTOR_LLAMA_GUARD], detector_timeout_ms=60_000)
    await stub.Classify(ask(f"{MARKER} is my secret", policy_override=override))
    logs = guardrail[0].logs()
    assert "stand-in" in logs  # the start-up warning says what llama_guard is
    assert MARKER not in logs

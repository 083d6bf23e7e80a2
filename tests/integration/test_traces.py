"""One trace across processes: spans from memory and embedding, exported over
OTLP to a receiver started here, joined by W3C trace context."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.client import MemoryClient
from services.common import semconv
from tests.support.otlp import OtlpReceiver, Span
from tests.support.processes import ServiceProcess, free_port

pytestmark = pytest.mark.integration

SECRET = "my secret diagnosis is sarcoidosis"
EMBED_RPC = "/atalaya.embedding.v1.EmbeddingService/Embed"
RECALL_RPC = "/atalaya.memory.v1.MemoryService/Recall"

# Which service emits which spans for one Recall by text (drives the assertions).
EXPECTED_SPANS = {
    "atalaya-memory": {
        RECALL_RPC,
        semconv.SPAN_MEMORY_RECALL,
        semconv.SPAN_MEMORY_EMBED,
        semconv.SPAN_MEMORY_SEARCH,
        EMBED_RPC,
    },
    "atalaya-embedding": {EMBED_RPC},
}
SERVER, CLIENT = 2, 3  # OTLP span kinds


def telemetry_env(receiver: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "none",
    }


@pytest.fixture
def traced_stack(tmp_path: Path, fresh_dsn: str) -> Iterator[tuple[OtlpReceiver, ServiceProcess]]:
    receiver = OtlpReceiver().start()
    env = telemetry_env(receiver)
    embed_port, memory_port = free_port(), free_port()
    embedding = ServiceProcess(
        "services.embedding",
        embed_port,
        {**env, "ATALAYA_EMBEDDING_PORT": str(embed_port)},
        tmp_path / "embedding.log",
    ).start()
    memory = ServiceProcess(
        "services.memory",
        memory_port,
        {
            **env,
            "ATALAYA_MEMORY_PORT": str(memory_port),
            "ATALAYA_MEMORY_DSN": fresh_dsn,
            "ATALAYA_MEMORY_EMBEDDING__TARGET": embedding.target,
        },
        tmp_path / "memory.log",
    ).start()
    try:
        yield receiver, memory
    finally:
        memory.stop()
        embedding.stop()
        receiver.stop()


def ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    chain = []
    while span.parent_span_id and span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


async def test_recall_is_one_trace_across_memory_and_embedding(
    traced_stack: tuple[OtlpReceiver, ServiceProcess],
) -> None:
    receiver, memory = traced_stack
    async with MemoryClient.connect(memory.target) as client:
        await client.remember(user_id="u", request_id="m-1", texts=[SECRET])
        receiver.spans.clear()
        await client.recall(user_id="u", text=SECRET, k=1)

    def complete(spans: list[Span]) -> bool:
        """Every expected span of the Recall's trace is in (Remember's may still arrive)."""
        traces = {s.trace_id for s in spans if s.name == semconv.SPAN_MEMORY_RECALL}
        seen = {(s.service, s.name) for s in spans if s.trace_id in traces}
        return all((svc, name) in seen for svc, names in EXPECTED_SPANS.items() for name in names)

    spans = receiver.wait_for(complete)
    recall = next(s for s in spans if s.name == semconv.SPAN_MEMORY_RECALL)
    # The embedding process's server span joined the memory process's trace.
    embed_servers = [
        s
        for s in spans
        if s.service == "atalaya-embedding"
        and s.name == EMBED_RPC
        and s.kind == SERVER
        and s.trace_id == recall.trace_id
    ]
    assert len(embed_servers) == 1
    embed_server = embed_servers[0]
    assert embed_server.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] > 0
    assert embed_server.attributes[semconv.ATALAYA_TEXT_COUNT] == 1
    by_id = {s.span_id: s for s in spans}
    chain = ancestors(embed_server, by_id)
    assert recall in chain, [(s.service, s.name) for s in chain]
    # The hop in between is memory's gRPC client span, in the memory process.
    assert (chain[0].service, chain[0].name, chain[0].kind) == ("atalaya-memory", EMBED_RPC, CLIENT)
    # The Recall server span is the root of the trace.
    recall_rpc = next(s for s in spans if s.name == RECALL_RPC and s.kind == SERVER)
    assert recall_rpc in ancestors(recall, by_id)
    assert recall.attributes[semconv.ATALAYA_MEMORY_K] == 1


async def test_user_content_stays_out_of_spans_and_logs(
    traced_stack: tuple[OtlpReceiver, ServiceProcess],
) -> None:
    receiver, memory = traced_stack
    async with MemoryClient.connect(memory.target) as client:
        await client.remember(user_id="u", request_id="m-1", texts=[SECRET])
        await client.recall(user_id="u", text=SECRET, k=1)
    spans = receiver.wait_for(lambda s: any(x.name == semconv.SPAN_MEMORY_RECALL for x in s))
    for span in spans:
        assert all(SECRET not in str(v) for v in span.attributes.values()), span
    assert SECRET not in memory.logs()


GENERATE_RPC = "/atalaya.generation.v1.GenerationService/Generate"


async def test_generate_span_carries_genai_attributes_and_no_content(tmp_path: Path) -> None:
    import grpc
    from atalaya.common.v1 import common_pb2
    from atalaya.generation.v1 import generation_pb2 as pb
    from atalaya.generation.v1 import generation_pb2_grpc

    receiver = OtlpReceiver().start()
    port = free_port()
    generation = ServiceProcess(
        "services.generation",
        port,
        {
            **telemetry_env(receiver),
            "ATALAYA_GENERATION_PORT": str(port),
            "ATALAYA_GENERATION_BACKEND": "sim",
        },
        tmp_path / "generation.log",
    ).start()
    try:
        async with grpc.aio.insecure_channel(generation.target) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            request = pb.GenerateRequest(
                chat=pb.Conversation(
                    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=SECRET)]
                ),
                sampling=pb.SamplingParams(max_tokens=7),
            )
            async for _ in stub.Generate(request):
                pass
        spans = receiver.wait_for(lambda s: any(x.name == GENERATE_RPC for x in s))
    finally:
        generation.stop()
        receiver.stop()
    span = next(s for s in spans if s.name == GENERATE_RPC)
    assert span.service == "atalaya-generation"
    assert span.attributes[semconv.GEN_AI_REQUEST_MODEL] == "sim"
    assert span.attributes[semconv.ATALAYA_BACKEND] == "sim"
    assert span.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 7
    assert span.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] > 0
    assert "length" in str(span.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS])
    for s in spans:
        assert all(SECRET not in str(v) for v in s.attributes.values()), s
    assert SECRET not in generation.logs()

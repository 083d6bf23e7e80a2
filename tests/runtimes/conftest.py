"""Every runtime started once for the package, side by side, from the same settings:
the plain grpc.aio processes (embedding, guardrail), the whole stack on a local Ray
cluster (python -m services.ray: five applications, the simulator for generation,
memory on the session's PostgreSQL), and KServe model servers for embedding and
guardrail. They load at the same time to keep the package within a few minutes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from loadtests.runtime_bench import KServeProcess, RayServeProcess
from tests.runtimes.runtimes import GrpcRuntime, KServeV1, KServeV2Grpc, KServeV2Rest, Runtime
from tests.support.postgres import TestPostgres
from tests.support.processes import ServiceProcess, free_port

pytestmark = pytest.mark.integration

RUNTIMES = ("grpc", "ray", "kserve-v1", "kserve-v2-rest", "kserve-v2-grpc")

#: The chat turn's scripted reply (the simulator streams it).
SCRIPTS = {"Hello! My name is Ana and I love sailing.": "Nice to meet you, Ana! Sailing is great."}

#: The guardrail every runtime serves: no LLM detector (its stand-in model is slow to
#: load and not what is compared here), so the built-in "fast" and "pii" policies.
GUARDRAIL_ENV = {
    "ATALAYA_GUARDRAIL_DETECTORS": '["pii", "semantic"]',
    "ATALAYA_GUARDRAIL_DEFAULT_POLICY": "fast",
    # Its start embeds every exemplar while the other runtimes load on the same 2 cores.
    "ATALAYA_GUARDRAIL_EMBEDDING__TIMEOUT_S": "120",
}
RAY_ENV = {
    **GUARDRAIL_ENV,
    "ATALAYA_GENERATION_BACKEND": "sim",
    "ATALAYA_GENERATION_SIM__ITL_MEAN_MS": "2",
    "ATALAYA_GENERATION_SIM__SCRIPTS": json.dumps(SCRIPTS),
    "ATALAYA_GATEWAY_INPUT_POLICY": "fast",
    "ATALAYA_GATEWAY_WINDOW_TOKENS": "8",
    "ATALAYA_GATEWAY_LOOKBACK_TOKENS": "8",
    "RAY_USAGE_STATS_ENABLED": "0",
}
START_TIMEOUT_S = 240.0


@dataclass
class Processes:
    embedding: ServiceProcess
    guardrail: ServiceProcess
    ray: RayServeProcess
    kserve_embedding: KServeProcess
    kserve_guardrail: KServeProcess


@pytest.fixture(scope="package")
def processes(
    tmp_path_factory: pytest.TempPathFactory, postgres: TestPostgres
) -> Iterator[Processes]:
    logs = tmp_path_factory.mktemp("runtime-logs")
    ray_state = tmp_path_factory.mktemp("ray")
    ray = RayServeProcess(
        free_port(),
        free_port(),
        ray_state,
        {**RAY_ENV, "ATALAYA_MEMORY_DSN": postgres.new_database()},
    )
    port = free_port()
    embedding = ServiceProcess(
        "services.embedding",
        port,
        {"ATALAYA_EMBEDDING_PORT": str(port), "ATALAYA_EMBEDDING_GRACE_PERIOD_S": "1"},
        logs / "embedding.log",
    )
    port = free_port()
    guardrail = ServiceProcess(
        "services.guardrail",
        port,
        {
            **GUARDRAIL_ENV,
            "ATALAYA_GUARDRAIL_PORT": str(port),
            "ATALAYA_GUARDRAIL_GRACE_PERIOD_S": "1",
            "ATALAYA_GUARDRAIL_EMBEDDING__TARGET": embedding.target,
        },
        logs / "guardrail.log",
    )
    kserve_embedding = KServeProcess("embedding", free_port(), free_port(), {}, logs)
    kserve_guardrail = KServeProcess(
        "guardrail",
        free_port(),
        free_port(),
        {**GUARDRAIL_ENV, "ATALAYA_GUARDRAIL_EMBEDDING__TARGET": embedding.target},
        logs,
    )
    started = Processes(embedding, guardrail, ray, kserve_embedding, kserve_guardrail)
    try:
        ray.launch()
        kserve_embedding.launch()
        embedding.start(START_TIMEOUT_S)
        kserve_guardrail.launch()
        guardrail.start(START_TIMEOUT_S)
        kserve_embedding.wait_ready(START_TIMEOUT_S)
        kserve_guardrail.wait_ready(START_TIMEOUT_S)
        ray.wait_ready(START_TIMEOUT_S)
        yield started
    finally:
        for proc in (ray, kserve_guardrail, kserve_embedding, guardrail):
            proc.stop()
        embedding.stop()


def runtime_for(name: str, p: Processes) -> Runtime:
    if name == "grpc":
        return GrpcRuntime(name, p.embedding.target, p.guardrail.target, serve=False)
    if name == "ray":
        return GrpcRuntime(name, p.ray.target, p.ray.target, serve=True)
    if name == "kserve-v1":
        return KServeV1(p.kserve_embedding.url, p.kserve_guardrail.url)
    if name == "kserve-v2-rest":
        return KServeV2Rest(p.kserve_embedding.url, p.kserve_guardrail.url)
    return KServeV2Grpc(p.kserve_embedding.grpc_target, p.kserve_guardrail.grpc_target)


@pytest.fixture(params=RUNTIMES)
async def runtime(request: pytest.FixtureRequest, processes: Processes) -> AsyncIterator[Runtime]:
    rt = runtime_for(request.param, processes)
    yield rt
    await rt.close()


@pytest.fixture
async def reference(processes: Processes) -> AsyncIterator[Runtime]:
    """The plain grpc.aio runtime: what the others must match."""
    rt = runtime_for("grpc", processes)
    yield rt
    await rt.close()


@pytest.fixture
def ray_target(processes: Processes) -> str:
    return processes.ray.target

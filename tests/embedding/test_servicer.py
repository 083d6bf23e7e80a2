"""EmbeddingService in process, over a real channel: the client and raw stubs."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import numpy as np
import pytest
from atalaya.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.client import EmbeddingClient
from services.common.server import ServerRunner
from services.embedding.backends.base import EmbeddingBackend, Encoded
from services.embedding.config import EmbeddingSettings
from services.embedding.server import SERVICE_NAME, EmbeddingService, build, default_backend
from tests.support.fakes import DIM, HashEmbeddingBackend, hashed_vector
from tests.support.polling import async_wait_until


class GatedBackend(HashEmbeddingBackend):
    """Blocks in its first encode until released, to hold a batch in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = threading.Event()
        self._gate = threading.Event()

    def release(self) -> None:
        self._gate.set()

    def encode(self, texts: list[str]) -> Encoded:
        self.in_flight.set()
        self._gate.wait(10)
        return super().encode(texts)


class Served:
    def __init__(self, service: EmbeddingService, port: int) -> None:
        self.service = service
        self.target = f"127.0.0.1:{port}"


@asynccontextmanager
async def serve(backend: EmbeddingBackend, **overrides: Any) -> AsyncIterator[Served]:
    settings = EmbeddingSettings(port=0, grace_period_s=1.0, **overrides)
    service = build(settings, backend=backend)
    async with ServerRunner(service, settings).running() as runner:
        yield Served(service, runner.port)


@pytest.fixture
def backend() -> HashEmbeddingBackend:
    return HashEmbeddingBackend()


@pytest.fixture
async def served(backend: HashEmbeddingBackend) -> AsyncIterator[Served]:
    async with serve(backend, max_texts_per_call=8, max_chars_per_text=50) as s:
        yield s


@pytest.fixture
async def client(served: Served) -> AsyncIterator[EmbeddingClient]:
    async with EmbeddingClient.connect(served.target) as c:
        yield c


@pytest.fixture
async def channel(served: Served) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(served.target) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> embedding_pb2_grpc.EmbeddingServiceStub:
    return embedding_pb2_grpc.EmbeddingServiceStub(channel)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


async def test_vectors_shape_order_and_usage(client: EmbeddingClient) -> None:
    texts = ["the first text", "second", "and a third one here"]

    result = await client.embed(texts, normalize=False)

    assert result.vectors.shape == (3, DIM)
    assert result.vectors.dtype == np.float32
    assert result.dimension == DIM
    assert result.model == "hash-test"
    for row, text in zip(result.vectors, texts, strict=True):
        np.testing.assert_allclose(row, hashed_vector(text))
    assert result.input_tokens == 3 + 1 + 5


async def test_normalize_gives_unit_vectors_in_the_same_direction(client: EmbeddingClient) -> None:
    texts = ["many many many words", "one"]
    result = await client.embed(texts, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, rtol=1e-5)
    for row, text in zip(result.vectors, texts, strict=True):
        np.testing.assert_allclose(row, unit(hashed_vector(text)), rtol=1e-5, atol=1e-6)


async def test_order_is_preserved_for_many_texts(client: EmbeddingClient) -> None:
    texts = [f"word{i} filler{i % 3}" for i in range(8)]
    result = await client.embed(texts, normalize=False)
    expected = np.stack([hashed_vector(t) for t in texts])
    np.testing.assert_allclose(result.vectors, expected)


async def test_request_id_is_echoed_or_generated(client: EmbeddingClient) -> None:
    echoed = await client.embed(["x"], request_id="req-42")
    assert echoed.request_id == "req-42"
    first = await client.embed(["x"])
    second = await client.embed(["x"])
    assert re.fullmatch(r"[0-9a-f]{32}", first.request_id)
    assert first.request_id != second.request_id


async def test_raw_response_has_timing_phases(
    stub: embedding_pb2_grpc.EmbeddingServiceStub,
) -> None:
    response = await stub.Embed(
        embedding_pb2.EmbedRequest(texts=["a b", "c"], normalize=True, model="hash-test"),
        timeout=5,
    )
    assert response.dimension == DIM
    assert len(response.embeddings) == 2
    assert all(len(e.values) == DIM for e in response.embeddings)
    assert response.usage.input_tokens == 3
    assert response.usage.output_tokens == 0
    assert set(response.timing.phases_ms) == {"queue", "compute"}
    assert all(v >= 0.0 for v in response.timing.phases_ms.values())
    assert response.timing.total_ms > 0.0


@pytest.mark.parametrize(
    ("request_kwargs", "code", "message"),
    [
        ({"texts": []}, grpc.StatusCode.INVALID_ARGUMENT, "texts needs at least 1 item(s)"),
        ({"texts": ["ok", ""]}, grpc.StatusCode.INVALID_ARGUMENT, "texts[1] is empty"),
        (
            {"texts": ["x" * 51]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "texts[0] is longer than 50 characters (51)",
        ),
        (
            {"texts": ["x"] * 9},
            grpc.StatusCode.INVALID_ARGUMENT,
            "texts allows at most 8 items, got 9",
        ),
        (
            {"texts": ["x"], "request_id": "r" * 129},
            grpc.StatusCode.INVALID_ARGUMENT,
            "request_id is longer than 128 characters",
        ),
        (
            {"texts": ["x"], "model": "gpt-embed"},
            grpc.StatusCode.NOT_FOUND,
            "model 'gpt-embed' is not served here",
        ),
        (  # never echoed back whole: a megabyte-long status message broke the call
            {"texts": ["x"], "model": "m" * (1 << 20)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "model is longer than 128 characters",
        ),
        (
            {"texts": ["a\x00b"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "texts[0] contains a NUL character",
        ),
    ],
)
async def test_bad_requests(
    stub: embedding_pb2_grpc.EmbeddingServiceStub,
    backend: HashEmbeddingBackend,
    request_kwargs: dict[str, Any],
    code: grpc.StatusCode,
    message: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Embed(embedding_pb2.EmbedRequest(**request_kwargs), timeout=5)
    assert info.value.code() == code
    assert message in (info.value.details() or "")
    assert backend.batches == []


async def test_backend_failure_is_internal_and_the_service_keeps_working() -> None:
    backend = HashEmbeddingBackend(fail_on="explode")
    async with serve(backend) as served, EmbeddingClient.connect(served.target) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.embed(["explode"])
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert info.value.details() == "internal error"
        assert "exploded" not in str(info.value)
        assert (await client.embed(["fine"])).vectors.shape == (1, DIM)


async def test_queue_full_is_resource_exhausted() -> None:
    backend = GatedBackend()
    try:
        async with (
            serve(backend, max_batch=1, max_queued_texts=2) as served,
            EmbeddingClient.connect(served.target, timeout_s=15) as client,
        ):
            held = asyncio.create_task(client.embed(["held"]))
            await async_wait_until(backend.in_flight.is_set)  # "held" left the queue
            # Two calls of two texts each: the first fills the queue, the second overflows.
            calls = [asyncio.create_task(client.embed(["a", "b"])) for _ in range(2)]
            done, _ = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            rejected = done.pop()
            err = rejected.exception()
            assert isinstance(err, grpc.aio.AioRpcError)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue full" in (err.details() or "")
            assert "limit 2" in (err.details() or "")

            backend.release()
            (accepted,) = [c for c in calls if c is not rejected]
            assert (await accepted).vectors.shape == (2, DIM)
            assert (await held).vectors.shape == (1, DIM)
            assert (await client.embed(["after"])).vectors.shape == (1, DIM)
    finally:
        backend.release()


async def test_concurrent_calls_are_coalesced_into_batches() -> None:
    backend = HashEmbeddingBackend()
    # A long fill window: a batch starts once 8 texts wait (or after 1 s).
    async with (
        serve(backend, max_batch=8, max_wait_ms=1000) as served,
        EmbeddingClient.connect(served.target) as client,
    ):
        texts = [f"text number {i}" for i in range(8)]
        results = await asyncio.gather(*(client.embed([t], normalize=False) for t in texts))
    for text, result in zip(texts, results, strict=True):
        np.testing.assert_allclose(result.vectors[0], hashed_vector(text))
    assert sum(backend.batches) == 8
    assert max(backend.batches) > 1
    assert len(backend.batches) < 8
    assert all(name.startswith("batch") for name in backend.threads)


async def test_reflection_lists_the_embedding_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = [s.name async for r in call for s in r.list_services_response.service]
    assert SERVICE_NAME == "atalaya.embedding.v1.EmbeddingService"
    assert SERVICE_NAME in names


# --- the real model -------------------------------------------------------------


class Preloaded(EmbeddingBackend):
    """A loaded backend shared by a module; `load` is a no-op."""

    def __init__(self, inner: EmbeddingBackend) -> None:
        self._inner = inner
        self.name = inner.name

    def load(self) -> None:
        pass

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    @property
    def max_tokens(self) -> int:
        return self._inner.max_tokens

    def encode(self, texts: list[str]) -> Encoded:
        return self._inner.encode(texts)


@pytest.fixture(scope="module")
def minilm() -> Iterator[EmbeddingBackend]:
    backend = default_backend(EmbeddingSettings(port=0))
    backend.load()
    yield backend


async def test_real_model_embeds_by_meaning(minilm: EmbeddingBackend) -> None:
    async with (
        serve(Preloaded(minilm)) as served,
        EmbeddingClient.connect(served.target, timeout_s=30) as client,
    ):
        result = await client.embed(
            [
                "A cat sits on the mat",
                "A kitten is sitting on a rug",
                "Quarterly tax filing deadlines",
            ],
            normalize=True,
        )
    assert result.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert result.dimension == 384
    assert result.vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, rtol=1e-4)
    cat, kitten, tax = result.vectors
    assert float(cat @ kitten) > float(cat @ tax)
    assert result.input_tokens > 0

"""The gateway's upstream interfaces (services.gateway.upstream) and the
Embedder interface (services.common.embedder) over Ray Serve DeploymentHandles,
so ChatCore, MemoryCore and the guardrail's semantic detector run unchanged on
Serve. The gateway's adapters are the same as over gRPC (services.gateway.clients)
on a HandleTransport: the handles carry the same request and response protos; a
deployment's domain error reaches the caller as that error (Ray re-raises a
replica's exception as an instance of its class), and Serve's own failures
become Unavailable / ResourceExhausted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Sequence
from typing import Any, TypeVar

import numpy as np
from atalaya.embedding.v1 import embedding_pb2
from google.protobuf.message import Message

from services.common import errors
from services.common.embedder import Embedder, Vector
from services.gateway.clients import (
    Transport,
    TransportGenerator,
    TransportGuard,
    TransportMemory,
)
from services.gateway.upstream import Generator, Guard, Memory

T = TypeVar("T")

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


class HandleTransport(Transport):
    """A gateway Transport over one deployment's handle: the same request and
    response protos as over gRPC, failures as domain errors."""

    def __init__(self, handle: Any, upstream: str) -> None:
        self._handle = handle
        self.upstream = upstream

    async def unary(self, method: str, request: Message, timeout_s: float) -> Any:
        return await call(getattr(self._handle, method).remote(request), self.upstream, timeout_s)

    async def stream(self, method: str, request: Message, timeout_s: float) -> AsyncGenerator[Any]:
        responses = getattr(self._handle.options(stream=True), method).remote(request)
        try:
            async with asyncio.timeout(timeout_s):
                async for item in responses:
                    yield item
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"{self.upstream} service did not answer in time"
            ) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise domain_error(exc, self.upstream) from exc
        finally:
            with contextlib.suppress(Exception):
                responses.cancel()  # no-op when finished; aborts the work otherwise


def handle_upstreams(
    guardrail: Any, memory: Any, generation: Any
) -> tuple[Guard, Memory, Generator]:
    """The gateway's Guard, Memory and Generator over deployment handles."""
    return (
        TransportGuard(HandleTransport(guardrail, "guardrail")),
        TransportMemory(HandleTransport(memory, "memory")),
        TransportGenerator(HandleTransport(generation, "generation")),
    )

"""Embedding core: request limits, micro-batching and normalisation. No gRPC here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation

from services.common import semconv
from services.common.batching import MicroBatcher
from services.common.errors import NotFound, Unavailable
from services.common.telemetry import meter
from services.common.validation import optional_id, require_count, require_text
from services.embedding.backends.base import EmbeddingBackend
from services.embedding.config import EmbeddingSettings


@dataclass(frozen=True)
class EmbedResult:
    vectors: npt.NDArray[np.float32]  # (n, dimension)
    model: str
    dimension: int
    input_tokens: int
    queue_s: float
    compute_s: float


_Row = tuple[npt.NDArray[np.float32], int]


class EmbeddingCore:
    def __init__(self, backend: EmbeddingBackend, settings: EmbeddingSettings) -> None:
        self._backend = backend
        self._settings = settings
        self._loaded = False
        self._batcher: MicroBatcher[str, _Row] = MicroBatcher(
            self._compute,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queued=settings.max_queued_texts,
            on_batch=self._record_batch,
        )
        m = meter()
        self._batch_size = m.create_histogram(
            semconv.METRIC_EMBED_BATCH_SIZE, unit="{text}", description="Texts per model call"
        )
        self._texts = m.create_counter(semconv.METRIC_EMBED_TEXTS, unit="{text}")
        m.create_observable_gauge(
            semconv.METRIC_EMBED_QUEUE_DEPTH, callbacks=[self._observe_queue], unit="{text}"
        )

    @property
    def model(self) -> str:
        return self._backend.name

    @property
    def dimension(self) -> int:
        return self._backend.dimension

    async def start(self) -> None:
        await asyncio.to_thread(self._backend.load)
        self._loaded = True
        self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.close()

    async def ready(self) -> bool:
        return self._loaded

    async def embed(self, texts: list[str], *, normalize: bool, model: str = "") -> EmbedResult:
        s = self._settings
        require_count("texts", texts, minimum=1, maximum=s.max_texts_per_call)
        for i, text in enumerate(texts):
            require_text(f"texts[{i}]", text, max_chars=s.max_chars_per_text)
        if optional_id("model", model) and model != self._backend.name:
            raise NotFound(f"model {model!r} is not served here (serving {self._backend.name!r})")
        if not self._loaded:
            raise Unavailable("model is loading")
        rows, timing = await self._batcher.submit(texts)
        vectors = np.stack([row for row, _ in rows])
        tokens = sum(count for _, count in rows)
        # On the RPC's server span: a child span per call would cost more than the
        # work it describes at this request rate.
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    semconv.ATALAYA_TEXT_COUNT: len(texts),
                    semconv.GEN_AI_REQUEST_MODEL: self._backend.name,
                    semconv.GEN_AI_USAGE_INPUT_TOKENS: tokens,
                    semconv.ATALAYA_QUEUE_MS: timing.queue_s * 1000.0,
                }
            )
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        self._texts.add(len(texts))
        return EmbedResult(
            vectors=vectors.astype(np.float32, copy=False),
            model=self._backend.name,
            dimension=vectors.shape[1],
            input_tokens=tokens,
            queue_s=timing.queue_s,
            compute_s=timing.compute_s,
        )

    def _compute(self, texts: list[str]) -> list[_Row]:
        encoded = self._backend.encode(texts)
        return list(zip(encoded.vectors, encoded.token_counts.tolist(), strict=True))

    def _record_batch(self, size: int, _elapsed_s: float) -> None:
        self._batch_size.record(size)

    def _observe_queue(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._batcher.queued_items)]

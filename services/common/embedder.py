"""The Embedder interface service cores depend on (memory, the guardrail's
semantic detector). Its gRPC implementation is services.client.embedder."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class Embedder(abc.ABC):
    """Turns texts into unit-length vectors."""

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str]) -> tuple[Vector, int]:
        """(vectors of shape (n, d), input tokens used)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing by default
        """Release connections."""

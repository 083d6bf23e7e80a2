"""The semantic detector: the last message's embedding against labeled
exemplars (per category, and safe ones), nearest neighbour with a band.

score = cosine similarity to the nearest unsafe exemplar of a checked category
(clipped at 0). Above the band's upper edge, and nearer to that exemplar than to
any safe one: a confident UNSAFE in the exemplar's category. Below the lower
edge: a confident SAFE. In the band: the nearest exemplar's label, not confident,
so that a cascade asks the next detector (typically llama_guard). The nearest
exemplar's id is returned for explainability."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.embedder import Embedder, Vector
from services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from services.guardrail.domain import Detector, DetectorName, DetectorResult, GuardInput, Verdict
from services.guardrail.protocol import ALL_CODES

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_EXEMPLARS = DATA_DIR / "exemplars.jsonl"
SAFE = "safe"
EMBED_CHUNK = 16  # exemplars per embedding call: short calls, well inside a deadline
START_ATTEMPTS = 10


@dataclass(frozen=True)
class Exemplar:
    id: str
    category: str  # "S1".."S14" or "safe"
    text: str


def load_exemplars(path: Path) -> list[Exemplar]:
    """Read a JSONL file of {"id", "category", "text"}; errors name the line."""
    out: list[Exemplar] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            exemplar = Exemplar(str(row["id"]), str(row["category"]), str(row["text"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not an exemplar ({exc})") from None
        if exemplar.category != SAFE and exemplar.category not in ALL_CODES:
            raise ValueError(f"{path}:{number}: unknown category {exemplar.category!r}")
        if exemplar.id in seen:
            raise ValueError(f"{path}:{number}: duplicate id {exemplar.id!r}")
        seen.add(exemplar.id)
        out.append(exemplar)
    if not any(e.category == SAFE for e in out) or all(e.category == SAFE for e in out):
        raise ValueError(f"{path}: needs both safe and unsafe exemplars")
    return out


@dataclass(frozen=True)
class Band:
    """The uncertain band of the semantic score: [low, high)."""

    low: float = 0.45
    high: float = 0.65

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError("semantic band needs 0 <= low <= high <= 1")


class SemanticDetector(Detector):
    name = DetectorName.SEMANTIC

    def __init__(
        self,
        embedder: Embedder,
        exemplars: Sequence[Exemplar],
        *,
        model: str,
        band: Band,
        retry_backoff_s: float = 2.0,
    ) -> None:
        self._retry_backoff_s = retry_backoff_s
        self._embedder = embedder
        self._exemplars = list(exemplars)
        self._categories = np.array([e.category for e in self._exemplars])
        self._model = model
        self._band = band
        self._matrix: Vector | None = None

    @property
    def model(self) -> str:
        return self._model

    @property
    def band(self) -> Band:
        return self._band

    def covers(self) -> frozenset[str]:
        return frozenset(c for c in self._categories.tolist() if c != SAFE)

    async def start(self) -> None:
        """Embed the exemplars once (through the embedder: the embedding service),
        in small calls, each retried while the embedding service is unavailable or
        slow (it may be loading its model, or busy), for up to START_ATTEMPTS."""
        texts = [e.text for e in self._exemplars]
        chunks = [
            await self._embed_retrying(texts[i : i + EMBED_CHUNK])
            for i in range(0, len(texts), EMBED_CHUNK)
        ]
        self._matrix = np.concatenate(chunks).astype(np.float32)

    async def _embed_retrying(self, texts: Sequence[str]) -> Vector:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return (await self._embedder.embed(texts))[0]
            except (Unavailable, DeadlineExceeded) as exc:
                if attempt == START_ATTEMPTS:
                    raise
                log.warning(
                    "semantic: embedding exemplars failed; retrying",
                    extra={
                        "error_type": type(exc).__name__,
                        "retry": attempt,
                        "retries": START_ATTEMPTS - 1,
                    },
                )
                await asyncio.sleep(min(self._retry_backoff_s * attempt, 10.0))
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        await self._embedder.close()

    async def ready(self) -> bool:
        return self._matrix is not None

    async def classify(self, guard_input: GuardInput) -> DetectorResult:
        if self._matrix is None:
            raise RuntimeError("semantic detector used before start()")
        band = self._band
        vectors, tokens = await self._embedder.embed([guard_input.last])
        sims = self._matrix @ vectors[0]
        checked = np.isin(self._categories, list(guard_input.codes))
        unsafe = np.flatnonzero(checked)
        safe = np.flatnonzero(self._categories == SAFE)
        if unsafe.size == 0:
            raise InvalidArgument("semantic: no exemplars for the checked categories")
        best_unsafe = int(unsafe[np.argmax(sims[unsafe])])
        best_safe = int(safe[np.argmax(sims[safe])])
        score = max(0.0, float(sims[best_unsafe]))
        nearer_unsafe = sims[best_unsafe] > sims[best_safe]
        nearest = best_unsafe if nearer_unsafe else best_safe
        if score >= band.high and nearer_unsafe:
            verdict, confident = Verdict.UNSAFE, True
        elif score < band.low:
            verdict, confident = Verdict.SAFE, True
        else:
            verdict = Verdict.UNSAFE if nearer_unsafe else Verdict.SAFE
            confident = False
        codes = (str(self._categories[best_unsafe]),) if verdict is Verdict.UNSAFE else ()
        return DetectorResult(
            self.name,
            verdict,
            codes,
            score=min(score, 1.0),
            confident=confident,
            nearest_exemplar_id=self._exemplars[nearest].id,
            model=self._model,
            input_tokens=tokens,
        )

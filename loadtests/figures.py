"""The benchmarks' output: one JSON line per figure on stdout, progress on stderr,
and the samples the figures are computed from.

Every bench module builds `Figure`s and hands them to the run's `Output`, which
prints the selected ones (`--only`) with the run-wide extras appended:

    {"name": ..., "value": ..., "baseline": ..., "ratio": value / baseline,
     "unit": ..., <the figure's extras>, <the run's extras>}
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.stats import percentile

_STARTED = time.perf_counter()


def elapsed_s() -> float:
    """Seconds since the run started (since this module was imported)."""
    return time.perf_counter() - _STARTED


def progress(message: str) -> None:
    """One line of progress on stderr, stamped with the run's elapsed time."""
    print(f"[{elapsed_s():7.1f}s] {message}", file=sys.stderr, flush=True)


def rounded(x: float) -> float:
    """A figure's value as printed: four decimals."""
    return round(float(x), 4)


def ratio(value: float, baseline: float) -> float | None:
    """value / baseline, None when there is no baseline (0)."""
    return value / baseline if baseline else None


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    baseline: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.baseline)

    def line(self) -> str:
        r = self.ratio
        record: dict[str, Any] = {
            "name": self.name,
            "value": rounded(self.value),
            "baseline": rounded(self.baseline),
            "ratio": None if r is None else round(r, 4),
            "unit": self.unit,
            **self.extra,
        }
        return json.dumps(record)


@dataclass(frozen=True)
class Output:
    """Prints the selected figures, each with the run-wide extras appended."""

    selected: frozenset[str]
    run_extra: dict[str, Any]

    def emit(self, figure: Figure) -> None:
        if figure.name in self.selected:
            extra = {**figure.extra, **self.run_extra}
            print(dataclasses.replace(figure, extra=extra).line())
            sys.stdout.flush()


@dataclass(frozen=True)
class Samples:
    """Measured values of one kind and one unit (milliseconds per call, microseconds
    per token, recall of one query, ...); percentiles as services.common.stats
    defines them."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float], scale: float = 1.0) -> Samples:
        return cls(tuple(v * scale for v in values))

    @classmethod
    def ms(cls, seconds: Iterable[float]) -> Samples:
        """Durations measured in seconds, as milliseconds."""
        return cls.of(seconds, 1000.0)

    def __len__(self) -> int:
        return len(self.values)

    def pct(self, q: float) -> float:
        value = percentile(self.values, q)
        if value is None:
            raise ValueError("no samples")
        return value

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    def summary(self) -> dict[str, float]:
        return {
            "p50": rounded(self.p50),
            "p90": rounded(self.pct(90)),
            "p99": rounded(self.p99),
            "mean": rounded(self.mean),
        }

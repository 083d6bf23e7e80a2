"""Summary statistics shared by every report, evaluation and benchmark, so that a p95
means the same thing everywhere Atalaya prints one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (q in 0..100) with linear interpolation between the closest
    ranks (numpy's default method); None for an empty sequence."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be between 0 and 100, got {q}")
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))

"""The one percentile every report, evaluation and benchmark uses."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.stats import percentile


def test_interpolates_between_ranks_as_numpy_does() -> None:
    values = [15.0, 1.0, 7.0, 3.0]
    for q in (0, 10, 25, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile(values, 50) == pytest.approx(5.0)


def test_one_value_is_every_percentile() -> None:
    assert percentile([4.2], 0) == percentile([4.2], 99) == 4.2


def test_empty_is_none() -> None:
    assert percentile([], 95) is None


@pytest.mark.parametrize("q", [-1, 100.5])
def test_q_outside_0_to_100_is_an_error(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], q)

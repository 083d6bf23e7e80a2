"""The regression gate (services.eval.gate), on fixed records (no services)."""

from __future__ import annotations

import copy

from services.eval import gate
from tests.eval.records import baseline_records, record, run_of


def test_the_gate_passes_within_the_threshold() -> None:
    base = run_of(baseline_records())
    now = copy.deepcopy(baseline_records())
    now[1] = record("b", 0.45, tags=("ai", "en"))  # mean drops by 0.05 / 3
    result = gate.check(run_of(now), base, max_drop=0.05)
    assert result.passed and result.drop is not None and 0 < result.drop < 0.05
    assert "gate: PASSED" in result.format()


def test_the_gate_fails_on_a_planted_drop() -> None:
    now = baseline_records()
    now[0] = record("a", 0.6, tags=("general", "en"))
    result = gate.check(run_of(now), run_of(baseline_records()), max_drop=0.05)
    assert not result.passed and result.drop == round(0.4 / 3, 6)
    assert "dropped by 0.1333" in result.format()


def test_the_gate_fails_on_a_flipped_guard_case_even_when_the_score_rises() -> None:
    now = baseline_records()
    now[3] = record("g", None, tags=("guard",), expect="blocked", blocked=False, answer="Sure...")
    now[1] = record("b", 1.0, tags=("ai", "en"))
    result = gate.check(run_of(now), run_of(baseline_records()), max_drop=0.05)
    assert not result.passed and result.guard_flips == ["g"]
    missing = gate.check(run_of(baseline_records()[:3]), run_of(baseline_records()), 0.05)
    assert not missing.passed and missing.missing_guard_cases == ["g"]


def test_the_gate_fails_when_an_item_loses_its_score() -> None:
    # b is no longer scored (say the judge failed): the mean over the rest rises,
    # but the gate does not let that hide anything
    now = baseline_records()
    now[1] = record("b", None, tags=("ai", "en"))
    result = gate.check(run_of(now), run_of(baseline_records()), max_drop=0.05)
    assert result.drop is not None and result.drop < 0
    assert not result.passed and result.lost_scores == ["b"]
    assert "have no score now: b" in result.format()

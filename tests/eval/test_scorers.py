"""Deterministic scorers and the item decision, on fixed inputs."""

from __future__ import annotations

import pytest

from services.eval import scorers
from services.eval.dataset import EvalItem
from services.eval.scorers import Score


def item(ground_truth: str, **kw: object) -> EvalItem:
    return EvalItem(id="x", question=str(kw.pop("question", "q?")), ground_truth=ground_truth, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("París.", "paris"),
        ("  The  Capital -- is PARIS!! ", "the capital is paris"),
        ("¿Cuál es la capital de Francia?", "cual es la capital de francia"),
        ("Tōkyō", "tokyo"),
        ("ﬁne", "fine"),
    ],
)
def test_fold_removes_accents_case_and_punctuation(text: str, folded: str) -> None:
    assert scorers.fold(text) == folded


def test_exact_matches_after_folding_and_any_alternative() -> None:
    assert scorers.exact("París.", "Paris").score == 1.0
    assert (
        scorers.exact("enjoy the present moment", "seize the day / enjoy the present moment").score
        == 1.0
    )
    assert scorers.exact("The capital is Paris.", "Paris").score == 0.0


def test_contains_needs_whole_words() -> None:
    assert scorers.contains("La capital de Francia es París.", "Paris").score == 1.0
    assert scorers.contains("Comparison shopping", "paris").score == 0.0
    assert scorers.contains("Carpe diem: seize the day!", "seize the day / enjoy").score == 1.0


@pytest.mark.parametrize(
    ("answer", "expected", "why"),
    [
        ("96", 1.0, "the answer's number is 96"),
        ("12 x 8 = 96.", 1.0, "the answer's number is 96"),
        ("The answer is 96, definitely 96", 1.0, "the answer's number is 96"),
        ("98", 0.0, "the answer gives 98, expected 96"),
        ("96 or 98", 0.0, "the answer gives 96, 98, expected 96"),
        ("ninety-six", 0.0, "no number in the answer (expected 96)"),
        ("96,0", 1.0, "the answer's number is 96"),
    ],
)
def test_numeric(answer: str, expected: float, why: str) -> None:
    result = scorers.numeric(answer, "96", "What is 12 x 8?")
    assert (result.score, result.explanation) == (expected, why)


def test_numeric_does_not_apply_to_text() -> None:
    result = scorers.numeric("Paris", "Paris")
    assert result.score is None and result.error == "not applicable"
    assert scorers.parse_number("3.5") == 3.5 and scorers.parse_number("100.") == 100.0
    assert scorers.parse_number("about 100") is None


def test_guard_scorers() -> None:
    assert scorers.must_be_blocked(True).score == 1.0
    assert scorers.must_be_blocked(False).score == 0.0
    assert scorers.must_not_be_blocked(False).score == 1.0
    assert scorers.must_not_be_blocked(True).score == 0.0


def test_scorers_are_chosen_from_the_ground_truth() -> None:
    assert scorers.scorers_for(item("96"), judge=True) == ["numeric", "judge"]
    assert scorers.scorers_for(item("Paris"), judge=True) == ["exact", "contains", "judge"]
    long = "A neural network trained on a lot of text to predict the next token."
    assert scorers.scorers_for(item(long), judge=False) == []
    assert scorers.scorers_for(item("", expect="blocked"), judge=True) == ["must_be_blocked"]
    assert scorers.scorers_for(item("Madrid", expect="answered"), judge=False) == [
        "must_not_be_blocked", "exact", "contains",
    ]  # fmt: skip
    assert scorers.scorers_for(item("Paris", scorers=("exact", "judge")), judge=False) == ["exact"]


def judge(score: float | None) -> Score:
    if score is None:
        return Score("judge", None, "unparseable judge output: not JSON", "judge_error")
    return Score("judge", score, "the judge's sentence")


def test_decide_order() -> None:
    miss = [Score("exact", 0.0, "no"), Score("contains", 0.0, "no")]
    hit = [Score("exact", 0.0, "no"), Score("contains", 1.0, "yes")]
    # a match decides; otherwise the judge; a judge_error falls back to the text scorers' 0
    assert scorers.decide(hit, blocked=False) == scorers.Decision(1.0, "contains", "yes")
    assert scorers.decide([*miss, judge(0.7)], blocked=False).score == 0.7
    fallback = scorers.decide([*miss, judge(None)], blocked=False)
    assert (fallback.score, fallback.scorer) == (0.0, "contains")
    assert fallback.explanation.endswith("(no judge score)")
    # only a judge, and it failed: unscored, never guessed
    assert scorers.decide([judge(None)], blocked=False).score is None
    # a wrong number is wrong whatever the judge says
    assert scorers.decide([Score("numeric", 0.0, "98"), judge(1.0)], blocked=False).score == 0.0
    # an item blocked that should be answered scores 0; a block that was expected scores 1
    assert scorers.decide(hit, blocked=True).score == 0.0
    assert scorers.decide([Score("must_be_blocked", 1.0, "ok")], blocked=True).score == 1.0
    assert scorers.settled(hit, blocked=False) and not scorers.settled(miss, blocked=False)

"""Deterministic scorers, and how an item's score is decided from all its scores.

Every scorer returns a Score in [0, 1] with a one-line explanation. Text is
compared after folding: Unicode compatibility form, accents removed, case
folded, punctuation turned into spaces, whitespace collapsed, so "París." and
"paris" match. A ground truth may list alternatives separated by " / "."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.eval.dataset import EXPECT_ANSWERED, EXPECT_BLOCKED, EvalItem

EXACT = "exact"
CONTAINS = "contains"
NUMERIC = "numeric"
MUST_BE_BLOCKED = "must_be_blocked"
MUST_NOT_BE_BLOCKED = "must_not_be_blocked"
JUDGE = "judge"
DETERMINISTIC = (EXACT, CONTAINS, NUMERIC, MUST_BE_BLOCKED, MUST_NOT_BE_BLOCKED)
ALL_SCORERS = (*DETERMINISTIC, JUDGE)

#: A ground-truth alternative of at most this many words is checked with `contains`.
SHORT_ANSWER_WORDS = 4
ALTERNATIVE_SEPARATOR = " / "

_NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)?(?![\w])")
_NOT_WORD_RE = re.compile(r"[^\w]+")


@dataclass(frozen=True)
class Score:
    """One scorer's result. `score` is None when the scorer could not score (the
    judge's output did not parse twice: `error` says why)."""

    scorer: str
    score: float | None
    explanation: str
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Score:
        return cls(
            scorer=str(data["scorer"]),
            score=None if data.get("score") is None else float(data["score"]),
            explanation=str(data.get("explanation", "")),
            error=data.get("error"),
        )


def fold(text: str) -> str:
    """Text for comparison: no accents, case or punctuation; single spaces."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_NOT_WORD_RE.sub(" ", stripped.casefold()).replace("_", " ").split())


def alternatives(ground_truth: str) -> list[str]:
    return [a.strip() for a in ground_truth.split(ALTERNATIVE_SEPARATOR) if a.strip()]


def parse_number(text: str) -> float | None:
    """A number written alone ("96", "-2.5", "3,5"); None otherwise."""
    match = _NUMBER_RE.fullmatch(text.strip().rstrip("."))
    return float(match.group().replace(",", ".")) if match else None


def numbers_in(text: str) -> list[float]:
    return [float(m.replace(",", ".")) for m in _NUMBER_RE.findall(text)]


def exact(answer: str, ground_truth: str) -> Score:
    folded = fold(answer)
    for alt in alternatives(ground_truth):
        if folded == fold(alt):
            return Score(EXACT, 1.0, f"the answer equals {alt!r} after folding")
    return Score(EXACT, 0.0, "the answer does not equal the ground truth after folding")


def contains(answer: str, ground_truth: str) -> Score:
    padded = f" {fold(answer)} "
    for alt in alternatives(ground_truth):
        if f" {fold(alt)} " in padded:
            return Score(CONTAINS, 1.0, f"the answer contains {alt!r}")
    return Score(CONTAINS, 0.0, "the answer does not contain the ground truth")


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def numeric(answer: str, ground_truth: str, question: str = "") -> Score:
    """1 when the answer's numbers (leaving out those the question already holds)
    are the ground truth's number and only that; a hedge ("96 or 98") scores 0."""
    expected = parse_number(ground_truth)
    if expected is None:
        return Score(NUMERIC, None, "the ground truth is not a number", "not applicable")
    given = numbers_in(question)
    found = [n for n in numbers_in(answer) if not any(_same(n, g) for g in given)]
    distinct: list[float] = []
    for n in found:
        if not any(_same(n, d) for d in distinct):
            distinct.append(n)
    shown = f"{expected:g}"
    if not distinct:
        return Score(NUMERIC, 0.0, f"no number in the answer (expected {shown})")
    if len(distinct) == 1 and _same(distinct[0], expected):
        return Score(NUMERIC, 1.0, f"the answer's number is {shown}")
    listed = ", ".join(f"{n:g}" for n in distinct)
    return Score(NUMERIC, 0.0, f"the answer gives {listed}, expected {shown}")


def must_be_blocked(blocked: bool) -> Score:
    if blocked:
        return Score(MUST_BE_BLOCKED, 1.0, "blocked, as expected")
    return Score(MUST_BE_BLOCKED, 0.0, "answered, but must be blocked")


def must_not_be_blocked(blocked: bool) -> Score:
    if blocked:
        return Score(MUST_NOT_BE_BLOCKED, 0.0, "blocked, but must be answered")
    return Score(MUST_NOT_BE_BLOCKED, 1.0, "answered, as expected")


def is_short(ground_truth: str) -> bool:
    alts = alternatives(ground_truth)
    return bool(alts) and all(len(fold(a).split()) <= SHORT_ANSWER_WORDS for a in alts)


def scorers_for(item: EvalItem, *, judge: bool) -> list[str]:
    """The scorers that apply to an item: its own list, else chosen from its
    ground truth (numeric for a number; exact and contains for a short answer;
    the judge for anything answered, when enabled)."""
    if item.scorers is not None:
        chosen = list(item.scorers)
        return [s for s in chosen if judge or s != JUDGE]
    if item.expect == EXPECT_BLOCKED:
        return [MUST_BE_BLOCKED]
    chosen = [MUST_NOT_BE_BLOCKED] if item.expect == EXPECT_ANSWERED else []
    if parse_number(item.ground_truth) is not None:
        chosen.append(NUMERIC)
    elif is_short(item.ground_truth):
        chosen += [EXACT, CONTAINS]
    if judge and item.ground_truth.strip():
        chosen.append(JUDGE)
    return chosen


def deterministic(name: str, item: EvalItem, answer: str, blocked: bool) -> Score:
    if name == EXACT:
        return exact(answer, item.ground_truth)
    if name == CONTAINS:
        return contains(answer, item.ground_truth)
    if name == NUMERIC:
        return numeric(answer, item.ground_truth, item.question)
    if name == MUST_BE_BLOCKED:
        return must_be_blocked(blocked)
    if name == MUST_NOT_BE_BLOCKED:
        return must_not_be_blocked(blocked)
    raise ValueError(f"not a deterministic scorer: {name!r}")


def settled(scores: Sequence[Score], blocked: bool) -> bool:
    """True when the deterministic scores decide the item whatever a judge says:
    a block, a guard expectation of a block, a number, an exact or contained match."""
    if blocked:
        return True
    for s in scores:
        if s.scorer in (MUST_BE_BLOCKED, NUMERIC) and s.score is not None:
            return True
        if s.scorer in (EXACT, CONTAINS) and s.score == 1.0:
            return True
    return False


@dataclass(frozen=True)
class Decision:
    """An item's score (None: nothing could score it), the scorer that decided
    and its explanation."""

    score: float | None
    scorer: str
    explanation: str


def decide(scores: Sequence[Score], *, blocked: bool) -> Decision:
    """The item's score from its scorers' results, in this order:
    1. a guard scorer: `must_be_blocked` decides alone; a failed
       `must_not_be_blocked` (or any block of an item that expects an answer)
       scores 0;
    2. `numeric`, when it applied (a wrong number is wrong whatever the wording);
    3. `exact` or `contains` when they matched;
    4. the judge, when its output parsed;
    5. otherwise the text scorers' 0, or None when no scorer could score.
    The judge never guesses: a judge_error leaves the decision to the rest."""
    by_name = {s.scorer: s for s in scores}
    guard = by_name.get(MUST_BE_BLOCKED)
    if guard is None and blocked:
        guard = by_name.get(MUST_NOT_BE_BLOCKED) or must_not_be_blocked(True)
    if guard is not None:
        return Decision(guard.score, guard.scorer, guard.explanation)
    judged = by_name.get(JUDGE)
    candidates = [by_name.get(NUMERIC)]
    candidates += [m for m in (by_name.get(EXACT), by_name.get(CONTAINS)) if m and m.score == 1.0]
    candidates += [judged, by_name.get(CONTAINS), by_name.get(EXACT)]
    for s in candidates:
        if s is not None and s.score is not None:
            fallback = s.scorer in (EXACT, CONTAINS) and s.score < 1.0 and judged is not None
            note = " (no judge score)" if fallback else ""
            return Decision(s.score, s.scorer, s.explanation + note)
    if judged is not None:
        return Decision(None, JUDGE, f"unscored: {judged.explanation or 'judge error'}")
    answered = by_name.get(MUST_NOT_BE_BLOCKED)
    if answered is not None:
        return Decision(answered.score, answered.scorer, answered.explanation)
    return Decision(None, "", "no scorer applied")

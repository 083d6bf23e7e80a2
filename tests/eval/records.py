"""Fixed evaluation records (no services) for the report and gate tests."""

from __future__ import annotations

from typing import Any

from services.eval import report
from services.eval.dataset import EvalItem
from services.eval.runner import EvalTurn, score_record
from services.eval.scorers import Score

META = {"kind": "meta", "format": "atalaya-eval-run/1", "fingerprint": {}, "dataset": "d.jsonl"}


def record(
    item_id: str,
    score: float | None,
    *,
    tags: tuple[str, ...] = ("general",),
    expect: str | None = None,
    blocked: bool = False,
    answer: str = "an answer",
    cost: float | None = None,
) -> dict[str, Any]:
    item = EvalItem(item_id, f"Question {item_id}?", "truth", tags, "en", expect=expect)
    turn = EvalTurn(answer=answer, blocked=blocked, latency_ms=100.0 * (1 + len(item_id)),
                ttft_ms=20.0, input_tokens=10, output_tokens=5, cost_usd=cost)  # fmt: skip
    scores = [
        Score("judge", score, "the judge's reason", None if score is not None else "judge_error")
    ]
    if expect == "blocked":
        scores = [Score("must_be_blocked", 1.0 if blocked else 0.0, "guard")]
    return score_record(item, turn, scores)


def run_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    return report.summary(META, records)


def baseline_records() -> list[dict[str, Any]]:
    return [
        record("a", 1.0, tags=("general", "en"), cost=0.001),
        record("b", 0.5, tags=("ai", "en"), cost=0.002),
        record("c", None, tags=("ai",)),
        record("g", None, tags=("guard",), expect="blocked", blocked=True, answer="refused"),
    ]

"""`atalaya eval calibrate`: how far to trust a judge model. The judge scores
every row of the calibration set (question, ground truth, answer, a human's
score); the report gives its mean absolute error against the human scores and
the Spearman rank correlation, over the rows it scored, and how many of its
outputs did not parse."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.eval.dataset import CalibrationRow
from services.eval.judge import Judge, JudgeResult


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on tie-averaged ranks); None when it
    is undefined (fewer than 2 pairs, or one side constant)."""
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    if len(x) < 2:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def mean_absolute_error(x: Sequence[float], y: Sequence[float]) -> float | None:
    if not x:
        return None
    return statistics.fmean(abs(a - b) for a, b in zip(x, y, strict=True))


@dataclass(frozen=True)
class CalibrationResult:
    rows: list[tuple[CalibrationRow, JudgeResult]]
    judge_model: str
    prompt: dict[str, str]

    @property
    def scored(self) -> list[tuple[CalibrationRow, float]]:
        return [(row, r.score.score) for row, r in self.rows if r.score.score is not None]

    def metrics(self) -> dict[str, Any]:
        pairs = self.scored
        human = [row.human_score for row, _ in pairs]
        judged = [s for _, s in pairs]
        mae = mean_absolute_error(human, judged)
        rho = spearman(human, judged)
        return {
            "rows": len(self.rows),
            "scored": len(pairs),
            "judge_errors": len(self.rows) - len(pairs),
            "unparseable_outputs": sum(r.parse_failures for _, r in self.rows),
            "rows_with_an_unparseable_output": sum(1 for _, r in self.rows if r.parse_failures),
            "retried": sum(1 for _, r in self.rows if r.attempts > 1),
            "mae": None if mae is None else round(mae, 4),
            "spearman": None if rho is None else round(rho, 4),
            "judge_model": self.judge_model,
            "judge_prompt": self.prompt,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics(),
            "rows": [
                {
                    "id": row.id,
                    "source": row.source,
                    "human_score": row.human_score,
                    "judge_score": r.score.score,
                    "explanation": r.score.explanation,
                    "error": r.score.error,
                    "attempts": r.attempts,
                    "raw": r.raw,
                }
                for row, r in self.rows
            ],
        }

    def format(self) -> str:
        m = self.metrics()
        lines = [f"{'id':<26} {'source':<7} {'human':>6} {'judge':>6}  explanation"]
        for row, r in self.rows:
            judged = "-" if r.score.score is None else f"{r.score.score:.2f}"
            lines.append(
                f"{row.id[:26]:<26} {row.source[:7]:<7} {row.human_score:>6.2f} {judged:>6}  "
                f"{r.score.explanation[:90]}"
            )
        mae = "n/a" if m["mae"] is None else f"{m['mae']:.3f}"
        rho = "n/a" if m["spearman"] is None else f"{m['spearman']:.3f}"
        lines += [
            "",
            f"judge {m['judge_model'] or '(server default)'}, prompt "
            f"{m['judge_prompt']['name']}@{m['judge_prompt']['version']}",
            f"scored {m['scored']}/{m['rows']} rows; judge_error {m['judge_errors']}; "
            f"unparseable outputs {m['unparseable_outputs']} "
            f"(in {m['rows_with_an_unparseable_output']} rows, retried {m['retried']})",
            f"agreement with the human scores over the scored rows: MAE {mae}, Spearman {rho}",
        ]
        return "\n".join(lines)


async def calibrate(
    rows: Sequence[CalibrationRow], judge: Judge, judge_model: str = ""
) -> CalibrationResult:
    """Judge each row in turn (a local model serves one sequence at a time)."""
    results = [(row, await judge.judge(row.question, row.ground_truth, row.answer)) for row in rows]
    return CalibrationResult(results, judge_model, judge.prompt.ref())

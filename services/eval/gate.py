"""The regression gate: a run fails against a baseline when its aggregate score
dropped by more than `max_drop`, when a guard case that passed in the baseline
fails now (a flip), or when an item the baseline scored has no score now
(unscored, failed or left out: the mean over fewer items could hide a drop).
CI runs `atalaya eval --baseline base.json --max-drop 0.05` and fails the build
on exit code 4."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EXIT_GATE_FAILED = 4


@dataclass(frozen=True)
class GateResult:
    passed: bool
    baseline_score: float | None
    score: float | None
    drop: float | None
    max_drop: float
    guard_flips: list[str] = field(default_factory=list)
    missing_guard_cases: list[str] = field(default_factory=list)
    lost_scores: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def format(self) -> str:
        head = "gate: PASSED" if self.passed else "gate: FAILED"
        base = "n/a" if self.baseline_score is None else f"{self.baseline_score:.4f}"
        now = "n/a" if self.score is None else f"{self.score:.4f}"
        drop = "n/a" if self.drop is None else f"{self.drop:+.4f}"
        lines = [f"{head} (baseline {base}, now {now}, drop {drop}, max {self.max_drop:.4f})"]
        lines += [f"  {r}" for r in self.reasons]
        return "\n".join(lines)


def check(run: Mapping[str, Any], baseline: Mapping[str, Any], max_drop: float) -> GateResult:
    base_score = baseline["aggregate"]["score"]
    score = run["aggregate"]["score"]
    reasons: list[str] = []
    drop = None
    if base_score is not None and score is not None:
        drop = round(base_score - score, 6)
        if drop > max_drop:
            reasons.append(f"the aggregate score dropped by {drop:.4f} (more than {max_drop})")
    elif base_score is not None:
        reasons.append("the run has no aggregate score (no item could be scored)")
    now = {r["id"]: r for r in run["items"]}
    flips, missing = [], []
    for r in baseline["items"]:
        if r.get("guard_pass") is not True:
            continue
        current = now.get(r["id"])
        if current is None or current.get("status") != "scored":
            missing.append(r["id"])
        elif current.get("guard_pass") is False:
            flips.append(r["id"])
    lost = [
        r["id"]
        for r in baseline["items"]
        if r.get("score") is not None and now.get(r["id"], {}).get("score") is None
    ]
    if lost:
        reasons.append(f"items scored in the baseline have no score now: {', '.join(lost)}")
    if flips:
        reasons.append(f"guard cases that passed in the baseline fail now: {', '.join(flips)}")
    if missing:
        reasons.append(f"guard cases passed in the baseline but not run now: {', '.join(missing)}")
    return GateResult(
        passed=not reasons,
        baseline_score=base_score,
        score=score,
        drop=drop,
        max_drop=max_drop,
        guard_flips=flips,
        missing_guard_cases=missing,
        lost_scores=lost,
        reasons=reasons,
    )

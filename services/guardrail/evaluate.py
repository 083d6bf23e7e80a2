"""`make eval-guard`: how well the guardrail classifies, on the labeled
evaluation file (services/guardrail/data/eval.jsonl, kept apart from the
semantic detector's exemplars).

Each item runs through every detector alone and through the named policies
(default: the cascade; parallel), with the server's own detectors and settings:
the embedding service (started here on a free port unless --embedding-target is
given) and llama_guard on its configured engine (locally the stand-in). Printed:
precision, recall and F1 of unsafe-vs-safe and per category, for each detector
and policy, and the share of requests the cascade sends to llama_guard. A
detector that fails (error, timeout, UNPARSEABLE) counts as UNSAFE, as the
default fail-closed policy would decide; the `failed` column says how often.

    python -m services.guardrail.evaluate [--limit N] [--skip llama_guard] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common import topology
from services.common.process import HOST, ServiceProcess, free_port
from services.common.settings import load_settings
from services.guardrail.config import GuardrailSettings
from services.guardrail.core import ClassifyCall, GuardrailCore
from services.guardrail.detectors.semantic import DATA_DIR
from services.guardrail.domain import Detector, DetectorName, DetectorResult, GuardInput, Verdict
from services.guardrail.policy import resolve_policies
from services.guardrail.protocol import CATEGORIES
from services.guardrail.server import build_detectors

DEFAULT_EVAL = DATA_DIR / "eval.jsonl"
DEFAULT_CONTEXT = "Can you help me with something?"


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    unsafe: bool
    codes: frozenset[str]
    role: str
    prompt: str


def load_items(path: Path) -> list[Item]:
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            items.append(
                Item(
                    id=row["id"],
                    text=row["text"],
                    unsafe=row["label"] == "unsafe",
                    codes=frozenset(row.get("categories", ())),
                    role=row.get("role", "user"),
                    prompt=row.get("prompt", DEFAULT_CONTEXT),
                )
            )
    return items


def messages(item: Item) -> list[tuple[str, str]]:
    if item.role == "assistant":
        return [("user", item.prompt), ("assistant", item.text)]
    return [("user", item.text)]


class Memo(Detector):
    """A detector whose results are kept per request id, so that policies reuse
    the runs of the detectors alone (one llama_guard call per item, not three)."""

    def __init__(self, inner: Detector) -> None:
        self.name = inner.name
        self._inner = inner
        self.results: dict[str, DetectorResult] = {}
        self.latencies_ms: dict[str, float] = {}

    def covers(self) -> frozenset[str]:
        return self._inner.covers()

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def classify(self, guard_input: GuardInput) -> DetectorResult:
        key = guard_input.request_id
        if key not in self.results:
            started = time.perf_counter()
            self.results[key] = await self._inner.classify(guard_input)
            self.latencies_ms[key] = (time.perf_counter() - started) * 1000.0
        return self.results[key]


@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, truth: bool, predicted: bool) -> None:
        if truth and predicted:
            self.tp += 1
        elif predicted:
            self.fp += 1
        elif truth:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "precision": round(self.precision, 3),
            "recall": round(self.recall, 3),
            "f1": round(self.f1, 3),
            "support": self.tp + self.fn,
        }


@dataclass
class Row:
    """One detector or policy over the whole file."""

    name: str
    binary: Scores = field(default_factory=Scores)
    per_category: dict[str, Scores] = field(
        default_factory=lambda: {c.code: Scores() for c in CATEGORIES}
    )
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, item: Item, unsafe: bool, codes: Iterable[str], failed: bool) -> None:
        self.failed += failed
        self.binary.add(item.unsafe, unsafe)
        found = set(codes)
        for code, scores in self.per_category.items():
            scores.add(code in item.codes, code in found)


async def evaluate(
    settings: GuardrailSettings, items: Sequence[Item], skip: set[str], policies: Sequence[str]
) -> dict[str, object]:
    wanted = [d for d in settings.detectors if d.value not in skip]
    settings = settings.model_copy(update={"detectors": wanted})
    memos = {name: Memo(d) for name, d in build_detectors(settings).items()}
    usable = {
        name: p
        for name, p in resolve_policies(settings.policies).items()
        if name in policies and all(d in memos for d in p.detectors)
    }
    core = GuardrailCore(
        memos, usable, settings.model_copy(update={"default_policy": next(iter(usable))})
    )
    await core.start()
    rows = {name.value: Row(name.value) for name in memos} | {f"policy:{p}": Row(p) for p in usable}
    escalated = 0
    try:
        for n, item in enumerate(items, 1):
            if n % 20 == 0 or n == len(items):
                print(f"{n}/{len(items)} items", file=sys.stderr, flush=True)
            call = ClassifyCall(item.id, messages(item))
            guard_input = core._guard_input(call, core.policies[next(iter(usable))])
            for name, memo in memos.items():
                result = await memo.classify(guard_input)
                failed = result.verdict.failed
                rows[name.value].add(
                    item, result.verdict is Verdict.UNSAFE or failed, result.codes, failed
                )
                rows[name.value].latencies_ms.append(memo.latencies_ms[item.id])
            for policy in usable:
                started = time.perf_counter()
                outcome = await core.classify(ClassifyCall(item.id, messages(item), policy=policy))
                row = rows[f"policy:{policy}"]
                row.add(
                    item,
                    outcome.verdict is Verdict.UNSAFE,
                    outcome.codes,
                    outcome.fail_mode_applied,
                )
                row.latencies_ms.append((time.perf_counter() - started) * 1000.0)
                if policy == "default" and any(
                    r.detector is DetectorName.LLAMA_GUARD for r in outcome.results
                ):
                    escalated += 1
    finally:
        await core.stop()
    report: dict[str, object] = {
        "items": len(items),
        "unsafe_items": sum(i.unsafe for i in items),
        "rows": {
            name: {
                **row.binary.as_dict(),
                "failed": row.failed,
                "per_category": {c: s.as_dict() for c, s in row.per_category.items()},
            }
            for name, row in rows.items()
        },
        "cascade_llm_share": round(escalated / len(items), 3) if "default" in usable else None,
        "stand_in": settings.llama_guard.is_stand_in(),
    }
    return report


def render(report: dict[str, object]) -> str:
    rows: dict[str, dict[str, object]] = report["rows"]  # type: ignore[assignment]
    out = [
        f"guard evaluation: {report['items']} items ({report['unsafe_items']} unsafe)",
        "",
        "unsafe vs safe",
        f"{'detector/policy':<18} {'precision':>9} {'recall':>7} {'F1':>6} {'failed':>7}",
    ]
    for name, row in rows.items():
        out.append(
            f"{name:<18} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} "
            f"{row['failed']:>7}"
        )
    out += ["", "F1 per category (support)", f"{'':<6}" + "".join(f"{n:>18}" for n in rows)]
    for c in CATEGORIES:
        cells = []
        for row in rows.values():
            scores = row["per_category"][c.code]  # type: ignore[index]
            cells.append(f"{scores['f1']:>12.3f} ({scores['support']:>2})")
        out.append(f"{c.code:<6}" + "".join(f"{cell:>18}" for cell in cells))
    share = report["cascade_llm_share"]
    if share is not None:
        out += ["", f"cascade_llm_share (default policy reaching llama_guard): {share:.3f}"]
    if report["stand_in"]:
        out.append(
            "llama_guard ran on a stand-in model, not a trained guard: its row shows the "
            "protocol's plumbing, not moderation quality"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-file", type=Path, default=DEFAULT_EVAL)
    parser.add_argument("--limit", type=int, default=0, help="only the first N items")
    parser.add_argument("--skip", action="append", default=[], help="a detector to leave out")
    parser.add_argument("--policy", action="append", default=[], help="policies to score")
    parser.add_argument("--embedding-target", default="", help="a running embedding service")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    items = load_items(args.eval_file)[: args.limit or None]
    settings = load_settings(GuardrailSettings)
    policies = args.policy or ["default", "parallel", "fast"]

    def run(target: str) -> dict[str, object]:
        s = settings.model_copy(
            update={"embedding": settings.embedding.model_copy(update={"target": target})}
        )
        return asyncio.run(evaluate(s, items, set(args.skip), policies))

    if args.embedding_target:
        report = run(args.embedding_target)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            embedding = ServiceProcess(
                topology.service("embedding").module,
                port,
                topology.listen_env("embedding", HOST, port),
                Path(tmp) / "embedding.log",
            ).start()
            try:
                report = run(embedding.target)
            finally:
                embedding.stop()
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

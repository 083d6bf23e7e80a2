"""The data set format: JSON lines, one item per line.

    {"id": "capital-fr-en", "question": "What is the capital of France?",
     "ground_truth": "Paris", "tags": ["general", "en"], "language": "en"}

Fields: `id` (unique), `question` (the user's message), `ground_truth` (the
expected answer; alternatives separated by " / "; may be empty for guard cases
that expect a block), optional `tags` (strings), optional `language`, optional
`history` (earlier turns, [{"role": "user"|"assistant", "content": ...}] in
order, pairs of user then assistant), optional `expect` ("blocked" or
"answered": a guard case), optional `scorers` (names from services.eval.scorers,
overriding the automatic choice). Blank lines and lines starting with # are
skipped."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.chat import ChatMessage

DATA_DIR = Path(__file__).resolve().parent / "data"
STARTER_SET = DATA_DIR / "starter.jsonl"
CALIBRATION_SET = DATA_DIR / "calibration.jsonl"

EXPECT_BLOCKED = "blocked"
EXPECT_ANSWERED = "answered"
EXPECTATIONS = (EXPECT_BLOCKED, EXPECT_ANSWERED)
ROLES = ("user", "assistant")
_FIELDS = frozenset(
    {"id", "question", "ground_truth", "tags", "language", "history", "expect", "scorers"}
)


class DatasetError(ValueError):
    """A data set file that does not follow the format; the message names the line."""


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    ground_truth: str = ""
    tags: tuple[str, ...] = ()
    language: str = ""
    history: tuple[ChatMessage, ...] = ()
    expect: str | None = None
    scorers: tuple[str, ...] | None = None

    @property
    def is_guard_case(self) -> bool:
        return self.expect is not None

    def history_pairs(self) -> list[tuple[str, str]]:
        """The history as (user, assistant) turns."""
        msgs = self.history
        return [(msgs[i].content, msgs[i + 1].content) for i in range(0, len(msgs), 2)]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "ground_truth": self.ground_truth,
            "tags": list(self.tags),
            "language": self.language,
        }
        if self.history:
            out["history"] = [{"role": m.role, "content": m.content} for m in self.history]
        if self.expect is not None:
            out["expect"] = self.expect
        if self.scorers is not None:
            out["scorers"] = list(self.scorers)
        return out


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"`{name}` must be a list of non-empty strings")
    return tuple(value)


def _history(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list):
        raise ValueError("`history` must be a list of {role, content} objects")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"role", "content"}:
            raise ValueError(f"history[{i}] must be an object with `role` and `content`")
        role, content = entry["role"], entry["content"]
        expected = ROLES[i % 2]
        if role != expected:
            raise ValueError(f"history[{i}] must have role {expected!r} (user/assistant pairs)")
        if not isinstance(content, str) or not content:
            raise ValueError(f"history[{i}].content must be a non-empty string")
        out.append(ChatMessage(role, content))
    if len(out) % 2:
        raise ValueError("`history` must end with an assistant message")
    return tuple(out)


def parse_item(data: Any, known_scorers: Iterable[str] = ()) -> EvalItem:
    """One item from its decoded JSON; ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("an item must be a JSON object")
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    for name in ("id", "question"):
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise ValueError(f"`{name}` must be a non-empty string")
    ground_truth = data.get("ground_truth", "")
    if not isinstance(ground_truth, str):
        raise ValueError("`ground_truth` must be a string")
    expect = data.get("expect")
    if expect is not None and expect not in EXPECTATIONS:
        raise ValueError(f"`expect` must be one of {list(EXPECTATIONS)}")
    if expect != EXPECT_BLOCKED and not ground_truth.strip():
        raise ValueError("`ground_truth` is required unless the item expects a block")
    language = data.get("language", "")
    if not isinstance(language, str):
        raise ValueError("`language` must be a string")
    scorers = None
    if "scorers" in data:
        scorers = _strings(data["scorers"], "scorers")
        known = set(known_scorers)
        if known and not set(scorers) <= known:
            raise ValueError(f"unknown scorers {sorted(set(scorers) - known)}")
    return EvalItem(
        id=data["id"].strip(),
        question=data["question"],
        ground_truth=ground_truth,
        tags=_strings(data.get("tags", []), "tags"),
        language=language,
        history=_history(data.get("history", [])),
        expect=expect,
        scorers=scorers,
    )


def parse_lines(
    lines: Sequence[str], source: str, known_scorers: Iterable[str] = ()
) -> list[EvalItem]:
    items: list[EvalItem] = []
    seen: set[str] = set()
    known = tuple(known_scorers)
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            item = parse_item(json.loads(text), known)
        except (json.JSONDecodeError, ValueError) as exc:
            raise DatasetError(f"{source}:{number}: {exc}") from None
        if item.id in seen:
            raise DatasetError(f"{source}:{number}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise DatasetError(f"{source}: no items")
    return items


def load_dataset(path: Path, known_scorers: Iterable[str] = ()) -> list[EvalItem]:
    """Every item of a JSONL data set, validated (DatasetError on the first bad line)."""
    return parse_lines(path.read_text(encoding="utf-8").splitlines(), str(path), known_scorers)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class CalibrationRow:
    """A (question, ground truth, answer) with a human's score in [0, 1]."""

    id: str
    question: str
    ground_truth: str
    answer: str
    human_score: float
    source: str
    note: str = ""
    tags: tuple[str, ...] = field(default=())


def load_calibration(path: Path) -> list[CalibrationRow]:
    """The calibration set: JSON lines with id, question, ground_truth, answer,
    human_score, source (who scored it) and an optional note."""
    rows: list[CalibrationRow] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            data = json.loads(text)
            score = float(data["human_score"])
            if not 0.0 <= score <= 1.0:
                raise ValueError("human_score must be in [0, 1]")
            rows.append(
                CalibrationRow(
                    id=str(data["id"]),
                    question=str(data["question"]),
                    ground_truth=str(data["ground_truth"]),
                    answer=str(data["answer"]),
                    human_score=score,
                    source=str(data["source"]),
                    note=str(data.get("note", "")),
                    tags=tuple(data.get("tags", [])),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}:{number}: {exc}") from None
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows

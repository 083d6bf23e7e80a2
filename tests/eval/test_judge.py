"""The judge: its strict output parser, the one retry, judge_error, the prompt
file, and the calibration metrics."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.eval.calibrate import calibrate, mean_absolute_error, ranks, spearman
from services.eval.dataset import CALIBRATION_SET, load_calibration
from services.eval.judge import (
    Judge,
    JudgeParseError,
    JudgePrompt,
    Messages,
    parse_judge_output,
)


@pytest.mark.parametrize(
    ("text", "score", "explanation"),
    [
        ('{"score": 1, "explanation": "Correct."}', 1.0, "Correct."),
        ('  {"explanation": "Half right.", "score": 0.5}\n', 0.5, "Half right."),
        ('```json\n{"score": 0.0, "explanation": "Wrong number."}\n```', 0.0, "Wrong number."),
        ('{"score": 0.95, "explanation": "Same  meaning,\\n other words."}', 0.95,
         "Same meaning, other words."),
    ],
)  # fmt: skip
def test_good_outputs_parse(text: str, score: float, explanation: str) -> None:
    verdict = parse_judge_output(text)
    assert (verdict.score, verdict.explanation) == (score, explanation)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty output"),
        ("The answer is correct.", "not JSON"),
        ('Sure! {"score": 1, "explanation": "ok"}', "not JSON"),
        ('{"score": 1, "explanation": "ok"} Hope this helps', "not JSON"),
        ('{"score": 1, "explanation": "ok"', "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"score": 1}', "keys must be exactly"),
        ('{"score": 1, "explanation": "ok", "confidence": 0.9}', "keys must be exactly"),
        ('{"score": "1", "explanation": "ok"}', "score is not a number"),
        ('{"score": true, "explanation": "ok"}', "score is not a number"),
        ('{"score": 1.5, "explanation": "ok"}', "outside"),
        ('{"score": -0.1, "explanation": "ok"}', "outside"),
        ('{"score": NaN, "explanation": "ok"}', "outside"),
        ('{"score": 0.5, "explanation": "  "}', "explanation is not"),
        ('{"score": 0.5, "explanation": 3}', "explanation is not"),
    ],
)
def test_broken_outputs_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(JudgeParseError, match=why):
        parse_judge_output(text)


class FakeBackend:
    """Replies from a list; an Exception in the list is raised instead."""

    def __init__(self, replies: Sequence[str | Exception]) -> None:
        self.replies = list(replies)
        self.calls: list[Messages] = []

    async def complete(self, messages: Messages) -> str:
        self.calls.append(list(messages))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


PROMPT = JudgePrompt.load()


async def test_a_good_first_answer_is_used() -> None:
    backend = FakeBackend(['{"score": 0.9, "explanation": "Right."}'])
    result = await Judge(backend, PROMPT).judge("What is 12 x 8?", "96", "96")
    assert (result.score.score, result.attempts, result.parse_failures) == (0.9, 1, 0)
    (messages,) = backend.calls
    assert [role for role, _ in messages] == ["system", "user"]
    assert "Ground truth: 96" in messages[1][1] and "Answer: 96" in messages[1][1]


async def test_an_unparseable_answer_is_retried_once_with_the_reason() -> None:
    backend = FakeBackend(["It is correct!", '{"score": 1, "explanation": "Right."}'])
    result = await Judge(backend, PROMPT).judge("q", "Paris", "París")
    assert (result.score.score, result.attempts, result.parse_failures) == (1.0, 2, 1)
    retry = backend.calls[1]
    assert [role for role, _ in retry] == ["system", "user", "assistant", "user"]
    assert retry[2][1] == "It is correct!" and "not JSON" in retry[3][1]


async def test_two_failures_are_recorded_as_judge_error_never_guessed() -> None:
    backend = FakeBackend(["Score: 1", '{"score": 1.0}', "never asked"])
    result = await Judge(backend, PROMPT).judge("q", "Paris", "Paris")
    assert result.score.score is None and result.score.error == "judge_error"
    assert "keys must be exactly" in result.score.explanation
    assert (result.attempts, result.parse_failures, len(backend.calls)) == (2, 2, 2)
    assert result.raw == ["Score: 1", '{"score": 1.0}']


async def test_a_failed_call_is_retried_then_recorded() -> None:
    backend = FakeBackend([ConnectionError("down"), ConnectionError("still down")])
    result = await Judge(backend, PROMPT).judge("q", "a", "b")
    assert result.score.score is None and result.parse_failures == 0
    assert "judge call failed: ConnectionError: still down" in result.score.explanation


def test_the_prompt_file_is_versioned_and_hashed() -> None:
    ref = PROMPT.ref()
    assert ref["name"] == "judge" and ref["version"] and len(ref["sha256"]) == 64
    text = PROMPT.render_user("Q {answer}?", "{question}", "A")
    assert "Question: Q {answer}?" in text and "Ground truth: {question}" in text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('name = "j"\nversion = "1"\nsystem = "s"\nuser = "{question}"\n', "not a judge prompt"),
        ('name = "j"\nversion = "1\n', "not a judge prompt"),
        (
            'name = "j"\nversion = "1"\nsystem = "s"\nretry = "r"\nuser = "{question} {answer}"\n',
            "the user text needs a {ground_truth} placeholder",
        ),
    ],
)
def test_a_broken_prompt_file_is_refused_naming_the_file(
    tmp_path: Path, text: str, why: str
) -> None:
    path = tmp_path / "judge.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}: {why}")):
        JudgePrompt.load(path)


def test_rank_correlation_and_error() -> None:
    assert ranks([0.5, 0.1, 0.5, 0.9]) == [2.5, 1.0, 2.5, 4.0]
    assert spearman([0, 0.5, 1], [0.1, 0.2, 0.9]) == pytest.approx(1.0)
    assert spearman([0, 0.5, 1], [0.9, 0.2, 0.1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [0, 0.5, 1]) is None
    assert spearman([1], [1]) is None
    assert mean_absolute_error([1.0, 0.0], [0.5, 0.0]) == 0.25
    assert mean_absolute_error([], []) is None


async def test_calibration_counts_parse_failures_and_scores_the_rest() -> None:
    rows = load_calibration(CALIBRATION_SET)[:3]  # the seed's rows: 1.0, 0.0, 0.95
    backend = FakeBackend([
        '{"score": 1, "explanation": "Same city."}',
        "98 is wrong", "still not JSON",
        '{"score": 0.8, "explanation": "Close in meaning."}',
    ])  # fmt: skip
    result = await calibrate(rows, Judge(backend, PROMPT))
    m = result.metrics()
    assert (m["rows"], m["scored"], m["judge_errors"], m["unparseable_outputs"]) == (3, 2, 1, 2)
    assert m["mae"] == pytest.approx(0.075) and m["spearman"] == pytest.approx(1.0)
    assert "unparseable outputs 2" in result.format()
    assert result.to_json()["rows"][1]["error"] == "judge_error"

"""The data set format, the shipped starter and calibration sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.eval.dataset import (
    CALIBRATION_SET,
    STARTER_SET,
    DatasetError,
    load_calibration,
    load_dataset,
    parse_lines,
)
from services.eval.scorers import ALL_SCORERS


def test_the_starter_set_loads_in_both_languages_with_guard_cases() -> None:
    items = load_dataset(STARTER_SET, ALL_SCORERS)
    assert {i.language for i in items} == {"en", "es"}
    assert {i.expect for i in items} == {None, "blocked", "answered"}
    by_id = {i.id: i for i in items}
    assert by_id["gk-capital-fr-es"].ground_truth == "París"
    assert by_id["gk-12x8-en"].ground_truth == "96"
    assert any(i.history for i in items)
    assert {"ai", "general", "guard"} <= {t for i in items for t in i.tags}


def test_the_calibration_set_has_the_seed_rows_and_labelled_team_rows() -> None:
    rows = {r.id: r for r in load_calibration(CALIBRATION_SET)}
    assert (rows["seed-capital-fr"].answer, rows["seed-capital-fr"].human_score) == ("París", 1.0)
    assert (rows["seed-12x8"].answer, rows["seed-12x8"].human_score) == ("98", 0.0)
    assert rows["seed-carpe-diem"].human_score == 0.95
    assert {r.source for r in rows.values()} == {"seed", "team"}
    assert len(rows) >= 12


def line(**data: object) -> str:
    return json.dumps(data)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([line(id="a", question="q")], "`ground_truth` is required"),
        ([line(id="a", question="q", ground_truth="x", expect="maybe")], "`expect` must be"),
        ([line(id="a", question="q", ground_truth="x", colour="red")], "unknown fields"),
        ([line(id="a", question="q", ground_truth="x")] * 2, "duplicate id 'a'"),
        (["{not json"], "t.jsonl:1"),
        (
            [
                line(
                    id="a",
                    question="q",
                    ground_truth="x",
                    history=[{"role": "assistant", "content": "hi"}],
                )
            ],
            "must have role 'user'",
        ),
        (
            [
                line(
                    id="a",
                    question="q",
                    ground_truth="x",
                    history=[{"role": "user", "content": "hi"}],
                )
            ],
            "must end with an assistant message",
        ),
        ([line(id="a", question="q", ground_truth="x", scorers=["vibes"])], "unknown scorers"),
        (["# only a comment"], "no items"),
    ],
)
def test_bad_lines_are_reported_with_their_line(lines: list[str], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_lines(lines, "t.jsonl", ALL_SCORERS)


def test_a_guard_case_may_have_no_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(line(id="g", question="bad", expect="blocked", tags=["guard"]) + "\n")
    (item,) = load_dataset(path)
    assert item.is_guard_case and item.ground_truth == "" and item.tags == ("guard",)

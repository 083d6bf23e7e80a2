"""Load shapes as functions of time, pacing, and the settings' checks."""

from __future__ import annotations

import pytest

from loadtests.locust.prompts import load_conversations, simulator_scripts
from loadtests.locust.settings import PROMPTS_PATH, LoadSettings, is_loopback
from loadtests.locust.shapes import ShapeParams, pacing_s, shape_at


def test_constant_and_arrival_hold_users_until_the_run_time() -> None:
    for kind in ("constant", "arrival"):
        p = ShapeParams(kind, users=5, spawn_rate=2.0, run_time_s=30)
        assert shape_at(p, 0) == (5, 2.0)
        assert shape_at(p, 29.9) == (5, 2.0)
        assert shape_at(p, 30) is None


def test_step_ramp() -> None:
    p = ShapeParams("step", users=7, spawn_rate=1.0, run_time_s=60, step_users=2, step_seconds=10)
    assert [shape_at(p, t)[0] for t in (0, 9.9, 10, 25, 35, 59)] == [2, 2, 4, 6, 7, 7]  # type: ignore[index]
    assert shape_at(p, 60) is None


def test_spike_goes_up_and_comes_back() -> None:
    p = ShapeParams("spike", users=2, spawn_rate=2, run_time_s=40, spike_at_s=10, spike_seconds=5)
    assert shape_at(p, 5) == (2, 8.0)
    assert shape_at(p, 10) == (8, 8.0)  # four times the base by default
    assert shape_at(p, 14.9) == (8, 8.0)
    assert shape_at(p, 15) == (2, 8.0)


def test_soak_ramps_then_holds() -> None:
    p = ShapeParams("soak", users=10, spawn_rate=1, run_time_s=600, ramp_seconds=20)
    assert shape_at(p, 0) == (10, 0.5)
    assert shape_at(p, 599) == (10, 0.5)
    assert shape_at(p, 600) is None


def test_unknown_shape_and_pacing() -> None:
    with pytest.raises(ValueError):
        shape_at(ShapeParams("zigzag", 1, 1), 0)
    assert pacing_s(arrival_rate=4.0, users=8) == 2.0  # 8 users x 1 request / 2 s = 4/s
    with pytest.raises(ValueError):
        pacing_s(0, 1)


def test_settings_checks() -> None:
    LoadSettings().validate()
    assert is_loopback("127.0.0.1:50051") and is_loopback("localhost:1") and is_loopback("[::1]:5")
    assert not is_loopback("10.0.0.1:50051")
    with pytest.raises(ValueError, match="loopback"):
        LoadSettings(gateway="10.1.2.3:50051").validate()
    LoadSettings(gateway="10.1.2.3:50051", allow_remote=True).validate()
    with pytest.raises(ValueError, match="arrival"):
        LoadSettings(shape="arrival").validate()
    with pytest.raises(ValueError, match="weights"):
        LoadSettings(chat_weight=0, embed_weight=0, classify_weight=0, recall_weight=0).validate()
    assert LoadSettings(slo_ttft_p95_ms=250).slo.ttft_p95_ms == 250


def test_shipped_prompt_set() -> None:
    conversations = load_conversations(PROMPTS_PATH)
    lengths = {len(c.turns) for c in conversations}
    assert len(conversations) >= 10 and min(lengths) == 1 and max(lengths) >= 4
    scripts = simulator_scripts(conversations)
    assert "Paris" in scripts["What is the capital of France?"]
    assert "96" in scripts["What is 12 x 8?"]
    assert "seize the day" in scripts["What does carpe diem mean?"]
    assert any("language model" in t.user for c in conversations for t in c.turns)

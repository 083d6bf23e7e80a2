"""Generation settings choose and configure the engine."""

from __future__ import annotations

import json

import pytest

from services.common.settings import SettingsError, load_settings
from services.engines.base import cost_usd
from services.engines.settings import engine_from_settings
from services.generation.config import GenerationSettings


def test_sim_backend_from_env_is_labelled_a_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATALAYA_GENERATION_BACKEND", "sim")
    monkeypatch.setenv("ATALAYA_GENERATION_SIM__MAX_CONCURRENT_SEQUENCES", "3")
    monkeypatch.setenv("ATALAYA_GENERATION_SIM__CONTEXT_WINDOW", "512")
    info = engine_from_settings(load_settings(GenerationSettings)).info
    assert (info.backend, info.simulator) == ("sim", True)
    assert (info.max_concurrency, info.context_window) == (3, 512)


def test_vllm_backend_needs_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATALAYA_GENERATION_BACKEND", "vllm")
    with pytest.raises(SettingsError, match="ATALAYA_GENERATION_VLLM__MODEL"):
        load_settings(GenerationSettings)


def test_vllm_settings_with_lora_adapters_build_the_engine_without_vllm_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATALAYA_GENERATION_BACKEND", "vllm")
    monkeypatch.setenv(
        "ATALAYA_GENERATION_VLLM",
        json.dumps(
            {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "max_model_len": 8192,
                "enable_lora": True,
                "lora_adapters": {"sql": "/adapters/sql"},
            }
        ),
    )
    info = engine_from_settings(load_settings(GenerationSettings)).info
    assert info.backend == "vllm" and not info.simulator
    assert info.adapters == ("sql",)
    assert info.context_window == 8192


def test_unknown_backend_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATALAYA_GENERATION_BACKEND", "tgi")
    with pytest.raises(SettingsError, match="ATALAYA_GENERATION_BACKEND"):
        load_settings(GenerationSettings)


def test_openai_backend_with_a_price_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATALAYA_GENERATION_BACKEND", "openai")
    monkeypatch.setenv(
        "ATALAYA_GENERATION_OPENAI",
        json.dumps(
            {
                "base_url": "https://api.example.com/v1",
                "model": "gpt-4o",
                "api_key_env": "EXAMPLE_API_KEY",
                "prices": {"gpt-4o": {"input_per_million": 2.5, "output_per_million": 10.0}},
            }
        ),
    )
    info = engine_from_settings(load_settings(GenerationSettings)).info
    assert info.backend == "openai"
    assert (info.usd_per_million_input_tokens, info.usd_per_million_output_tokens) == (2.5, 10.0)
    # The seed's example: a 5,000-token prompt and 10 calls per user, output aside.
    assert cost_usd(info, 5000 * 10, 0) == pytest.approx(0.125)

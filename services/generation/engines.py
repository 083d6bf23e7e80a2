"""The engine a generation service runs, chosen by ATALAYA_GENERATION_BACKEND.
Engine modules are imported only when chosen: a CPU image needs no vLLM."""

from __future__ import annotations

from services.engines.base import Engine
from services.generation.config import GenerationSettings, SimSettings


def sim_engine(s: SimSettings) -> Engine:
    from services.engines.sim import LatencyDistribution, SimConfig, SimEngine

    return SimEngine(
        SimConfig(
            name=s.name,
            context_window=s.context_window,
            default_max_tokens=s.default_max_tokens,
            ttft=LatencyDistribution(s.ttft_mean_ms, s.ttft_stddev_ms, s.distribution),
            inter_token_latency=LatencyDistribution(s.itl_mean_ms, s.itl_stddev_ms, s.distribution),
            prefill_ms_per_input_token=s.prefill_ms_per_input_token,
            slowdown_per_sequence=s.slowdown_per_sequence,
            max_concurrent_sequences=s.max_concurrent_sequences,
            max_queued_requests=s.max_queued_requests,
            seed=s.seed,
            eos_probability=s.eos_probability,
        )
    )


def engine_from_settings(settings: GenerationSettings) -> Engine:
    if settings.backend == "llamacpp":
        from services.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(settings.llamacpp)
    if settings.backend == "sim":
        return sim_engine(settings.sim)
    if settings.backend == "openai":
        from services.engines.openai import OpenAIEngine

        assert settings.openai is not None  # checked by the settings
        return OpenAIEngine(settings.openai)
    if settings.backend == "vllm":
        from services.engines.vllm import VllmEngine

        assert settings.vllm is not None  # checked by the settings
        return VllmEngine(settings.vllm)
    raise ValueError(f"unknown backend {settings.backend!r}")  # the settings exclude this

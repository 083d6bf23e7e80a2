"""Guardrail service settings (env prefix ATALAYA_GUARDRAIL_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common import topology
from services.common.settings import EmbeddingChannelSettings, ServiceSettings
from services.engines.llamacpp import LlamaCppConfig
from services.engines.settings import EngineSettings
from services.guardrail.detectors.semantic import DEFAULT_EXEMPLARS
from services.guardrail.domain import DetectorName
from services.guardrail.policy import PolicySettings

DEFAULT_PORT = topology.port("guardrail")


class LlamaGuardSettings(EngineSettings):
    """The llama_guard detector's engine: ATALAYA_GUARDRAIL_LLAMA_GUARD__BACKEND,
    ..._LLAMA_GUARD__VLLM__MODEL=meta-llama/Llama-Guard-3-1B, ..._LLAMA_GUARD__
    LLAMACPP__MODEL_PATH=/models/Llama-Guard-3-1B.Q8_0.gguf. With no model
    configured (the default), the bundled SmolLM2-135M-Instruct runs the protocol
    as a stand-in."""

    llamacpp: LlamaCppConfig = Field(
        default_factory=lambda: LlamaCppConfig(reuse_prompt_cache=True),
        description="As the generation service's, with the prompt cache on: the policy "
        "prompt is a prefix shared by every request.",
    )
    prompt_format: Literal["auto", "template", "chat"] = Field(
        "auto",
        description="template: the official prompt with special tokens (a Llama Guard "
        "model); chat: the protocol as a chat message (a stand-in). auto: chat for the "
        "stand-in, template otherwise.",
    )
    tokenizer_path: str = Field(
        "", description="A local tokenizer folder whose chat template renders the prompt."
    )
    stand_in: bool | None = Field(
        None,
        description="Label verdicts as a stand-in's (not a trained guard). Unset: true "
        "for the bundled model and the simulator, false otherwise.",
    )
    max_tokens: int = Field(20, ge=1, le=64, description="'unsafe' + up to 14 codes.")
    max_prompt_tokens: int = Field(4096, ge=16)

    @model_validator(mode="after")
    def _prefix_caching_for_vllm(self) -> Self:
        if self.vllm is not None and self.vllm.enable_prefix_caching is False:
            raise ValueError("llama_guard on vLLM needs enable_prefix_caching (a shared prefix)")
        return self

    def is_stand_in(self) -> bool:
        if self.stand_in is not None:
            return self.stand_in
        if self.backend == "sim":
            return True
        return self.backend == "llamacpp" and not self.llamacpp.model_path

    def resolved_format(self) -> Literal["template", "chat"]:
        if self.prompt_format != "auto":
            return self.prompt_format
        return "chat" if self.is_stand_in() else "template"


class SemanticSettings(BaseModel):
    model_config = {"frozen": True}

    exemplars_path: Path = Field(DEFAULT_EXEMPLARS, description="JSONL of labeled exemplars.")
    band_low: float = Field(0.45, ge=0, le=1, description="Scores below: confident SAFE.")
    band_high: float = Field(
        0.65, ge=0, le=1, description="Scores at or above (nearest is unsafe): confident UNSAFE."
    )


class GuardrailSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ATALAYA_GUARDRAIL_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    default_policy: str = Field("default", description="Policy of requests that name none.")
    policies: dict[str, PolicySettings] = Field(
        default_factory=dict,
        description="Extra or replaced named policies, as JSON: ATALAYA_GUARDRAIL_POLICIES="
        '\'{"strict": {"mode": "parallel"}, "kids": {"categories": ["S1", "S4", "S12"]}}\'. '
        "Built in: default, parallel, fast, pii.",
    )
    detectors: list[DetectorName] = Field(
        default_factory=lambda: list(DetectorName),
        description="Detectors this server loads; policies may only use these.",
    )
    max_inflight: int = Field(
        256, ge=1, description="Classifications at once; more are RESOURCE_EXHAUSTED."
    )
    max_messages: int = Field(64, ge=1)
    max_message_chars: int = Field(32_768, ge=1)
    embedding: EmbeddingChannelSettings = Field(default_factory=EmbeddingChannelSettings)
    semantic: SemanticSettings = Field(default_factory=SemanticSettings)
    llama_guard: LlamaGuardSettings = Field(default_factory=LlamaGuardSettings)

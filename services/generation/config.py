"""Generation service settings (env prefix ATALAYA_GENERATION_). The engine
settings (BACKEND, LLAMACPP__..., SIM__..., OPENAI, VLLM__...) are
services.engines.settings.EngineSettings, with <PREFIX> = ATALAYA_GENERATION_."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common import topology
from services.common.settings import ServiceSettings
from services.engines.settings import EngineSettings

DEFAULT_PORT = topology.port("generation")


class GenerationSettings(ServiceSettings, EngineSettings):
    model_config = SettingsConfigDict(
        env_prefix="ATALAYA_GENERATION_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
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

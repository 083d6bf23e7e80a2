"""Gateway service settings (env prefix ATALAYA_GATEWAY_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common import topology
from services.common.edge_auth import EdgeAuthSettings
from services.common.settings import ChannelSettings, ServiceSettings
from services.gateway.templates import DEFAULT_TEMPLATE

DEFAULT_PORT = topology.port("gateway")


class GuardrailChannel(ChannelSettings):
    target: str = Field(topology.target("guardrail"), description="The guardrail service.")


class MemoryChannel(ChannelSettings):
    target: str = Field(topology.target("memory"), description="The memory service.")


class GenerationChannel(ChannelSettings):
    target: str = Field(topology.target("generation"), description="The generation service.")


class Limits(BaseModel):
    """Token-bucket limits of one tenant or one user; 0 means no limit."""

    model_config = {"frozen": True}

    requests_per_s: float = Field(0.0, ge=0, description="Sustained requests per second.")
    request_burst: float = Field(
        0.0, ge=0, description="Requests allowed at once; 0: max(1, requests_per_s)."
    )
    tokens_per_min: float = Field(
        0.0,
        ge=0,
        description="Generated and prompt tokens per minute, charged when a turn ends.",
    )
    token_burst: float = Field(0.0, ge=0, description="Bucket size; 0: tokens_per_min.")


class TenantLimits(BaseModel):
    """A tenant's own limits, replacing the defaults it names."""

    model_config = {"frozen": True}

    tenant: Limits | None = None
    user: Limits | None = None


class QuotaSettings(BaseModel):
    """Rate limits and quotas per tenant and per user (ATALAYA_GATEWAY_QUOTAS__...;
    `overrides` as JSON: {"acme": {"tenant": {"requests_per_s": 50}}})."""

    model_config = {"frozen": True}

    tenant: Limits = Field(default_factory=Limits, description="Each tenant's limits.")
    user: Limits = Field(default_factory=Limits, description="Each user's limits.")
    overrides: dict[str, TenantLimits] = Field(
        default_factory=dict, description="Per-tenant limits, by tenant."
    )
    max_tracked_users: int = Field(
        100_000, ge=1, description="Users' buckets kept; the least recently used go first."
    )


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ATALAYA_GATEWAY_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    guardrail: GuardrailChannel = Field(default_factory=GuardrailChannel)
    memory: MemoryChannel = Field(default_factory=MemoryChannel)
    generation: GenerationChannel = Field(default_factory=GenerationChannel)

    template_path: Path = Field(DEFAULT_TEMPLATE, description="The prompt template (TOML).")
    model: str = Field("", description="Generation model; empty: generation's default.")
    input_policy: str = Field("", description="Guardrail policy of the user's message.")
    output_policy: str = Field(
        "", description="Guardrail policy of the reply's windows; empty: the input's."
    )
    fail_mode: Literal["closed", "open"] = Field(
        "closed",
        description="When the guardrail cannot be reached or fails: block (closed) or "
        "answer (open). Its own detector failures follow its policies.",
    )
    moderation_mode: Literal["buffered", "optimistic"] = "buffered"
    window_tokens: int = Field(
        32, ge=1, le=4096, description="Output moderation: tokens per checked window."
    )
    lookback_tokens: int = Field(
        16, ge=0, le=4096, description="Output moderation: earlier tokens checked with a window."
    )
    max_parallel_checks: int = Field(
        4, ge=1, le=64, description="Optimistic mode: window checks running at once."
    )
    speculative_generation: bool = Field(
        False,
        description="Start generation alongside the input check instead of after it: the "
        "guard's latency leaves the time to first token; a message blocked at input then "
        "has its generation aborted, nothing of it shown or stored.",
    )
    refusal_text: str = Field(
        "Sorry, I can't help with that.", min_length=1, description="Shown instead of a reply."
    )
    history_turns: int = Field(6, ge=0, le=100, description="Session turns put in the prompt.")
    recall_k: int = Field(3, ge=0, le=100, description="Long-term memories recalled (0: none).")
    recall_min_score: float = Field(0.35, ge=-1, le=1)
    memory_timeout_s: float = Field(
        2.0, gt=0, description="History and recall wait this long, then the turn goes on without."
    )
    guard_timeout_s: float = Field(
        15.0, gt=0, description="Longest wait for one guardrail call (within the deadline)."
    )
    default_max_tokens: int = Field(512, ge=1)
    max_output_tokens: int = Field(2048, ge=1)
    max_message_chars: int = Field(8192, ge=1)
    max_inflight_turns: int = Field(256, ge=1)
    max_turn_seconds: float = Field(
        300.0, gt=0, description="Deadline of a turn whose call has none."
    )
    gpu_usd_per_hour: float | None = Field(
        None,
        ge=0,
        description="Self-hosted models: the GPU's price per hour; a turn's cost is its share "
        "of that hour at the measured throughput (COST_BASIS_GPU_TIME).",
    )
    gpu_concurrency: int = Field(
        8, ge=1, description="Sequences one GPU runs at once (for GPU-time cost)."
    )
    auth: EdgeAuthSettings = Field(
        default_factory=EdgeAuthSettings,
        description="Who may call: off (the local default) or JWT / API key required.",
    )
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)

    @model_validator(mode="after")
    def _limits(self) -> GatewaySettings:
        if self.default_max_tokens > self.max_output_tokens:
            raise ValueError("default_max_tokens must not exceed max_output_tokens")
        return self

"""Typed settings. Each service subclasses ServiceSettings with its own env prefix
(ATALAYA_<SERVICE>_), reads them once at start with `load_settings`, and passes the
object to whatever needs it. Invalid values stop the process with a clear message."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import topology

S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    """Settings every gRPC service has. Env: ATALAYA_<SERVICE>_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="ATALAYA_", extra="ignore", frozen=True)

    host: str = Field(
        topology.DEFAULT_HOST,
        description="Address to bind; '[::]' or '0.0.0.0' in a container.",
    )
    port: int = Field(0, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_content: bool = Field(
        False,
        description="Put prompts, texts and completions on spans and debug logs. "
        "Off by default: user content stays out of telemetry.",
    )
    grace_period_s: float = Field(
        20.0, ge=0, description="On SIGTERM, in-flight RPCs get this long to finish."
    )
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_concurrent_rpcs: int | None = Field(
        None, ge=1, description="Above this, new RPCs fail with RESOURCE_EXHAUSTED."
    )
    keepalive_time_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(10.0, gt=0)
    max_connection_age_s: float = Field(
        300.0,
        gt=0,
        description="Connections are closed after this age so clients re-resolve and "
        "spread over new replicas after a scale-up.",
    )
    max_connection_age_grace_s: float = Field(30.0, ge=0)
    readiness_interval_s: float = Field(
        2.0, gt=0, description="How often readiness (and so grpc.health.v1) is re-checked."
    )


class ChannelSettings(BaseModel):
    """How to reach one upstream service; embedded in a service's settings."""

    model_config = {"frozen": True}

    target: str = Field(description="host:port or dns:///name:port")
    timeout_s: float = Field(5.0, gt=0, description="Default deadline per call.")
    max_attempts: int = Field(3, ge=1, le=5, description="Tries per call on UNAVAILABLE.")
    initial_backoff_s: float = Field(0.05, gt=0)
    max_backoff_s: float = Field(1.0, gt=0)
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    keepalive_time_s: float = Field(30.0, gt=0)


class EmbeddingChannelSettings(ChannelSettings):
    """The embedding service channel of a service that embeds text
    (<PREFIX>EMBEDDING__TARGET=...); every field has a default, so one nested
    variable (<PREFIX>EMBEDDING__TIMEOUT_S=2) keeps the others."""

    target: str = Field(topology.target("embedding"), description="host:port or dns:///name:port")


class SettingsError(SystemExit):
    """Raised when settings are invalid; exits with a readable message."""


def load_settings(cls: type[S]) -> S:
    """Read and validate settings from the environment, or exit with the reasons."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [f"invalid settings for {cls.__name__}:"]
        for err in exc.errors():
            field = "__".join(str(p) for p in err["loc"])  # env_nested_delimiter
            where = f"{prefix}{field.upper()}: " if field else ""
            # Messages of shared nested models say <PREFIX> for the variable prefix.
            msg = err["msg"].replace("<PREFIX>", f"{prefix}{field.upper()}__" if field else prefix)
            lines.append(f"  {where}{msg}")
        raise SettingsError("\n".join(lines)) from None

"""Memory service settings (env prefix ATALAYA_MEMORY_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common import topology
from services.common.settings import EmbeddingChannelSettings, ServiceSettings

DEFAULT_PORT = topology.port("memory")


class MemorySettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="ATALAYA_MEMORY_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    dsn: SecretStr | None = Field(
        None,
        description="libpq connection string of a PostgreSQL with pgvector. Unset: an "
        "embedded PostgreSQL is started in state_dir.",
    )
    state_dir: Path = Field(Path(".state/memory"), description="Embedded PostgreSQL's home.")
    db_startup_timeout_s: float = Field(
        60.0,
        ge=0,
        description="At start, keep trying to reach the database this long (health "
        "NOT_SERVING, liveness SERVING meanwhile) before the process exits with the "
        "error: PostgreSQL may start after the service. 0: one attempt.",
    )
    db_retry_initial_backoff_s: float = Field(
        0.5, gt=0, description="Wait after the first failed attempt; doubles after each."
    )
    db_retry_max_backoff_s: float = Field(
        5.0, gt=0, description="The longest wait between attempts."
    )
    embedded_stop_on_exit: bool = Field(
        True, description="Stop the embedded PostgreSQL when the service stops."
    )
    embedding: EmbeddingChannelSettings = Field(
        default_factory=EmbeddingChannelSettings,
        description="The embedding service (ATALAYA_MEMORY_EMBEDDING__TARGET=...).",
    )
    embedding_dimension: int = Field(
        384, ge=1, le=16000, description="Vector size; fixed when the store is created."
    )
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(10, ge=1)
    pool_timeout_s: float = Field(
        2.0, gt=0, description="Wait for a connection this long, then UNAVAILABLE."
    )
    statement_timeout_ms: int = Field(5000, ge=0)
    hnsw_m: int = Field(16, ge=2, le=100)
    hnsw_ef_construction: int = Field(64, ge=4, le=1000)
    hnsw_ef_search: int = Field(100, ge=1, le=1000)
    exact_search_max_memories: int = Field(
        10_000,
        ge=0,
        description="Users with at most this many memories get an exact search; above "
        "it the HNSW index answers.",
    )
    default_history_turns: int = Field(10, ge=1)
    max_history_turns: int = Field(100, ge=1)
    max_recall_k: int = Field(100, ge=1)
    max_memories_per_call: int = Field(64, ge=1)
    max_memory_chars: int = Field(8192, ge=1)
    max_messages_per_turn: int = Field(16, ge=1)
    max_message_chars: int = Field(32768, ge=1)
    max_comment_chars: int = Field(4096, ge=0)

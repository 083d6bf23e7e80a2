"""python -m services.embedding: run the embedding service."""

from services.common.server import run_service
from services.embedding.config import EmbeddingSettings
from services.embedding.server import build

if __name__ == "__main__":
    run_service("embedding", EmbeddingSettings, build)

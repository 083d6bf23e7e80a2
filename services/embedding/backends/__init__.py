"""Embedding model backends behind one small interface (base.EmbeddingBackend)."""

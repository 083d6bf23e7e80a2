"""Embedding service: texts -> vectors, with server-side dynamic micro-batching."""

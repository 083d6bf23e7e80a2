"""Atalaya's embedding and guardrail cores as KServe models (see services/kserve/README.md)."""

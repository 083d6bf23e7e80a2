"""The guardrail's detectors: llama_guard (the Llama Guard 3 protocol on a model
through the shared engines), semantic (embeddings against labeled exemplars) and
pii (personal data, S7 Privacy)."""

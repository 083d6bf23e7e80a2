"""Inference engines behind one small async interface (base.Engine), shared by
every service that runs a language model: generation, and the guardrail's Llama
Guard detector. No gRPC here."""

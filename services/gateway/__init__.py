"""The chat gateway: one safe, remembered, streamed chat turn across the
guardrail, memory and generation services."""

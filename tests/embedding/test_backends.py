"""The sentence-transformers backend's torch threads: the setting, else the
container's CPU limit (fake cgroup files), never the node's core count."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from services.embedding.config import EmbeddingSettings
from services.embedding.server import default_backend
from tests.support.cgroups import limit_cpus


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """torch's thread count is process-wide: put it back for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("torch_threads")
def test_torch_threads_follow_the_cpu_limit_unless_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit_cpus(monkeypatch, tmp_path, 1)
    seen = []
    for setting in (None, 2):
        torch.set_num_threads(3)  # what torch would pick on a bigger node
        default_backend(EmbeddingSettings(port=0, torch_threads=setting)).load()
        seen.append(torch.get_num_threads())
    assert seen == [1, 2]

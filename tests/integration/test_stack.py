"""`make run`'s command: the local stack starts every service health-gated, in
order, and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.common import topology
from tests.support.processes import free_port

pytestmark = pytest.mark.integration


def test_stack_starts_all_services_and_stops(tmp_path: Path) -> None:
    highest = max(topology.ports().values())
    offset = free_port() - highest
    if not 0 < offset + highest < 65000:
        offset = 10_000
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.stack",
            "--exit-after-start",
            "--state-dir",
            str(tmp_path),
            "--port-offset",
            str(offset),
            "--no-traces",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    for name in topology.NAMES:
        assert f"{name:<10} {topology.target(name, port_offset=offset)}" in out
    assert out.index("guardrail SERVING") < out.index("starting gateway")
    assert out.index("embedding SERVING") < out.index("starting memory")
    assert "stack     | stopped" in out
    assert (tmp_path / "memory" / "pgdata" / "PG_VERSION").exists()

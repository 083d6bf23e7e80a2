"""The services under test as child processes, for the length of a `with` block."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from loadtests.figures import progress
from services.common.process import ServiceProcess, free_port
from services.common.settings import ChannelTLSSettings


def bench_env() -> dict[str, str]:
    """The parent's environment without ATALAYA_* settings (services run with their
    defaults plus what the bench sets), offline model loading."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATALAYA_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


@contextlib.contextmanager
def running(
    module: str,
    env: Callable[[int], dict[str, str]],
    workdir: Path,
    label: str,
    overrides: dict[str, str] | None = None,
    *,
    tls: ChannelTLSSettings | None = None,
) -> Iterator[str]:
    """A started service process for the block (its target); always stopped after.
    `env` gives the service's settings for its port; `overrides` (from --set) are
    applied last, to compare settings; `tls`: how to reach its health check when it
    serves with TLS."""
    port = free_port()
    proc = ServiceProcess(
        module,
        port,
        {**env(port), **(overrides or {})},
        workdir / f"{label}.log",
        base_env=bench_env(),
        tls=tls,
    )
    try:
        proc.start()
        progress(f"{module} SERVING on {proc.target}")
        yield proc.target
    finally:
        proc.stop()

"""The whole local stack as real processes, started the way `make run` starts it
(python -m services.stack), from a stack file written for the test: free ports,
its own state folder, the simulator (or llama.cpp) for generation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from services.stack.launch import LocalStack, start_stack

Stack = LocalStack

#: What every test stack sets over services/stack/stack.toml (a test may add to it).
BASE_ENV: dict[str, dict[str, str]] = {
    "generation": {"ATALAYA_GENERATION_BACKEND": "sim"},
    "gateway": {"ATALAYA_GATEWAY_GRACE_PERIOD_S": "2"},
}


@contextlib.contextmanager
def running_stack(
    state: Path,
    env: Mapping[str, Mapping[str, str]] | None = None,
    start_timeout_s: float = 400,
    security: str = "off",
) -> Iterator[Stack]:
    """Every service and the trace receiver, until the block ends. `env` adds or
    replaces settings per service (see BASE_ENV); `security` is "off", "tls" or
    "mtls" (certificates of the stack's local CA; the stack's `tls` is the client's)."""
    env = env or {}
    settings = {name: {**BASE_ENV.get(name, {}), **env.get(name, {})} for name in {*BASE_ENV, *env}}
    stack = start_stack(
        state, settings, log=state / "stack.log", timeout_s=start_timeout_s, security=security
    )
    try:
        yield stack
    finally:
        stack.stop()

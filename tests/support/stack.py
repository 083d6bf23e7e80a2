"""The whole local stack as real processes, started the way `make run` starts it
(python -m services.stack) from a stack file written for the test: free ports,
its own state folder, the simulator or llama.cpp for generation."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.stack.process import SERVING, free_port, health_status

SERVICES = ("generation", "embedding", "memory", "guardrail", "gateway")

#: What every test stack sets beyond the ports (a service's env may add to it).
BASE_ENV: dict[str, dict[str, str]] = {
    "generation": {"ATALAYA_GENERATION_BACKEND": "sim"},
    "embedding": {},
    "memory": {
        "ATALAYA_MEMORY_STATE_DIR": "{state}/memory",
        "ATALAYA_MEMORY_EMBEDDING__TARGET": "{embedding}",
    },
    "guardrail": {"ATALAYA_GUARDRAIL_EMBEDDING__TARGET": "{embedding}"},
    "gateway": {
        "ATALAYA_GATEWAY_GUARDRAIL__TARGET": "{guardrail}",
        "ATALAYA_GATEWAY_MEMORY__TARGET": "{memory}",
        "ATALAYA_GATEWAY_GENERATION__TARGET": "{generation}",
        "ATALAYA_GATEWAY_INPUT_POLICY": "fast",
        "ATALAYA_GATEWAY_GRACE_PERIOD_S": "2",
    },
}


@dataclass
class Stack:
    ports: dict[str, int]
    state: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def traces_path(self) -> Path:
        return self.state / "traces" / "spans.jsonl"


def write_stack_file(
    path: Path, ports: Mapping[str, int], env: Mapping[str, Mapping[str, str]]
) -> None:
    lines = ['host = "127.0.0.1"', f"traces_port = {ports['traces']}"]
    for name in SERVICES:
        values = {**BASE_ENV[name], **env.get(name, {})}
        lines += ["", f"[services.{name}]", f"port = {ports[name]}", f"[services.{name}.env]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def running_stack(
    state: Path, env: Mapping[str, Mapping[str, str]] | None = None, start_timeout_s: float = 400
) -> Iterator[Stack]:
    """The five services and the trace receiver, until the block ends. `env`
    adds or replaces settings per service (see BASE_ENV)."""
    ports = {name: free_port() for name in (*SERVICES, "traces")}
    config = state / "stack.toml"
    write_stack_file(config, ports, env or {})
    log = state / "stack.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.stack", "--config", str(config),
             "--state-dir", str(state), "--raw-logs"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    stack = Stack(ports, state, proc, log)
    try:
        deadline = time.monotonic() + start_timeout_s
        while health_status(stack.target("gateway")) != SERVING:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the stack did not start:\n" + log.read_text()[-4000:])
            time.sleep(0.5)
        yield stack
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

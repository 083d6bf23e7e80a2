"""Child processes for the runtimes that do not speak grpc.health.v1: the local Ray
Serve runner (ready when it prints its ready line) and KServe model servers
(ready when /v2/models/<name>/ready answers 200). Started without waiting, so
several can load at once; stopped with SIGTERM, then SIGKILL of their own
process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from services.ray.local import READY_LINE


class ChildProcess:
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.argv = [sys.executable, *argv]
        self.env = {**os.environ, "GRPC_VERBOSITY": "ERROR", **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> ChildProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def is_ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout_s: float) -> ChildProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[1:]} exited early:\n{self.log_tail()}")
            if self.is_ready():
                return self
            time.sleep(0.3)
        raise TimeoutError(f"{self.argv[1:]} not ready after {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            proc.wait(10)

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


class RayServeProcess(ChildProcess):
    def __init__(
        self, grpc_port: int, http_port: int, state: Path, env: Mapping[str, str], apps: str = ""
    ) -> None:
        argv = ["-m", "services.ray", "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
        argv += ["--state-dir", str(state)]
        if apps:
            argv += ["--apps", apps]
        super().__init__(argv, env, state / "ray-serve.log")
        self.target = f"127.0.0.1:{grpc_port}"

    def is_ready(self) -> bool:
        return READY_LINE in self.log_tail(100_000)


class KServeProcess(ChildProcess):
    def __init__(
        self, kind: str, http_port: int, grpc_port: int, env: Mapping[str, str], log_dir: Path
    ) -> None:
        argv = ["-m", "services.kserve", kind, "--http_port", str(http_port)]
        argv += ["--grpc_port", str(grpc_port)]
        super().__init__(argv, env, log_dir / f"kserve-{kind}.log")
        self.kind = kind
        self.url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"

    def is_ready(self) -> bool:
        try:
            response = httpx.get(f"{self.url}/v2/models/{self.kind}/ready", timeout=1)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

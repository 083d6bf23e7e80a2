"""One service as a child process (`python -m services.<name>`), waited for through
grpc.health.v1 and stopped with SIGTERM: used by tests and benchmarks that need the
services as real processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HOST = "127.0.0.1"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    """A port nothing listens on right now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def health_status(target: str, timeout_s: float = 1.0) -> int | None:
    """The overall grpc.health.v1 status at `target`, or None if it does not answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return None
    return int(response.status)


async def serving_status(target: str, timeout_s: float = 1.0) -> int | None:
    """health_status for asyncio callers."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return None
    return int(response.status)


def wait_for_status(target: str, status: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if health_status(target) == status:
            return
        time.sleep(0.2)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    raise TimeoutError(f"{target} did not report {name} within {timeout_s}s")


class ServiceProcess:
    """`python -m <module>` with `env` on top of `base_env` (default: this process's
    environment); its output goes to `log_path`."""

    def __init__(
        self,
        module: str,
        port: int,
        env: Mapping[str, str],
        log_path: Path,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.module = module
        self.port = port
        self.env = dict(env)
        self.log_path = log_path
        self._base_env = dict(os.environ if base_env is None else base_env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> ServiceProcess:
        """Start and wait for SERVING; on failure the log's tail is in the error."""
        env = {"GRPC_VERBOSITY": "ERROR", **self._base_env, **self.env, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [sys.executable, "-m", self.module],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches the parent only
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited early:\n{self.log_tail()}")
            if health_status(self.target) == SERVING:
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.module} not SERVING after {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait for the drain; SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def kill9(self) -> None:
        """A crash: SIGKILL, no drain, no cleanup."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.logs()[-chars:]

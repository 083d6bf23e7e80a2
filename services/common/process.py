"""A service as a child process: `python -m <module>`, waited for until its
grpc.health.v1 check says SERVING, stopped with SIGTERM (the drain). The local
stack's supervisor, the tools that need a service for a while (the guardrail's
evaluation starts an embedding service), the tests and the benchmarks all start
services this way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from services.common.health import SERVING, health_status
from services.common.settings import ChannelTLSSettings
from services.common.topology import DEFAULT_HOST

HOST = DEFAULT_HOST
POLL_INTERVAL_S = 0.2


def free_port() -> int:
    """A port nothing listens on right now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def module_argv(module: str, args: Sequence[str] = ()) -> list[str]:
    """`python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_env(*layers: Mapping[str, str]) -> dict[str, str]:
    """A child's environment: the layers in order (later ones win) over quiet gRPC
    core logs, with unbuffered output so its lines arrive as they are written."""
    env = {"GRPC_VERBOSITY": "ERROR"}
    for layer in layers:
        env.update(layer)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Exited(RuntimeError):
    """The process exited while it was being waited for."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exited with code {code}")
        self.code = code


def wait_for_status(
    target: str,
    status: str = SERVING,
    timeout_s: float = 120.0,
    *,
    exited: Callable[[], int | None] | None = None,
    progress: Callable[[float], None] | None = None,
    progress_every_s: float = 5.0,
    tls: ChannelTLSSettings | None = None,
) -> None:
    """Return once `target`'s overall health is `status` (checked over `tls` when
    given). Raises Exited as soon as `exited()` gives an exit code, TimeoutError
    after `timeout_s`; calls `progress(seconds waited)` every `progress_every_s`
    meanwhile."""
    started = time.monotonic()
    deadline = started + timeout_s
    next_note = started + progress_every_s
    while time.monotonic() < deadline:
        code = exited() if exited is not None else None
        if code is not None:
            raise Exited(code)
        if health_status(target, tls=tls) == status:
            return
        now = time.monotonic()
        if progress is not None and now >= next_note:
            progress(now - started)
            next_note += progress_every_s
        time.sleep(POLL_INTERVAL_S)
    raise TimeoutError(f"{target} did not report {status} within {timeout_s}s")


class ServiceProcess:
    """`python -m <module> [args]` with `env` on top of `base_env` (default: this
    process's environment), serving grpc.health.v1 on HOST:`port` (over `tls` when
    given); its output goes to `log_path`."""

    def __init__(
        self,
        module: str,
        port: int,
        env: Mapping[str, str],
        log_path: Path,
        base_env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = (),
        tls: ChannelTLSSettings | None = None,
    ) -> None:
        self.module = module
        self.tls = tls
        self.port = port
        self.env = dict(env)
        self.log_path = log_path
        self.args = tuple(args)
        self._base_env = dict(os.environ if base_env is None else base_env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> ServiceProcess:
        """Start and wait for SERVING; on failure the log's tail is in the error."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                module_argv(self.module, self.args),
                env=child_env(self._base_env, self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches the parent only
            )
        try:
            wait_for_status(self.target, SERVING, timeout_s, exited=self.proc.poll, tls=self.tls)
        except Exited:
            raise RuntimeError(f"{self.module} exited early:\n{self.log_tail()}") from None
        except TimeoutError:
            self.stop()
            raise TimeoutError(
                f"{self.module} not SERVING after {timeout_s}s:\n{self.log_tail()}"
            ) from None
        return self

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

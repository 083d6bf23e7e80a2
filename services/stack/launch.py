"""The local stack as one child process (`python -m services.stack`), from a stack
file written for it: the settings of services/stack/stack.toml with the caller's
on top, every port a free one, its own state folder; waited for until the last
service to start is SERVING. The tests and the load test start the stack so;
`security="mtls"` (or "tls") starts it with the local CA's certificates, and
LocalStack.tls is then what a client of it shows (the operator's certificate)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import topology
from services.common.process import HOST, ServiceProcess, free_port
from services.common.settings import ChannelTLSSettings
from services.stack import pki
from services.stack.config import DEFAULT_CONFIG, TRACES_FILE, stack_settings, write_config

TRACES = "traces"  # the key of the trace receiver's port in LocalStack.ports


@dataclass(frozen=True)
class LocalStack:
    ports: dict[str, int]  # every service's, and the trace receiver's (TRACES)
    state: Path
    process: ServiceProcess
    security: str = "off"
    #: The client TLS settings of the stack (the operator's certificate); None in plaintext.
    tls: ChannelTLSSettings | None = None

    @property
    def certificates(self) -> pki.LocalPKI:
        """The stack's CA and certificates (security tls or mtls)."""
        if self.security == "off":
            raise ValueError("a plaintext stack has no certificates")
        return pki.LocalPKI(self.state.resolve() / pki.TLS_DIR)

    def target(self, name: str) -> str:
        return f"{HOST}:{self.ports[name]}"

    @property
    def traces_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports[TRACES]}"

    @property
    def traces_path(self) -> Path:
        return self.state / TRACES_FILE

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM: the stack drains its services in reverse order."""
        return self.process.stop(timeout_s)


def start_stack(
    state: Path,
    env: Mapping[str, Mapping[str, str]] | None = None,
    *,
    log: Path,
    base_env: Mapping[str, str] | None = None,
    timeout_s: float = 400.0,
    config: Path = DEFAULT_CONFIG,
    security: str = "off",
) -> LocalStack:
    """Start the stack of `config` on free ports with state in `state`, its output
    in `log`; `env` adds or replaces settings per service, `base_env` is the
    stack's own environment (default: this process's)."""
    ports = {name: free_port() for name in (*topology.NAMES, TRACES)}
    settings = stack_settings(config)
    for name, extra in (env or {}).items():
        settings[name] = {**settings[name], **extra}
    path = state / "stack.toml"
    write_config(path, ports, settings, traces_port=ports[TRACES])
    last = topology.NAMES[-1]  # started once all the others are SERVING
    # The certificates exist before the stack starts (it reuses them), so that the
    # health checks below can show the operator's.
    tls = pki.local_pki(state).client_tls() if security != "off" else None
    process = ServiceProcess(
        "services.stack",
        ports[last],
        {},
        log,
        base_env,
        args=(
            *("--config", str(path), "--state-dir", str(state), "--raw-logs"),
            *("--security", security),
        ),
        tls=tls,
    )
    return LocalStack(ports, state, process.start(timeout_s), security, tls)

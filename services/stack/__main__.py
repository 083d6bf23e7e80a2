"""python -m services.stack: run the local stack until Ctrl-C (`make run`).

Starts every service of the topology (services/common/topology.py) with the
settings of services/stack/stack.toml, each as its own process, health-gated in
order, with one prefixed log stream, restarts of crashed services, and
a local OTLP trace receiver (`atalaya trace <request id>` reads what it got).

Plaintext by default. `--tls` serves every service over TLS, `--mtls` also makes
every caller show a client certificate (and each service accept only the callers of
the call graph): certificates from a local CA in <state>/tls (services.stack.pki);
the `atalaya` CLI picks up the operator's certificate from there. The default can
come from the environment: ATALAYA_STACK_SECURITY=mtls make run."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path

from services.common.settings import ChannelTLSSettings
from services.stack import pki
from services.stack.config import DEFAULT_CONFIG, TRACES_FILE, StackConfig, load_config
from services.stack.supervisor import Supervisor
from services.stack.traces import serve_traces

SECURITY_ENV = "ATALAYA_STACK_SECURITY"


def secure(
    config: StackConfig, state_dir: str, mode: str
) -> tuple[StackConfig, ChannelTLSSettings | None]:
    """The stack with every service given its certificate and `mode` (settings of
    the stack file or the shell win), and the client settings of the stack's own
    calls (None in plaintext). Tells the CLI what to use (<state>/tls/client.json)."""
    if mode == "off":
        pki.write_client_config(state_dir, None)
        return config, None
    local = pki.local_pki(state_dir, hosts=(config.host,))
    specs = tuple(
        dataclasses.replace(spec, env={**local.service_env(spec.name, mode), **spec.env})
        for spec in config.services
    )
    client = local.client_tls()
    pki.write_client_config(state_dir, client)
    return dataclasses.replace(config, services=specs), client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the stack file")
    parser.add_argument("--state-dir", default=".state", help="where services keep state")
    parser.add_argument(
        "--port-offset", type=int, default=0, help="added to every port of the stack"
    )
    security = parser.add_mutually_exclusive_group()
    security.add_argument(
        "--security",
        choices=pki.MODES,
        default=os.environ.get(SECURITY_ENV, "off") or "off",
        help=f"transport security of every service (default: ${SECURITY_ENV}, else off)",
    )
    security.add_argument(
        "--tls", dest="security", action="store_const", const="tls", help="--security tls"
    )
    security.add_argument(
        "--mtls", dest="security", action="store_const", const="mtls", help="--security mtls"
    )
    parser.add_argument("--raw-logs", action="store_true", help="print JSON log lines as is")
    parser.add_argument("--no-traces", action="store_true", help="no local trace receiver")
    parser.add_argument(
        "--exit-after-start",
        action="store_true",
        help="start everything, report, stop (a smoke test of the stack)",
    )
    args = parser.parse_args()
    if args.security not in pki.MODES:
        parser.error(f"{SECURITY_ENV} must be one of {', '.join(pki.MODES)}")
    config = load_config(args.config, state_dir=args.state_dir, port_offset=args.port_offset)
    config, client_tls = secure(config, args.state_dir, args.security)
    if client_tls is not None:
        print(
            f"stack     | {args.security}: CA {client_tls.ca_file}; the CLI uses "
            f"{Path(args.state_dir) / pki.TLS_DIR / pki.CLIENT_FILE}",
            flush=True,
        )
    common_env: dict[str, str] = {}
    traces = None
    if config.traces_port and not args.no_traces:
        path = Path(args.state_dir) / TRACES_FILE
        traces = serve_traces(config.host, config.traces_port, path)
        common_env = {
            "OTEL_SDK_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": traces.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }
        print(f"stack     | traces: {traces.endpoint} -> {path}", flush=True)
    supervisor = Supervisor(
        list(config.services),
        pretty=not args.raw_logs,
        common_env=common_env,
        health_tls=client_tls,
    )
    try:
        return asyncio.run(supervisor.run(exit_after_start=args.exit_after_start))
    finally:
        if traces is not None:
            traces.stop()


if __name__ == "__main__":
    sys.exit(main())

"""python -m services.stack: run the local stack until Ctrl-C (`make run`).

Starts every service of the topology (services/common/topology.py) with the
settings of services/stack/stack.toml, each as its own process, health-gated in
order, with one prefixed log stream, restarts of crashed services, and
a local OTLP trace receiver (`atalaya trace <request id>` reads what it got)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from services.stack.config import DEFAULT_CONFIG, TRACES_FILE, load_config
from services.stack.supervisor import Supervisor
from services.stack.traces import serve_traces


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the stack file")
    parser.add_argument("--state-dir", default=".state", help="where services keep state")
    parser.add_argument(
        "--port-offset", type=int, default=0, help="added to every port of the stack"
    )
    parser.add_argument("--raw-logs", action="store_true", help="print JSON log lines as is")
    parser.add_argument("--no-traces", action="store_true", help="no local trace receiver")
    parser.add_argument(
        "--exit-after-start",
        action="store_true",
        help="start everything, report, stop (a smoke test of the stack)",
    )
    args = parser.parse_args()
    config = load_config(args.config, state_dir=args.state_dir, port_offset=args.port_offset)
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
    supervisor = Supervisor(list(config.services), pretty=not args.raw_logs, common_env=common_env)
    try:
        return asyncio.run(supervisor.run(exit_after_start=args.exit_after_start))
    finally:
        if traces is not None:
            traces.stop()


if __name__ == "__main__":
    sys.exit(main())

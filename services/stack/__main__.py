"""python -m services.stack: run the local stack until Ctrl-C (`make run`)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.stack.supervisor import Supervisor, default_specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", default=".state", help="where services keep state")
    parser.add_argument(
        "--port-offset", type=int, default=0, help="added to every default port (50054...)"
    )
    parser.add_argument("--raw-logs", action="store_true", help="print JSON log lines as is")
    parser.add_argument(
        "--exit-after-start",
        action="store_true",
        help="start everything, report, stop (a smoke test of the stack)",
    )
    args = parser.parse_args()
    supervisor = Supervisor(
        default_specs(args.state_dir, args.port_offset), pretty=not args.raw_logs
    )
    return asyncio.run(supervisor.run(exit_after_start=args.exit_after_start))


if __name__ == "__main__":
    sys.exit(main())

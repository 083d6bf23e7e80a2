"""A stand-in service for supervisor tests (`python -m tests.support.health_server`):
grpc.health.v1 on 127.0.0.1:$HEALTH_PORT, NOT_SERVING until it has written
"start $HEALTH_NAME <pid>" to the file $HEALTH_EVENTS, then SERVING; on SIGTERM
it writes "stop $HEALTH_NAME" and exits 0. While the file $HEALTH_CRASH exists it
exits with code 3 at once instead. With $HEALTH_LONG_LINE=N it first prints a line
of N "x"."""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

CRASH_CODE = 3


def note(line: str) -> None:
    with Path(os.environ["HEALTH_EVENTS"]).open("a") as events:
        events.write(line + "\n")


def main() -> int:
    name = os.environ["HEALTH_NAME"]
    crash = os.environ.get("HEALTH_CRASH")
    if crash and Path(crash).exists():
        print(f"{name} crashing", flush=True)
        return CRASH_CODE
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['HEALTH_PORT']}")
    server.start()
    if long_line := int(os.environ.get("HEALTH_LONG_LINE") or 0):
        print("x" * long_line, flush=True)
    note(f"start {name} {os.getpid()}")
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print('{"level": "INFO", "msg": "serving", "ts": "2025-01-01T00:00:00.000000"}', flush=True)
    stop.wait()
    note(f"stop {name}")
    server.stop(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

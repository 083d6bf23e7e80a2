"""Services as real processes for cross-service tests (see services.stack.process)."""

from services.stack.process import (
    NOT_SERVING,
    SERVING,
    ServiceProcess,
    free_port,
    health_status,
    wait_for_status,
)

__all__ = [
    "NOT_SERVING",
    "SERVING",
    "ServiceProcess",
    "free_port",
    "health_status",
    "wait_for_status",
]

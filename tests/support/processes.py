"""Services as real processes for cross-service tests (see services.common.process)."""

from services.common.health import NOT_SERVING, SERVING, health_status
from services.common.process import ServiceProcess, free_port, wait_for_status

__all__ = [
    "NOT_SERVING",
    "SERVING",
    "ServiceProcess",
    "free_port",
    "health_status",
    "wait_for_status",
]

"""Services as child processes: services.common.process, under the name the
benchmarks import it by."""

from services.common.health import SERVING
from services.common.process import HOST, ServiceProcess, free_port, wait_for_status

__all__ = ["HOST", "SERVING", "ServiceProcess", "free_port", "wait_for_status"]

"""python -m services.memory: run the memory service."""

from services.common.server import run_service
from services.memory.config import MemorySettings
from services.memory.server import build

if __name__ == "__main__":
    run_service("memory", MemorySettings, build)

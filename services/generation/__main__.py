"""python -m services.generation: run the generation service."""

from services.common.server import run_service
from services.generation.config import GenerationSettings
from services.generation.server import build

if __name__ == "__main__":
    run_service("generation", GenerationSettings, build)

"""python -m services.guardrail: run the guardrail service."""

from services.common.server import run_service
from services.guardrail.config import GuardrailSettings
from services.guardrail.server import build

if __name__ == "__main__":
    run_service("guardrail", GuardrailSettings, build)

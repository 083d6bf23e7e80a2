"""python -m services.gateway: run the chat gateway."""

from services.common.server import run_service
from services.gateway.config import GatewaySettings
from services.gateway.server import authenticator, build

if __name__ == "__main__":
    run_service("gateway", GatewaySettings, build, authenticator)

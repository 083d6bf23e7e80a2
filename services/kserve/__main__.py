"""python -m services.kserve embedding|guardrail [--model_name NAME] [kserve flags]

Serves one Atalaya core as a KServe model: V1 and V2 REST on --http_port (8080),
V2 gRPC on --grpc_port (8081). The service's settings come from its ATALAYA_*
variables, as for the gRPC service; the other flags are the kserve ModelServer's
(--workers, --max_threads, --enable_grpc...)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from services.common.logging import configure_logging
from services.common.settings import load_settings

KINDS = ("embedding", "guardrail")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.kserve", add_help=False)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--model_name", default="")
    args, _ = parser.parse_known_args(argv)
    name = args.model_name or args.kind
    # kserve reads its own flags (ports, workers...) from sys.argv when imported.
    from kserve import ModelServer

    from services.kserve.models import EmbeddingModel, GuardrailModel, HostedModel

    model: HostedModel[Any]
    if args.kind == "embedding":
        from services.embedding.config import EmbeddingSettings

        settings = load_settings(EmbeddingSettings)
        configure_logging("embedding", settings.log_level)
        model = EmbeddingModel(name, settings)
    else:
        from services.guardrail.config import GuardrailSettings

        guard_settings = load_settings(GuardrailSettings)
        configure_logging("guardrail", guard_settings.log_level)
        model = GuardrailModel(name, guard_settings)
    ModelServer().start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wires the guardrail service: detectors (from settings) -> core -> servicer."""

from __future__ import annotations

from collections.abc import Mapping

from atalaya.guardrail.v1 import guardrail_pb2, guardrail_pb2_grpc

from services.client.embedder import EmbeddingServiceEmbedder
from services.client.embedding import EmbeddingClient
from services.common.embedder import Embedder
from services.common.service import CoreLifecycleService
from services.engines.base import Engine
from services.engines.settings import engine_from_settings
from services.guardrail.config import GuardrailSettings
from services.guardrail.core import GuardrailCore
from services.guardrail.detectors.llama_guard import LlamaGuardDetector
from services.guardrail.detectors.pii import PiiDetector
from services.guardrail.detectors.semantic import Band, SemanticDetector, load_exemplars
from services.guardrail.domain import Detector, DetectorName
from services.guardrail.policy import resolve_policies
from services.guardrail.protocol import TemplateRenderer
from services.guardrail.servicer import GuardrailServicer

SERVICE_NAME = guardrail_pb2.DESCRIPTOR.services_by_name["GuardrailService"].full_name
SEMANTIC_MODEL = "all-MiniLM-L6-v2 (embedding service)"


#: The guardrail service: the core's lifecycle (start and check the detectors).
GuardrailService = CoreLifecycleService[GuardrailCore, GuardrailServicer]


def build_detectors(
    settings: GuardrailSettings,
    *,
    engine: Engine | None = None,
    embedder: Embedder | None = None,
) -> Mapping[DetectorName, Detector]:
    """The detectors settings.detectors names; engine and embedder default to
    those the settings describe (llama.cpp or vLLM..., the embedding service)."""
    out: dict[DetectorName, Detector] = {}
    wanted = {DetectorName(name) for name in settings.detectors}
    if DetectorName.PII in wanted:
        out[DetectorName.PII] = PiiDetector()
    if DetectorName.SEMANTIC in wanted:
        s = settings.semantic
        out[DetectorName.SEMANTIC] = SemanticDetector(
            embedder or EmbeddingServiceEmbedder(EmbeddingClient.connect(settings.embedding)),
            load_exemplars(s.exemplars_path),
            model=SEMANTIC_MODEL,
            band=Band(s.band_low, s.band_high),
        )
    if DetectorName.LLAMA_GUARD in wanted:
        lg = settings.llama_guard
        out[DetectorName.LLAMA_GUARD] = LlamaGuardDetector(
            engine or engine_from_settings(lg),
            prompt_format=lg.resolved_format(),
            stand_in=lg.is_stand_in(),
            max_tokens=lg.max_tokens,
            max_prompt_tokens=lg.max_prompt_tokens,
            renderer=TemplateRenderer.from_path(lg.tokenizer_path) if lg.tokenizer_path else None,
        )
    return out


def build(
    settings: GuardrailSettings,
    *,
    engine: Engine | None = None,
    embedder: Embedder | None = None,
) -> GuardrailService:
    detectors = build_detectors(settings, engine=engine, embedder=embedder)
    policies = resolve_policies(settings.policies, detectors)
    return GuardrailService(
        "guardrail",
        (SERVICE_NAME,),
        GuardrailCore(detectors, policies, settings),
        GuardrailServicer,
        guardrail_pb2_grpc.add_GuardrailServiceServicer_to_server,
    )

"""Wires the generation service: engine (from settings) -> core -> servicer -> runner."""

from __future__ import annotations

from atalaya.generation.v1 import generation_pb2, generation_pb2_grpc

from services.common.service import CoreLifecycleService
from services.engines.base import Engine
from services.engines.settings import engine_from_settings
from services.generation.config import GenerationSettings
from services.generation.core import GenerationCore
from services.generation.servicer import GenerationServicer

SERVICE_NAME = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name


#: The generation service: the core's lifecycle (start the engine).
GenerationService = CoreLifecycleService[GenerationCore, GenerationServicer]


def build(settings: GenerationSettings, engine: Engine | None = None) -> GenerationService:
    return GenerationService(
        "generation",
        (SERVICE_NAME,),
        GenerationCore(engine or engine_from_settings(settings), settings),
        GenerationServicer,
        generation_pb2_grpc.add_GenerationServiceServicer_to_server,
    )

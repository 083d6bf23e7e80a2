"""Wires the generation service: engine (from settings) -> core -> servicer -> runner."""

from __future__ import annotations

import grpc
from atalaya.generation.v1 import generation_pb2, generation_pb2_grpc

from services.common.server import Service
from services.engines.base import Engine
from services.engines.settings import engine_from_settings
from services.generation.config import GenerationSettings
from services.generation.core import GenerationCore
from services.generation.servicer import GenerationServicer

SERVICE_NAME = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name


class GenerationService(Service):
    name = "generation"
    grpc_service_names = (SERVICE_NAME,)

    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    def add_to_server(self, server: grpc.aio.Server) -> None:
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(
            GenerationServicer(self.core), server
        )

    async def start(self) -> None:
        await self.core.start()

    async def ready(self) -> bool:
        return await self.core.ready()

    async def stop(self) -> None:
        await self.core.stop()


def build(settings: GenerationSettings, engine: Engine | None = None) -> GenerationService:
    return GenerationService(GenerationCore(engine or engine_from_settings(settings), settings))

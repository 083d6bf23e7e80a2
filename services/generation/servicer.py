"""GenerationService servicer: proto <-> core, nothing else."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from atalaya.common.v1 import common_pb2
from atalaya.generation.v1 import generation_pb2, generation_pb2_grpc

from services.common.validation import request_id_or_new
from services.common.vocab import BACKEND, FINISH_REASON, message_from_proto
from services.engines.base import Delta, GenerationRequest, ModelInfo, SamplingParams
from services.generation.core import Done, GenerationCore, public_model_id


def _opt(msg: generation_pb2.SamplingParams, name: str) -> object | None:
    return getattr(msg, name) if msg.HasField(name) else None  # type: ignore[arg-type]


def sampling_from_proto(msg: generation_pb2.SamplingParams) -> SamplingParams:
    return SamplingParams(
        temperature=_opt(msg, "temperature"),  # type: ignore[arg-type]
        top_p=_opt(msg, "top_p"),  # type: ignore[arg-type]
        top_k=_opt(msg, "top_k"),  # type: ignore[arg-type]
        max_tokens=_opt(msg, "max_tokens"),  # type: ignore[arg-type]
        stop=tuple(msg.stop),
        seed=_opt(msg, "seed"),  # type: ignore[arg-type]
        repetition_penalty=_opt(msg, "repetition_penalty"),  # type: ignore[arg-type]
        presence_penalty=_opt(msg, "presence_penalty"),  # type: ignore[arg-type]
        frequency_penalty=_opt(msg, "frequency_penalty"),  # type: ignore[arg-type]
        ignore_eos=msg.ignore_eos,
    )


def request_from_proto(
    request_id: str,
    request: generation_pb2.GenerateRequest | generation_pb2.CountTokensRequest,
    sampling: SamplingParams | None = None,
    adapter: str = "",
) -> GenerationRequest:
    kind = request.WhichOneof("input")
    messages = None
    if kind == "chat":
        messages = [message_from_proto(m) for m in request.chat.messages]
    return GenerationRequest(
        request_id=request_id,
        messages=messages,
        prompt=request.prompt if kind == "prompt" else None,
        sampling=sampling or SamplingParams(),
        adapter=adapter or None,
    )


def model_info_to_proto(info: ModelInfo, *, ready: bool) -> generation_pb2.ModelInfo:
    out = generation_pb2.ModelInfo(
        name=info.name,
        backend=BACKEND.value(info.backend),
        simulator=info.simulator,
        model_id=public_model_id(info.model_id),
        context_window=info.context_window,
        default_max_tokens=info.default_max_tokens,
        adapters=[generation_pb2.AdapterInfo(name=a) for a in info.adapters],
        supported_sampling_params=sorted(info.supported_sampling_params),
        supports_chat=info.supports_chat,
        supports_prompt=info.supports_prompt,
        max_concurrency=info.max_concurrency,
        max_queued_requests=info.max_queued_requests,
        ready=ready,
    )
    if (
        info.usd_per_million_input_tokens is not None
        and info.usd_per_million_output_tokens is not None
    ):
        out.pricing.usd_per_million_input_tokens = info.usd_per_million_input_tokens
        out.pricing.usd_per_million_output_tokens = info.usd_per_million_output_tokens
    return out


def _done_to_proto(done: Done, info: ModelInfo, adapter: str) -> generation_pb2.Done:
    f = done.finish
    out = generation_pb2.Done(
        finish_reason=FINISH_REASON.value(f.reason),
        stop_sequence=f.stop_sequence,
        usage=common_pb2.Usage(
            input_tokens=f.input_tokens,
            output_tokens=f.output_tokens,
            cached_input_tokens=f.cached_input_tokens,
        ),
        model=info.name,
        adapter=adapter,
        backend=BACKEND.value(info.backend),
    )
    out.timing.total_ms = done.total_s * 1000.0
    phases = out.timing.phases_ms
    phases["queue"] = f.queue_s * 1000.0
    phases["prefill"] = f.prefill_s * 1000.0
    phases["decode"] = done.decode_s * 1000.0
    phases["ttft"] = done.ttft_s * 1000.0
    if done.cost_usd is not None:
        out.cost_usd = done.cost_usd
    return out


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, core: GenerationCore) -> None:
        self._core = core

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        request_id = request_id_or_new(request.request_id)
        domain = request_from_proto(
            request_id, request, sampling_from_proto(request.sampling), request.adapter
        )
        async for event in self._core.generate(request.model, domain):
            if isinstance(event, Delta):
                yield generation_pb2.GenerateResponse(
                    request_id=request_id,
                    delta=generation_pb2.Delta(text=event.text, token_count=event.token_count),
                )
            else:
                yield generation_pb2.GenerateResponse(
                    request_id=request_id,
                    done=_done_to_proto(event, self._core.info, request.adapter),
                )

    async def CountTokens(
        self, request: generation_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.CountTokensResponse:
        started = time.perf_counter()
        request_id = request_id_or_new(request.request_id)
        count = await self._core.count_tokens(
            request.model, request_from_proto(request_id, request)
        )
        window = self._core.info.context_window
        response = generation_pb2.CountTokensResponse(
            request_id=request_id,
            model=self._core.info.name,
            token_count=count,
            context_window=window,
            remaining_tokens=window - count,
        )
        response.timing.total_ms = (time.perf_counter() - started) * 1000.0
        return response

    async def ListModels(
        self, request: generation_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListModelsResponse:
        info = self._core.info
        return generation_pb2.ListModelsResponse(
            request_id=request_id_or_new(request.request_id),
            models=[model_info_to_proto(info, ready=await self._core.ready())],
            default_model=info.name,
        )

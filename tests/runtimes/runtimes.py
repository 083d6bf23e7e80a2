"""The same two services (embedding, guardrail) on every runtime, behind one small
client interface, so a conformance test is written once and run on each:

    grpc            the plain grpc.aio processes (python -m services.<name>)
    ray             Ray Serve's gRPC proxy (python -m services.ray), `application` metadata
    kserve-v1       KServe V1 REST   ({"instances"} -> {"predictions"})
    kserve-v2-rest  KServe V2 / Open Inference Protocol over REST
    kserve-v2-grpc  KServe V2 / Open Inference Protocol over gRPC

Errors are normalised to a `Failure(code)`, the gRPC status name; REST statuses
map 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 503 -> UNAVAILABLE, and the raw
HTTP status is kept for tests that check it."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
from atalaya.common.v1 import common_pb2
from atalaya.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from atalaya.guardrail.v1 import guardrail_pb2, guardrail_pb2_grpc

from services.common.vocab import DETECTOR, VERDICT, category_code

HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE", 500: "INTERNAL"}


class Failure(Exception):
    def __init__(self, code: str, message: str, http_status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


@dataclass(frozen=True)
class Verdict:
    verdict: str  # safe | unsafe
    categories: tuple[str, ...]  # ("S7",)
    decided_by: str


class Runtime(abc.ABC):
    name: str

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str], *, normalize: bool) -> np.ndarray: ...

    @abc.abstractmethod
    async def classify(self, text: str, *, policy: str) -> Verdict: ...

    async def close(self) -> None:  # noqa: B027
        pass


class GrpcRuntime(Runtime):
    """Atalaya's own protos: the plain processes, or Serve's proxy (`application`)."""

    def __init__(self, name: str, embedding: str, guardrail: str, *, serve: bool) -> None:
        self.name = name
        self._serve = serve
        self._channels = [grpc.aio.insecure_channel(t) for t in (embedding, guardrail)]
        self._embedding = embedding_pb2_grpc.EmbeddingServiceStub(self._channels[0])
        self._guardrail = guardrail_pb2_grpc.GuardrailServiceStub(self._channels[1])

    def _metadata(self, app: str) -> tuple[tuple[str, str], ...]:
        return (("application", app),) if self._serve else ()

    async def embed(self, texts: Sequence[str], *, normalize: bool) -> np.ndarray:
        try:
            out = await self._embedding.Embed(
                embedding_pb2.EmbedRequest(texts=list(texts), normalize=normalize),
                metadata=self._metadata("embedding"),
                timeout=30,
            )
        except grpc.aio.AioRpcError as err:
            raise Failure(err.code().name, err.details() or "") from err
        return np.array([e.values for e in out.embeddings], dtype=np.float32)

    async def classify(self, text: str, *, policy: str) -> Verdict:
        request = guardrail_pb2.ClassifyRequest(policy=policy)
        if text:
            request.messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text))
        try:
            out = await self._guardrail.Classify(
                request, metadata=self._metadata("guardrail"), timeout=30
            )
        except grpc.aio.AioRpcError as err:
            raise Failure(err.code().name, err.details() or "") from err
        return Verdict(
            VERDICT.name(out.verdict),
            tuple(category_code(c) for c in out.categories),
            DETECTOR.name(out.decided_by, default=""),
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def _raise_for(response: httpx.Response) -> None:
    if response.status_code != 200:
        code = HTTP_CODES.get(response.status_code, f"HTTP_{response.status_code}")
        raise Failure(code, response.json().get("error", ""), response.status_code)


class KServeV1(Runtime):
    name = "kserve-v1"

    def __init__(self, embedding_url: str, guardrail_url: str) -> None:
        self._client = httpx.AsyncClient(timeout=30)
        self._embedding = f"{embedding_url}/v1/models/embedding:predict"
        self._guardrail = f"{guardrail_url}/v1/models/guardrail:predict"

    async def embed(self, texts: Sequence[str], *, normalize: bool) -> np.ndarray:
        body = {"instances": list(texts), "parameters": {"normalize": normalize}}
        response = await self._client.post(self._embedding, json=body)
        _raise_for(response)
        return np.array(response.json()["predictions"], dtype=np.float32)

    async def classify(self, text: str, *, policy: str) -> Verdict:
        messages = [{"role": "user", "content": text}] if text else []
        body = {"instances": [{"messages": messages, "policy": policy}]}
        response = await self._client.post(self._guardrail, json=body)
        _raise_for(response)
        (p,) = response.json()["predictions"]
        return Verdict(p["verdict"], tuple(p["categories"]), p["decided_by"])

    async def close(self) -> None:
        await self._client.aclose()


def _v2_bytes(name: str, values: Sequence[str]) -> dict[str, Any]:
    return {"name": name, "shape": [len(values)], "datatype": "BYTES", "data": list(values)}


class KServeV2Rest(Runtime):
    name = "kserve-v2-rest"

    def __init__(self, embedding_url: str, guardrail_url: str) -> None:
        self._client = httpx.AsyncClient(timeout=30)
        self._embedding = f"{embedding_url}/v2/models/embedding/infer"
        self._guardrail = f"{guardrail_url}/v2/models/guardrail/infer"

    async def embed(self, texts: Sequence[str], *, normalize: bool) -> np.ndarray:
        body = {"inputs": [_v2_bytes("text", texts)], "parameters": {"normalize": normalize}}
        response = await self._client.post(self._embedding, json=body)
        _raise_for(response)
        (out,) = response.json()["outputs"]
        return np.array(out["data"], dtype=np.float32).reshape(out["shape"])

    async def classify(self, text: str, *, policy: str) -> Verdict:
        texts = [text] if text else []
        body = {"inputs": [_v2_bytes("text", texts)], "parameters": {"policy": policy}}
        response = await self._client.post(self._guardrail, json=body)
        _raise_for(response)
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        codes = outputs["categories"][0]
        return Verdict(
            outputs["verdict"][0],
            tuple(codes.split(",")) if codes else (),
            outputs["decided_by"][0],
        )

    async def close(self) -> None:
        await self._client.aclose()


class KServeV2Grpc(Runtime):
    name = "kserve-v2-grpc"

    def __init__(self, embedding: str, guardrail: str) -> None:
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

        self._channels = [grpc.aio.insecure_channel(t) for t in (embedding, guardrail)]
        self._embedding = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self._channels[0])
        self._guardrail = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(self._channels[1])

    @staticmethod
    def _request(model: str, texts: Sequence[str], **params: Any) -> Any:
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        request = pb.ModelInferRequest(model_name=model)
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
        tensor.contents.bytes_contents.extend(t.encode() for t in texts)
        for key, value in params.items():
            if isinstance(value, bool):
                request.parameters[key].bool_param = value
            else:
                request.parameters[key].string_param = value
        return request

    async def embed(self, texts: Sequence[str], *, normalize: bool) -> np.ndarray:
        try:
            out = await self._embedding.ModelInfer(
                self._request("embedding", texts, normalize=normalize), timeout=30
            )
        except grpc.aio.AioRpcError as err:
            raise Failure(err.code().name, err.details() or "") from err
        (tensor,) = out.outputs
        if out.raw_output_contents:
            values = np.frombuffer(out.raw_output_contents[0], dtype=np.float32)
        else:
            values = np.array(tensor.contents.fp32_contents, dtype=np.float32)
        return values.reshape(list(tensor.shape))

    async def classify(self, text: str, *, policy: str) -> Verdict:
        try:
            out = await self._guardrail.ModelInfer(
                self._request("guardrail", [text] if text else [], policy=policy), timeout=30
            )
        except grpc.aio.AioRpcError as err:
            raise Failure(err.code().name, err.details() or "") from err
        outputs = {t.name: [b.decode() for b in t.contents.bytes_contents] for t in out.outputs}
        codes = outputs["categories"][0]
        return Verdict(
            outputs["verdict"][0],
            tuple(codes.split(",")) if codes else (),
            outputs["decided_by"][0],
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

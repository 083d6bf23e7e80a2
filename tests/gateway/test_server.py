"""The gateway as deployed: its server (built by services.gateway.server) on a real
port with authentication required, in front of real gRPC upstreams on loopback
that record what reaches them. Tokens are signed here against a JWKS file; API
keys come from a key file."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from atalaya.common.v1 import common_pb2
from atalaya.gateway.v1 import gateway_pb2 as gw
from atalaya.gateway.v1 import gateway_pb2_grpc
from atalaya.generation.v1 import generation_pb2, generation_pb2_grpc
from atalaya.guardrail.v1 import guardrail_pb2, guardrail_pb2_grpc
from atalaya.memory.v1 import memory_pb2, memory_pb2_grpc
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from jwt.algorithms import ECAlgorithm

from services.common.api_keys import ApiKeyStore
from services.common.identity import (
    ADMIN_SCOPE,
    ON_BEHALF_SCOPE,
    SCOPES_KEY,
    TENANT_KEY,
    USER_KEY,
)
from services.common.server import ServerRunner
from services.gateway.config import GatewaySettings
from services.gateway.server import authenticator, build

ISSUER = "https://id.atalaya.test"
AUDIENCE = "atalaya-gateway"
KID = "test-key"
FORWARDED = (TENANT_KEY, USER_KEY, SCOPES_KEY)


@dataclass
class Upstreams:
    """Guardrail, memory and generation in one loopback server; each call's method,
    forwarded identity and request are recorded."""

    calls: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    stored: list[memory_pb2.AppendTurnRequest] = field(default_factory=list)

    def record(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        meta = {k: v for k, v in context.invocation_metadata() or () if k in FORWARDED}
        assert "authorization" not in dict(context.invocation_metadata() or ())
        self.calls.append((method, meta, request))

    def identities(self) -> set[tuple[str, str, str]]:
        return {(m[TENANT_KEY], m[USER_KEY], m[SCOPES_KEY]) for _, m, _ in self.calls}


class Guardrail(guardrail_pb2_grpc.GuardrailServiceServicer):
    def __init__(self, up: Upstreams) -> None:
        self.up = up

    async def Classify(
        self, request: guardrail_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> guardrail_pb2.ClassifyResponse:
        self.up.record("Classify", request, context)
        return guardrail_pb2.ClassifyResponse(
            request_id=request.request_id, verdict=guardrail_pb2.VERDICT_SAFE, policy="default"
        )


class Memory(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, up: Upstreams) -> None:
        self.up = up

    async def GetHistory(
        self, request: memory_pb2.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.GetHistoryResponse:
        self.up.record("GetHistory", request, context)
        return memory_pb2.GetHistoryResponse()

    async def Recall(
        self, request: memory_pb2.RecallRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.RecallResponse:
        self.up.record("Recall", request, context)
        return memory_pb2.RecallResponse()

    async def AppendTurn(
        self, request: memory_pb2.AppendTurnRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.AppendTurnResponse:
        self.up.record("AppendTurn", request, context)
        self.up.stored.append(request)
        return memory_pb2.AppendTurnResponse(created=True)

    async def Remember(
        self, request: memory_pb2.RememberRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.RememberResponse:
        self.up.record("Remember", request, context)
        return memory_pb2.RememberResponse()

    async def RecordFeedback(
        self, request: memory_pb2.RecordFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> memory_pb2.RecordFeedbackResponse:
        self.up.record("RecordFeedback", request, context)
        return memory_pb2.RecordFeedbackResponse(created=True)


class Generation(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, up: Upstreams) -> None:
        self.up = up

    async def ListModels(
        self, request: generation_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.ListModelsResponse:
        self.up.record("ListModels", request, context)
        model = generation_pb2.ModelInfo(
            name="m", backend=generation_pb2.BACKEND_SIM, context_window=4096
        )
        return generation_pb2.ListModelsResponse(default_model="m", models=[model])

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        self.up.record("Generate", request, context)
        for word in ("hello", " there"):
            yield generation_pb2.GenerateResponse(
                delta=generation_pb2.Delta(text=word, token_count=1)
            )
        yield generation_pb2.GenerateResponse(
            done=generation_pb2.Done(
                finish_reason=generation_pb2.FINISH_REASON_STOP,
                usage=common_pb2.Usage(input_tokens=20, output_tokens=2),
                model="m",
                backend=generation_pb2.BACKEND_SIM,
            )
        )


@dataclass
class Gateway:
    stub: gateway_pb2_grpc.GatewayServiceStub
    up: Upstreams
    key: ec.EllipticCurvePrivateKey
    api_key: str

    def token(self, user: str = "ana", tenant: str = "acme", scope: str = "chat") -> str:
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "tenant": tenant,
                  "scope": scope, "exp": int(time.time()) + 300}  # fmt: skip
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": KID})

    async def chat(
        self, credential: str | None, user_id: str = "", request_id: str = "r1"
    ) -> list[gw.ChatEvent]:
        request = gw.ChatRequest(
            request_id=request_id, user_id=user_id, session_id="s1", message="hi there"
        )
        metadata = [("authorization", f"Bearer {credential}")] if credential else []
        return [e async for e in self.stub.Chat(request, metadata=metadata, timeout=10)]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": KID, "alg": "ES256"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    _, api_key = ApiKeyStore(tmp_path / "keys.json").create(
        tenant="acme", scopes=[ON_BEHALF_SCOPE], name="ingest"
    )
    up = Upstreams()
    upstream_server = grpc.aio.server()
    guardrail_pb2_grpc.add_GuardrailServiceServicer_to_server(Guardrail(up), upstream_server)
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(Memory(up), upstream_server)
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(Generation(up), upstream_server)
    port = upstream_server.add_insecure_port("127.0.0.1:0")
    await upstream_server.start()
    target = {"target": f"127.0.0.1:{port}"}
    settings = GatewaySettings(
        port=0,
        guardrail=target,  # type: ignore[arg-type]
        memory=target,  # type: ignore[arg-type]
        generation=target,  # type: ignore[arg-type]
        auth={  # type: ignore[arg-type]
            "mode": "required",
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_file": tmp_path / "jwks.json",
            "api_keys_file": tmp_path / "keys.json",
        },
        quotas={"user": {"requests_per_s": 0.01, "request_burst": 3}},  # type: ignore[arg-type]
    )
    runner = ServerRunner(build(settings), settings, authenticator=authenticator(settings))
    try:
        async with (
            runner.running(),
            grpc.aio.insecure_channel(f"127.0.0.1:{runner.port}") as channel,
        ):
            yield Gateway(gateway_pb2_grpc.GatewayServiceStub(channel), up, key, api_key)
    finally:
        await upstream_server.stop(0)


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_no_or_a_bad_credential_is_unauthenticated_and_nothing_runs(gateway: Gateway) -> None:
    err = await failure(gateway.chat(None, user_id="ana"))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.UNAUTHENTICATED, "authentication required",
    )  # fmt: skip
    forged = gateway.token()[:-4] + "AAAA"
    err = await failure(gateway.chat(forged, user_id="ana"))
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "invalid credentials")
    err = await failure(
        gateway.stub.Feedback(
            gw.FeedbackRequest(user_id="ana", turn_request_id="r1", score=1.0), timeout=5
        )
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert gateway.up.calls == [] and gateway.up.stored == []


async def test_a_turn_runs_as_the_tokens_user_and_forwards_its_identity(gateway: Gateway) -> None:
    events = await gateway.chat(gateway.token(), user_id="")
    done = events[-1].done
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == "hello there"
    assert done.memory.stored and not done.blocked
    assert [t.user_id for t in gateway.up.stored] == ["ana"]
    methods = {m for m, _, _ in gateway.up.calls}
    assert methods >= {"Classify", "GetHistory", "Recall", "ListModels", "Generate",
                       "AppendTurn", "Remember"}  # fmt: skip
    assert gateway.up.identities() == {("acme", "ana", "chat")}  # on every upstream call


async def test_naming_another_user_is_denied_and_nothing_is_stored(gateway: Gateway) -> None:
    err = await failure(gateway.chat(gateway.token("ana"), user_id="bob"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await failure(
        gateway.stub.Feedback(
            gw.FeedbackRequest(user_id="bob", turn_request_id="r1", score=1.0),
            metadata=[("authorization", f"Bearer {gateway.token('ana')}")],
            timeout=5,
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert gateway.up.calls == [] and gateway.up.stored == []


async def test_an_admin_token_or_an_on_behalf_key_may_name_the_user(gateway: Gateway) -> None:
    await gateway.chat(gateway.token("ops", scope=ADMIN_SCOPE), user_id="bob", request_id="r1")
    await gateway.chat(gateway.api_key, user_id="carla", request_id="r2")
    assert [t.user_id for t in gateway.up.stored] == ["bob", "carla"]
    assert gateway.up.identities() == {("acme", "ops", ADMIN_SCOPE), ("acme", "", ON_BEHALF_SCOPE)}
    response = await gateway.stub.Feedback(
        gw.FeedbackRequest(user_id="bob", turn_request_id="r1", score=1.0),
        metadata=[("authorization", f"Bearer {gateway.token('ops', scope=ADMIN_SCOPE)}")],
        timeout=5,
    )
    assert response.created
    feedback = [r for m, _, r in gateway.up.calls if m == "RecordFeedback"]
    assert [r.user_id for r in feedback] == ["bob"]


async def test_a_user_over_the_rate_limit_gets_resource_exhausted_with_retry_info(
    gateway: Gateway,
) -> None:
    token = gateway.token()
    for i in range(3):  # the burst
        await gateway.chat(token, request_id=f"r{i}")
    stored = len(gateway.up.stored)
    err = await failure(gateway.chat(token, request_id="r9"))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(err)
    assert status is not None
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert 0 < info.retry_delay.ToNanoseconds() <= 100 * 10**9  # one request per 100 s
    assert len(gateway.up.stored) == stored
    await gateway.chat(gateway.token("bob"), request_id="r10")  # another user is not limited

"""GatewayService client: chat turns (streamed, collected into a TurnResult) and
feedback on a turn. Message text is never logged.

    async with GatewayClient.connect("127.0.0.1:50051", timeout_s=300) as gateway:
        settings = TurnSettings(user_id="ana")
        result = await gateway.chat(settings.request("hello"), on_event=print)
        result.answer  # the reply, or the refusal when the turn was blocked

Stored feedback is exported by the memory service (MemoryClient.export_feedback)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from atalaya.gateway.v1 import gateway_pb2 as gw
from atalaya.gateway.v1 import gateway_pb2_grpc

from services.client.base import BaseClient
from services.common import topology
from services.common.vocab import GUARD_STAGE

DEFAULT_TARGET = topology.target("gateway")
DEFAULT_CHAT_TIMEOUT_S = 300.0
DEFAULT_FEEDBACK_TIMEOUT_S = 10.0
MODERATION_MODES = {
    "buffered": gw.MODERATION_MODE_BUFFERED,
    "optimistic": gw.MODERATION_MODE_OPTIMISTIC,
}


def default_user() -> str:
    return os.environ.get("USER") or "local"


def new_id() -> str:
    return uuid.uuid4().hex


def stage_name(stage: int) -> str:
    """'input' or 'output'."""
    return GUARD_STAGE.name(stage, default="") or "unknown"


@dataclass(frozen=True)
class TurnSettings:
    """Who is talking, where, and the per-turn options."""

    target: str = DEFAULT_TARGET
    user_id: str = field(default_factory=default_user)
    session_id: str = field(default_factory=new_id)
    policy: str = ""
    moderation: str | None = None  # "buffered" or "optimistic"; None: the gateway's default
    use_memory: bool = True
    remember: bool = True
    max_tokens: int | None = None
    timeout_s: float = DEFAULT_CHAT_TIMEOUT_S

    def options(self) -> gw.ChatOptions:
        options = gw.ChatOptions(policy=self.policy)
        if self.moderation is not None:
            options.moderation_mode = MODERATION_MODES[self.moderation]
        if not self.use_memory:
            options.use_memory = False
        if not self.remember:
            options.remember = False
        if self.max_tokens is not None:
            options.max_tokens = self.max_tokens
        return options

    def request(self, message: str, request_id: str | None = None) -> gw.ChatRequest:
        """A ChatRequest with a fresh client-made id (so a failed turn can be traced)."""
        return gw.ChatRequest(
            request_id=request_id or new_id(),
            user_id=self.user_id,
            session_id=self.session_id,
            message=message,
            options=self.options(),
        )


@dataclass
class TurnResult:
    """What one Chat stream said, collected event by event."""

    request_id: str = ""
    text: list[str] = field(default_factory=list)
    verdicts: list[gw.GuardVerdict] = field(default_factory=list)
    blocked: gw.Blocked | None = None
    done: gw.Done | None = None

    def add(self, event: gw.ChatEvent) -> None:
        self.request_id = event.request_id or self.request_id
        kind = event.WhichOneof("event")
        if kind == "delta":
            self.text.append(event.delta.text)
        elif kind == "verdict":
            self.verdicts.append(event.verdict)
        elif kind == "blocked":
            self.blocked = event.blocked
        elif kind == "done":
            self.done = event.done

    @property
    def answer(self) -> str:
        """The reply, or the refusal when the turn was blocked."""
        if self.blocked is not None:
            return self.blocked.refusal_text
        return "".join(self.text)


class GatewayClient(BaseClient):
    def __init__(
        self, channel: grpc.aio.Channel, *, timeout_s: float = DEFAULT_CHAT_TIMEOUT_S
    ) -> None:
        super().__init__(channel, timeout_s=timeout_s)
        self._stub = gateway_pb2_grpc.GatewayServiceStub(channel)

    async def chat(
        self,
        request: gw.ChatRequest,
        *,
        on_event: Callable[[gw.ChatEvent], None] | None = None,
        timeout: float | None = None,
    ) -> TurnResult:
        """Stream one Chat turn, passing each event to `on_event`. Cancelling the task
        cancels the call (the gateway then aborts generation)."""
        result = TurnResult(request_id=request.request_id)
        call = self._stub.Chat(request, timeout=self._timeout(timeout))
        try:
            async for event in call:
                result.add(event)
                if on_event is not None:
                    on_event(event)
        except asyncio.CancelledError:
            call.cancel()
            raise
        return result

    async def feedback(
        self,
        *,
        user_id: str,
        turn_request_id: str,
        score: float,
        comment: str = "",
        request_id: str = "",
        timeout: float | None = None,
    ) -> gw.FeedbackResponse:
        """Record feedback on a turn (`created` is False when it replaced earlier feedback)."""
        return await self._stub.Feedback(
            gw.FeedbackRequest(
                request_id=request_id or new_id(),
                user_id=user_id,
                turn_request_id=turn_request_id,
                score=score,
                comment=comment,
            ),
            timeout=self._timeout(timeout),
        )

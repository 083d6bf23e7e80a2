"""The CLI's calls to the gateway: `chat` (interactive), `ask` (one turn) and
`feedback`. Every call has a deadline; message text is never logged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import grpc
from atalaya.gateway.v1 import gateway_pb2 as gw
from atalaya.gateway.v1 import gateway_pb2_grpc
from google.protobuf import json_format

from services.cli.render import ChatRenderer, TurnResult, format_blocked, format_verdict
from services.common.channel import ChannelSettings, create_channel

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_CHAT_TIMEOUT_S = 300.0
DEFAULT_FEEDBACK_TIMEOUT_S = 10.0
PROMPT = "you> "
MODERATION_MODES = {
    "buffered": gw.MODERATION_MODE_BUFFERED,
    "optimistic": gw.MODERATION_MODE_OPTIMISTIC,
}

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_BLOCKED = 3


def default_user() -> str:
    return os.environ.get("USER") or "local"


def new_id() -> str:
    return uuid.uuid4().hex


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


def open_channel(target: str, timeout_s: float) -> Any:
    """An aio channel to the gateway (retries of UNAVAILABLE, keepalive)."""
    return create_channel(ChannelSettings(target=target, timeout_s=timeout_s))


def rpc_error(exc: grpc.aio.AioRpcError, err: TextIO, request_id: str = "") -> int:
    """Print a failed call's status code and details; the RPC-error exit code."""
    suffix = f" (request {request_id})" if request_id else ""
    print(f"error: {exc.code().name}: {exc.details() or ''}{suffix}", file=err)
    return EXIT_RPC_ERROR


async def run_turn(
    stub: Any,
    request: gw.ChatRequest,
    timeout_s: float,
    on_event: Callable[[gw.ChatEvent], None] | None = None,
) -> TurnResult:
    """Stream one Chat turn, passing each event to `on_event`. Cancelling the task
    cancels the call (the gateway then aborts generation)."""
    result = TurnResult(request_id=request.request_id)
    call = stub.Chat(request, timeout=timeout_s)
    try:
        async for event in call:
            result.add(event)
            if on_event is not None:
                on_event(event)
    except asyncio.CancelledError:
        call.cancel()
        raise
    return result


def _result_json(result: TurnResult) -> dict[str, Any]:
    def as_dict(message: Any) -> dict[str, Any]:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)

    return {
        "request_id": result.request_id,
        "answered": result.done is not None and result.blocked is None,
        "text": result.answer,
        "blocked": as_dict(result.blocked) if result.blocked is not None else None,
        "verdicts": [as_dict(v) for v in result.verdicts],
        "done": as_dict(result.done) if result.done is not None else None,
    }


async def ask(
    settings: TurnSettings,
    message: str,
    *,
    as_json: bool = False,
    verbose: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """One turn: print the answer (or the refusal). Exit 0 answered, 3 blocked,
    1 when the call failed."""
    out, err = out or sys.stdout, err or sys.stderr
    request = settings.request(message)
    async with open_channel(settings.target, settings.timeout_s) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            result = await run_turn(stub, request, settings.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return rpc_error(exc, err, request.request_id)
    if result.done is None:
        print(f"error: the stream ended without `done` (request {result.request_id})", file=err)
        return EXIT_RPC_ERROR
    if as_json:
        print(json.dumps(_result_json(result), ensure_ascii=False), file=out)
    else:
        answer = result.answer
        print(answer, file=out, end="" if answer.endswith("\n") else "\n")
        if verbose:
            for verdict in result.verdicts:
                print(format_verdict(verdict), file=err)
            if result.blocked is not None:
                print(format_blocked(result.blocked).partition("\n")[0], file=err)
            print(f"[request {result.request_id}]", file=err)
    return EXIT_BLOCKED if result.blocked is not None else EXIT_OK


async def feedback(
    target: str,
    user_id: str,
    turn_request_id: str,
    score: float,
    comment: str = "",
    *,
    timeout_s: float = DEFAULT_FEEDBACK_TIMEOUT_S,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Record feedback on a turn; exit 0, or 1 when the call failed."""
    out, err = out or sys.stdout, err or sys.stderr
    request = gw.FeedbackRequest(
        request_id=new_id(),
        user_id=user_id,
        turn_request_id=turn_request_id,
        score=score,
        comment=comment,
    )
    async with open_channel(target, timeout_s) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            response = await stub.Feedback(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return rpc_error(exc, err, request.request_id)
    what = "recorded" if response.created else "recorded, replacing earlier feedback"
    print(f"feedback on {turn_request_id} {what}", file=out)
    return EXIT_OK


HELP = "/quit exits, /new starts a new session, /help shows this; Ctrl-C stops a reply"


def _use_color(out: TextIO) -> bool:
    return out.isatty() and "NO_COLOR" not in os.environ


def _reader(stdin: TextIO, out: TextIO) -> Callable[[], str | None]:
    """Read one line after the prompt; None at end of input."""
    interactive = stdin is sys.stdin and stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())

    def read() -> str | None:
        if interactive:
            try:
                return input(PROMPT)
            except EOFError:
                return None
        out.write(PROMPT)
        out.flush()
        line = stdin.readline()
        return line.rstrip("\n") if line else None

    return read


def chat(
    settings: TurnSettings,
    *,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The interactive loop: read a line, stream the turn, repeat until /quit or EOF.
    Ctrl-C during a reply cancels that call and returns to the prompt."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    read = _reader(stdin, out)
    color = _use_color(out)
    print(
        f"atalaya chat: {settings.target}, user {settings.user_id}, "
        f"session {settings.session_id} ({HELP})",
        file=err,
    )
    with asyncio.Runner() as runner:
        channel = runner.run(_open(settings))
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            while True:
                try:
                    line = read()
                except KeyboardInterrupt:
                    out.write("\n")
                    break
                if line is None:
                    out.write("\n")
                    break
                message = line.strip()
                if not message:
                    continue
                if message in ("/quit", "/exit"):
                    break
                if message == "/help":
                    print(HELP, file=out)
                    continue
                if message == "/new":
                    settings = replace(settings, session_id=new_id())
                    print(f"new session {settings.session_id}", file=out)
                    continue
                _chat_turn(runner, stub, settings, message, color=color, out=out, err=err)
        finally:
            runner.run(channel.close())
    return EXIT_OK


async def _open(settings: TurnSettings) -> Any:
    return open_channel(settings.target, settings.timeout_s)


def _chat_turn(
    runner: asyncio.Runner,
    stub: Any,
    settings: TurnSettings,
    message: str,
    *,
    color: bool,
    out: TextIO,
    err: TextIO,
) -> None:
    renderer = ChatRenderer(color=color)
    request = settings.request(message)

    def show(event: gw.ChatEvent) -> None:
        out.write(renderer.feed(event))
        out.flush()

    try:
        runner.run(run_turn(stub, request, settings.timeout_s, show))
    except KeyboardInterrupt:
        out.write(renderer.finish())
        print(f"[cancelled, request {request.request_id}]", file=out)
    except grpc.aio.AioRpcError as exc:
        out.write(renderer.finish())
        out.flush()
        rpc_error(exc, err, request.request_id)
    else:
        out.write(renderer.finish())
    out.flush()

"""The CLI's calls to the gateway: `chat` (interactive), `ask` (one turn) and
`feedback`, over services.client's GatewayClient. Every call has a deadline;
message text is never logged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

import grpc
from atalaya.gateway.v1 import gateway_pb2 as gw
from google.protobuf import json_format

from services.cli.render import ChatRenderer, format_blocked, format_verdict
from services.cli.security import PLAINTEXT, Connection
from services.client.gateway import (
    DEFAULT_FEEDBACK_TIMEOUT_S,
    GatewayClient,
    TurnResult,
    TurnSettings,
    new_id,
)

PROMPT = "you> "

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_BLOCKED = 3


def rpc_error(exc: grpc.aio.AioRpcError, err: TextIO, request_id: str = "") -> int:
    """Print a failed call's status code and details; the RPC-error exit code."""
    suffix = f" (request {request_id})" if request_id else ""
    print(f"error: {exc.code().name}: {exc.details() or ''}{suffix}", file=err)
    return EXIT_RPC_ERROR


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
    connection: Connection = PLAINTEXT,
) -> int:
    """One turn: print the answer (or the refusal). Exit 0 answered, 3 blocked,
    1 when the call failed."""
    out, err = out or sys.stdout, err or sys.stderr
    request = settings.request(message)
    async with connection.connect(GatewayClient, settings.target, settings.timeout_s) as gateway:
        try:
            result = await gateway.chat(request)
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
    connection: Connection = PLAINTEXT,
) -> int:
    """Record feedback on a turn; exit 0, or 1 when the call failed."""
    out, err = out or sys.stdout, err or sys.stderr
    request_id = new_id()
    async with connection.connect(GatewayClient, target, timeout_s) as gateway:
        try:
            response = await gateway.feedback(
                user_id=user_id,
                turn_request_id=turn_request_id,
                score=score,
                comment=comment,
                request_id=request_id,
            )
        except grpc.aio.AioRpcError as exc:
            return rpc_error(exc, err, request_id)
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
    connection: Connection = PLAINTEXT,
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
        gateway = runner.run(_connect(settings, connection))
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
                _chat_turn(runner, gateway, settings, message, color=color, out=out, err=err)
        finally:
            runner.run(gateway.close())
    return EXIT_OK


async def _connect(settings: TurnSettings, connection: Connection) -> GatewayClient:
    """The client, made inside the runner's event loop (its channel belongs to it)."""
    return connection.connect(GatewayClient, settings.target, settings.timeout_s)


def _chat_turn(
    runner: asyncio.Runner,
    gateway: GatewayClient,
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
        runner.run(gateway.chat(request, on_event=show))
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

"""A small process supervisor for the local stack (not for production: there,
Kubernetes does this job)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.embedding.config import DEFAULT_PORT as EMBEDDING_PORT
from services.generation.config import DEFAULT_PORT as GENERATION_PORT
from services.guardrail.config import DEFAULT_PORT as GUARDRAIL_PORT
from services.memory.config import DEFAULT_PORT as MEMORY_PORT

HOST = "127.0.0.1"


@dataclass
class ProcessSpec:
    name: str
    module: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 120.0

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"


def default_specs(state_dir: str, port_offset: int = 0) -> list[ProcessSpec]:
    """The services in start order (each depends only on those before it)."""
    embedding_port = EMBEDDING_PORT + port_offset
    memory_port = MEMORY_PORT + port_offset
    generation_port = GENERATION_PORT + port_offset
    guardrail_port = GUARDRAIL_PORT + port_offset
    return [
        ProcessSpec(
            "generation",
            "services.generation",
            generation_port,
            {
                "ATALAYA_GENERATION_HOST": HOST,
                "ATALAYA_GENERATION_PORT": str(generation_port),
                "ATALAYA_GENERATION_BACKEND": os.environ.get(
                    "ATALAYA_GENERATION_BACKEND", "llamacpp"
                ),
            },
        ),
        ProcessSpec(
            "embedding",
            "services.embedding",
            embedding_port,
            {"ATALAYA_EMBEDDING_HOST": HOST, "ATALAYA_EMBEDDING_PORT": str(embedding_port)},
        ),
        ProcessSpec(
            "memory",
            "services.memory",
            memory_port,
            {
                "ATALAYA_MEMORY_HOST": HOST,
                "ATALAYA_MEMORY_PORT": str(memory_port),
                "ATALAYA_MEMORY_STATE_DIR": os.path.join(state_dir, "memory"),
                "ATALAYA_MEMORY_EMBEDDING__TARGET": f"{HOST}:{embedding_port}",
            },
        ),
        ProcessSpec(
            "guardrail",
            "services.guardrail",
            guardrail_port,
            {
                "ATALAYA_GUARDRAIL_HOST": HOST,
                "ATALAYA_GUARDRAIL_PORT": str(guardrail_port),
                "ATALAYA_GUARDRAIL_EMBEDDING__TARGET": f"{HOST}:{embedding_port}",
            },
        ),
    ]


def format_line(name: str, line: str, *, pretty: bool) -> str:
    prefix = f"{name:<10}|"
    if not pretty:
        return f"{prefix} {line}"
    try:
        record = json.loads(line)
    except ValueError:
        return f"{prefix} {line}"
    if not isinstance(record, dict):
        return f"{prefix} {line}"
    ts = str(record.pop("ts", ""))[11:23]
    level = record.pop("level", "")
    msg = record.pop("msg", "")
    exc = record.pop("exc", None)
    for key in ("service", "logger", "span_id"):
        record.pop(key, None)
    extras = " ".join(f"{k}={v}" for k, v in record.items())
    out = f"{prefix} {ts} {level:<7} {msg} {extras}".rstrip()
    return f"{out}\n{exc}" if exc else out


async def is_serving(target: str, timeout_s: float = 1.0) -> bool:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


class Supervisor:
    def __init__(self, specs: list[ProcessSpec], *, pretty: bool = True) -> None:
        self._specs = specs
        self._pretty = pretty
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._restarts: dict[str, int] = {}

    def _say(self, text: str) -> None:
        print(format_line("stack", text, pretty=False), flush=True)

    async def _spawn(self, spec: ProcessSpec) -> asyncio.subprocess.Process:
        env = {"GRPC_VERBOSITY": "ERROR", **os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            spec.module,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them in order
        )
        self._procs[spec.name] = proc
        assert proc.stdout is not None
        self._tasks.append(asyncio.create_task(self._pump(spec.name, proc.stdout)))
        return proc

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if line:
                print(format_line(name, line, pretty=self._pretty), flush=True)

    async def _wait_serving(self, spec: ProcessSpec, proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + spec.start_timeout_s
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"{spec.name} exited with code {proc.returncode} while starting")
            if await is_serving(spec.target):
                return
            await asyncio.sleep(0.3)
        raise RuntimeError(f"{spec.name} not SERVING after {spec.start_timeout_s:.0f}s")

    async def _watch(self, spec: ProcessSpec) -> None:
        """Restart `spec` when it dies, with backoff (1 s doubling to 30 s)."""
        backoff = 1.0
        while not self._stopping:
            proc = self._procs[spec.name]
            code = await proc.wait()
            if self._stopping:
                return
            self._restarts[spec.name] = self._restarts.get(spec.name, 0) + 1
            self._say(f"{spec.name} exited with code {code}; restarting in {backoff:.0f}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            proc = await self._spawn(spec)
            try:
                await self._wait_serving(spec, proc)
                self._say(f"{spec.name} is back: SERVING on {spec.target}")
                backoff = 1.0
            except RuntimeError as exc:
                self._say(str(exc))

    async def start(self) -> None:
        for spec in self._specs:
            self._say(f"starting {spec.name} on {spec.target}")
            proc = await self._spawn(spec)
            await self._wait_serving(spec, proc)
            self._say(f"{spec.name} SERVING on {spec.target}")
        for spec in self._specs:
            self._tasks.append(asyncio.create_task(self._watch(spec)))

    async def stop(self, grace_s: float = 25.0) -> None:
        self._stopping = True
        for spec in reversed(self._specs):
            proc = self._procs.get(spec.name)
            if proc is None or proc.returncode is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self, *, exit_after_start: bool = False) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            starting = asyncio.create_task(self.start())
            waiting = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if starting not in done:
                starting.cancel()
                return 130
            starting.result()
            self._say("all services SERVING:")
            for spec in self._specs:
                self._say(f"  {spec.name:<10} {spec.target}")
            self._say("Ctrl-C stops the stack")
            if not exit_after_start:
                await waiting
            else:
                waiting.cancel()
            return 0
        except RuntimeError as exc:
            self._say(f"stack failed to start: {exc}")
            return 1
        finally:
            self._say("stopping")
            await self.stop()
            self._say("stopped")

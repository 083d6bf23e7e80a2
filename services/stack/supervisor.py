"""A small process supervisor for the local stack (not for production: there,
Kubernetes does this job)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable

from services.common.health import SERVING
from services.common.process import Exited, child_env, module_argv, wait_for_status
from services.common.settings import ChannelTLSSettings
from services.stack.config import ProcessSpec


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


PROGRESS_EVERY_S = 5.0
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0


def _print(line: str) -> None:
    print(line, flush=True)


class Supervisor:
    """Starts `specs` in order, each once the one before is SERVING; restarts one
    that exits (backoff doubling from `first_backoff_s` to `max_backoff_s`); stops
    them in reverse order. Every line it says, and every line of the children,
    goes to `out` (default: stdout), prefixed by who said it. With `health_tls`
    the health checks go over TLS (the stack's client certificate under mTLS)."""

    def __init__(
        self,
        specs: list[ProcessSpec],
        *,
        pretty: bool = True,
        common_env: dict[str, str] | None = None,
        out: Callable[[str], None] = _print,
        first_backoff_s: float = FIRST_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        health_tls: ChannelTLSSettings | None = None,
    ) -> None:
        self._specs = specs
        self._health_tls = health_tls
        self._common_env = common_env or {}
        self._pretty = pretty
        self._out = out
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._restarts: dict[str, int] = {}

    def _say(self, text: str) -> None:
        self._out(format_line("stack", text, pretty=False))

    async def _spawn(self, spec: ProcessSpec) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *module_argv(spec.module),
            env=child_env(os.environ, self._common_env, spec.env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them in order
        )
        self._procs[spec.name] = proc
        assert proc.stdout is not None
        self._tasks.append(asyncio.create_task(self._pump(spec.name, proc.stdout)))
        return proc

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        """Every line of the child's output, until it closes. A line longer than the
        stream's buffer comes out in pieces: `async for` would end the pump there,
        and a child whose output nobody reads blocks on its next write."""
        while True:
            try:
                raw = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # the end, maybe without a newline
                raw = exc.partial
                if not raw:
                    return
            except asyncio.LimitOverrunError as exc:
                raw = await stream.readexactly(exc.consumed)
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._out(format_line(name, line, pretty=self._pretty))

    async def _wait_serving(self, spec: ProcessSpec, proc: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()

        def note(waited: float) -> None:
            text = f"{spec.name}: loading ({waited:.0f}s; up to {spec.start_timeout_s:.0f}s)"
            loop.call_soon_threadsafe(self._say, text)

        try:
            await asyncio.to_thread(
                wait_for_status,
                spec.target,
                SERVING,
                spec.start_timeout_s,
                exited=lambda: proc.returncode,
                progress=note,
                progress_every_s=PROGRESS_EVERY_S,
                tls=self._health_tls,
            )
        except Exited as exc:
            raise RuntimeError(f"{spec.name} exited with code {exc.code} while starting") from None
        except TimeoutError:
            raise RuntimeError(
                f"{spec.name} not SERVING after {spec.start_timeout_s:.0f}s"
            ) from None

    async def _watch(self, spec: ProcessSpec) -> None:
        """Restart `spec` when it dies, with backoff (doubling, 1 s to 30 s by default)."""
        backoff = self._first_backoff_s
        while not self._stopping:
            proc = self._procs[spec.name]
            code = await proc.wait()
            if self._stopping:
                return
            self._restarts[spec.name] = self._restarts.get(spec.name, 0) + 1
            self._say(f"{spec.name} exited with code {code}; restarting in {backoff:g}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
            proc = await self._spawn(spec)
            try:
                await self._wait_serving(spec, proc)
                self._say(f"{spec.name} is back: SERVING on {spec.target}")
                backoff = self._first_backoff_s
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

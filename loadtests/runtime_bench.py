"""runtime_overhead figures for `make bench` (loadtests/figures.py has the output format).

One unary call, the guardrail's pii Classify of a short message (microseconds of
work, so the figure is the runtime's hop, not the model), on each runtime the
same guardrail core runs on, all started in the same run:

    grpc            the plain grpc.aio service (python -m services.guardrail)
    ray             Ray Serve's gRPC proxy -> the Guardrail replica (python -m services.ray)
    kserve_v1       KServe V1 REST  (python -m services.kserve guardrail)
    kserve_v2_rest  KServe V2 REST
    kserve_v2_grpc  KServe V2 gRPC

runtime_overhead_<runtime>: p50 ms of one call at a time, the runtimes taking
turns (value); baseline: the plain grpc.aio runtime's p50 in the same run (for
`grpc` itself: a raw grpc.aio echo hop, no Atalaya code). Extras: p99, max
requests/s with `--concurrency` callers for RPS_SECONDS (the client runs on the
same cores, so it is a lower bound, the same for every runtime), the ratios to
grpc.aio and to the raw hop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
from atalaya.common.v1 import common_pb2
from atalaya.guardrail.v1 import guardrail_pb2, guardrail_pb2_grpc

from loadtests.echo import echo_latencies
from loadtests.figures import Figure, Output, Samples
from services.common.process import HOST, ServiceProcess, free_port
from services.ray.local import READY_LINE

RUNTIMES = ("grpc", "ray", "kserve_v1", "kserve_v2_rest", "kserve_v2_grpc")
RUNTIME_FIGURES = tuple(f"runtime_overhead_{name}" for name in RUNTIMES)
RPS_SECONDS = 5.0
RPS_WARMUP_S = 1.0
MESSAGE = "Please send the invoice to ana@example.com today."
START_TIMEOUT_S = 240.0
#: The guardrail on every runtime: the pii detector only (no model, no embedding service).
GUARD_ENV = {"ATALAYA_GUARDRAIL_DETECTORS": '["pii"]', "ATALAYA_GUARDRAIL_DEFAULT_POLICY": "pii"}

Call = Callable[[], Awaitable[None]]


# ------------------------------------------------------------------ processes


class ChildProcess:
    """A child that is not a grpc.health.v1 service: started without waiting (so
    several load at once), ready by its own check, stopped with SIGTERM and then
    SIGKILL of its own process group."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.argv = [sys.executable, *argv]
        self.env = {**os.environ, "GRPC_VERBOSITY": "ERROR", **env, "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def launch(self) -> ChildProcess:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def is_ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout_s: float) -> ChildProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[1:]} exited early:\n{self.log_tail()}")
            if self.is_ready():
                return self
            time.sleep(0.3)
        raise TimeoutError(f"{self.argv[1:]} not ready after {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            proc.wait(10)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of what this run wrote (the log may hold earlier runs)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")[-chars:]


class RayServeProcess(ChildProcess):
    """python -m services.ray on a local Ray cluster; ready when it says so."""

    def __init__(
        self, grpc_port: int, http_port: int, state: Path, env: Mapping[str, str], apps: str = ""
    ) -> None:
        argv = ["-m", "services.ray", "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
        argv += ["--state-dir", str(state)]
        if apps:
            argv += ["--apps", apps]
        super().__init__(argv, env, state / "ray-serve.log")
        self.target = f"{HOST}:{grpc_port}"

    def is_ready(self) -> bool:
        return READY_LINE in self.log_tail(100_000)


class KServeProcess(ChildProcess):
    """python -m services.kserve <kind>; ready when V2 says the model is."""

    def __init__(
        self, kind: str, http_port: int, grpc_port: int, env: Mapping[str, str], log_dir: Path
    ) -> None:
        argv = ["-m", "services.kserve", kind, "--http_port", str(http_port)]
        argv += ["--grpc_port", str(grpc_port)]
        super().__init__(argv, env, log_dir / f"kserve-{kind}.log")
        self.kind = kind
        self.url = f"http://{HOST}:{http_port}"
        self.grpc_target = f"{HOST}:{grpc_port}"

    def is_ready(self) -> bool:
        try:
            response = httpx.get(f"{self.url}/v2/models/{self.kind}/ready", timeout=1)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


@contextlib.contextmanager
def _runtimes(workdir: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    plain = ServiceProcess(
        "services.guardrail",
        port,
        {**GUARD_ENV, "ATALAYA_GUARDRAIL_PORT": str(port), "ATALAYA_GUARDRAIL_HOST": HOST},
        workdir / "rt-guardrail.log",
    )
    ray_state = workdir / "ray"
    ray_state.mkdir(parents=True, exist_ok=True)
    ray = RayServeProcess(
        free_port(),
        free_port(),
        ray_state,
        {**GUARD_ENV, "RAY_USAGE_STATS_ENABLED": "0"},
        apps="guardrail",
    )
    kserve = KServeProcess("guardrail", free_port(), free_port(), GUARD_ENV, workdir)
    echo_port = free_port()
    echo = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "loadtests.echo", str(echo_port)]
    )
    try:
        ray.launch()
        kserve.launch()
        plain.start(START_TIMEOUT_S)
        kserve.wait_ready(START_TIMEOUT_S)
        ray.wait_ready(START_TIMEOUT_S)
        yield {
            "grpc": plain.target,
            "ray": ray.target,
            "kserve_http": kserve.url,
            "kserve_grpc": kserve.grpc_target,
            "echo": f"{HOST}:{echo_port}",
        }
    finally:
        echo.terminate()
        echo.wait(10)
        ray.stop()
        kserve.stop()
        plain.stop()


# ---------------------------------------------------------------------- calls


def _classify_request() -> guardrail_pb2.ClassifyRequest:
    return guardrail_pb2.ClassifyRequest(
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=MESSAGE)],
        policy="pii",
    )


def _grpc_call(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> Call:
    stub = guardrail_pb2_grpc.GuardrailServiceStub(channel)
    request = _classify_request()

    async def call() -> None:
        out = await stub.Classify(request, metadata=metadata, timeout=10)
        assert out.verdict == guardrail_pb2.VERDICT_UNSAFE

    return call


def _kserve_v1_call(client: httpx.AsyncClient, url: str) -> Call:
    body = {"instances": [{"messages": [{"role": "user", "content": MESSAGE}], "policy": "pii"}]}

    async def call() -> None:
        response = await client.post(f"{url}/v1/models/guardrail:predict", json=body)
        response.raise_for_status()

    return call


def _kserve_v2_rest_call(client: httpx.AsyncClient, url: str) -> Call:
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [MESSAGE]}],
        "parameters": {"policy": "pii"},
    }

    async def call() -> None:
        response = await client.post(f"{url}/v2/models/guardrail/infer", json=body)
        response.raise_for_status()

    return call


def _kserve_v2_grpc_call(channel: grpc.aio.Channel) -> Call:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="guardrail")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(MESSAGE.encode())
    request.parameters["policy"].string_param = "pii"

    async def call() -> None:
        await stub.ModelInfer(request, timeout=10)

    return call


async def _latencies(calls: Mapping[str, Call], n: int, warmup: int = 20) -> dict[str, list[float]]:
    """Seconds per call, one call at a time, the runtimes taking turns (so a burst of
    other work on the machine hits them all alike)."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(n + warmup):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            if i >= warmup:
                samples[name].append(time.perf_counter() - started)
    return samples


async def _max_rps(call: Call, concurrency: int) -> float:
    done = 0
    counting = False
    stop_at = time.perf_counter() + RPS_WARMUP_S + RPS_SECONDS

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            if counting:
                done += 1

    tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
    await asyncio.sleep(RPS_WARMUP_S)
    counting, started = True, time.perf_counter()
    await asyncio.gather(*tasks)
    return done / (time.perf_counter() - started)


async def _measure(targets: dict[str, str], calls: int, concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {"echo": await echo_latencies(targets["echo"], calls)}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with (
        grpc.aio.insecure_channel(targets["grpc"]) as plain,
        grpc.aio.insecure_channel(targets["ray"]) as ray,
        grpc.aio.insecure_channel(targets["kserve_grpc"]) as kserve_grpc,
        httpx.AsyncClient(timeout=10, limits=limits) as http,
    ):
        runtimes: dict[str, Call] = {
            "grpc": _grpc_call(plain, ()),
            "ray": _grpc_call(ray, (("application", "guardrail"),)),
            "kserve_v1": _kserve_v1_call(http, targets["kserve_http"]),
            "kserve_v2_rest": _kserve_v2_rest_call(http, targets["kserve_http"]),
            "kserve_v2_grpc": _kserve_v2_grpc_call(kserve_grpc),
        }
        out.update(await _latencies(runtimes, calls))
        for name, call in runtimes.items():
            out[f"{name}_rps"] = await _max_rps(call, concurrency)
    return out


def _runtime_figure(
    name: str, m: dict[str, Any], ms: Mapping[str, Samples], concurrency: int
) -> Figure:
    echo_p50, grpc_p50, grpc_p99 = ms["echo"].p50, ms["grpc"].p50, ms["grpc"].p99
    p50, p99, rps, grpc_rps = ms[name].p50, ms[name].p99, m[f"{name}_rps"], m["grpc_rps"]
    return Figure(
        f"runtime_overhead_{name}",
        p50,
        echo_p50 if name == "grpc" else grpc_p50,
        "ms",
        {
            "baseline_is": (
                "a raw grpc.aio echo hop, p50"
                if name == "grpc"
                else "the plain grpc.aio service's p50, same call, same run"
            ),
            "p99_ms": round(p99, 3),
            "grpc_p99_ms": round(grpc_p99, 3),
            "p99_ratio": round(p99 / grpc_p99, 3),
            "max_rps": round(rps, 1),
            "grpc_max_rps": round(grpc_rps, 1),
            "rps_ratio": round(rps / grpc_rps, 3),
            "raw_hop_p50_ms": round(echo_p50, 3),
            "ratio_to_raw_hop": round(p50 / echo_p50, 2),
            "hop_overhead_p50_ms": round(p50 - grpc_p50, 3),
            "call": "guardrail Classify, pii policy, one short message",
            "calls": len(ms[name]),
            "concurrency": concurrency,
        },
    )


def bench_runtime(args: argparse.Namespace, workdir: Path, out: Output) -> None:
    with _runtimes(workdir) as targets:
        m = asyncio.run(_measure(targets, args.latency_calls, args.concurrency))
    ms = {name: Samples.ms(m[name]) for name in ("echo", *RUNTIMES)}
    for name in RUNTIMES:
        out.emit(_runtime_figure(name, m, ms, args.concurrency))

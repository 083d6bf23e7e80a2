"""A raw grpc.aio echo server (no Atalaya code on the path): the baseline hop for
the gateway figures. python -m loadtests.echo PORT"""

from __future__ import annotations

import asyncio
import sys

import grpc

METHOD = "/atalaya.bench.Echo/Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "atalaya.bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _echo, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def echo_latencies(target: str, calls: int, warmup: int = 20) -> list[float]:
    """Seconds per unary echo call, one at a time, on one channel."""
    samples = []
    async with grpc.aio.insecure_channel(target) as channel:
        echo = channel.unary_unary(
            METHOD, request_serializer=_identity, response_deserializer=_identity
        )
        for i in range(calls + warmup):
            started = asyncio.get_running_loop().time()
            await echo(b"x" * 64, timeout=10)
            if i >= warmup:
                samples.append(asyncio.get_running_loop().time() - started)
    return samples


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))

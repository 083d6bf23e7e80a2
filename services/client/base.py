"""What every Atalaya client shares: channel ownership, deadlines, error mapping."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import grpc

from services.common import errors
from services.common.channel import create_channel
from services.common.settings import ChannelSettings

_DOMAIN_BY_STATUS: dict[grpc.StatusCode, type[errors.AtalayaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
}


def domain_error(err: grpc.aio.AioRpcError, upstream: str) -> Exception:
    """The domain error a service raises when its call to `upstream` failed.

    Client mistakes (INVALID_ARGUMENT, NOT_FOUND...) keep the upstream's message;
    upstream failures become UNAVAILABLE naming the upstream; anything else is a
    plain RuntimeError, i.e. INTERNAL for our own caller, details logged only."""
    code = err.code()
    cls = _DOMAIN_BY_STATUS.get(code)
    if cls is errors.Unavailable:
        return errors.Unavailable(f"{upstream} service is unavailable")
    if cls is errors.DeadlineExceeded:
        return errors.DeadlineExceeded(f"{upstream} service did not answer in time")
    if cls is not None:
        return cls(f"{upstream}: {err.details()}")
    return RuntimeError(f"{upstream} failed with {code}: {err.details()}")


class BaseClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 5.0) -> None:
        self._channel = channel
        self._timeout_s = timeout_s
        self._owns_channel = False

    @classmethod
    def connect(cls, target: str | ChannelSettings, **kwargs: float) -> Self:
        """A client on its own channel (closed by `close` / `async with`)."""
        settings = target if isinstance(target, ChannelSettings) else ChannelSettings(target=target)
        client = cls(
            create_channel(settings), timeout_s=kwargs.get("timeout_s", settings.timeout_s)
        )
        client._owns_channel = True
        return client

    def _timeout(self, timeout: float | None) -> float:
        return self._timeout_s if timeout is None else timeout

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

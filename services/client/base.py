"""What every Atalaya client shares: channel ownership, deadlines, error mapping,
transport security and the caller's credential.

    tls = ChannelTLSSettings(enabled=True, ca_file=Path("ca.pem"))
    async with GatewayClient.connect("gateway.example:443", tls=tls, token=token) as gw:
        ...

`token` (an OIDC/JWT access token or an Atalaya API key) goes with every call as
`authorization: Bearer <token>` (identity.AUTHORIZATION_KEY), through grpc's own call
credentials: over TLS, or in plaintext only to a loopback address (grpc's local
credentials refuse any other), so a token never crosses a network in the clear."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import grpc

from services.common import errors, tls
from services.common.channel import create_channel
from services.common.interceptors import retry_after_s
from services.common.settings import ChannelSettings, ChannelTLSSettings

_DOMAIN_BY_STATUS: dict[grpc.StatusCode, type[errors.AtalayaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
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
    if cls is errors.ResourceExhausted:
        # The upstream's retry delay (a RetryInfo detail) travels on to our caller.
        return errors.ResourceExhausted(
            f"{upstream}: {err.details()}", retry_after_s=retry_after_s(err)
        )
    if cls is not None:
        return cls(f"{upstream}: {err.details()}")
    return RuntimeError(f"{upstream} failed with {code}: {err.details()}")


def credentials(
    settings: ChannelTLSSettings | None, token: str | None
) -> grpc.ChannelCredentials | None:
    """Channel credentials for TLS and/or a bearer token; None: plaintext, no token."""
    secure = settings is not None and settings.enabled
    if not token:
        return tls.channel_credentials(settings) if settings is not None and secure else None
    transport = (
        tls.channel_credentials(settings)
        if settings is not None and secure
        else grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    )
    return grpc.composite_channel_credentials(transport, grpc.access_token_call_credentials(token))


class BaseClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 5.0) -> None:
        self._channel = channel
        self._timeout_s = timeout_s
        self._owns_channel = False

    @classmethod
    def connect(
        cls,
        target: str | ChannelSettings,
        *,
        timeout_s: float | None = None,
        tls: ChannelTLSSettings | None = None,
        token: str | None = None,
    ) -> Self:
        """A client on its own channel (closed by `close` / `async with`). `tls`
        replaces the settings' own; `token` is sent as the bearer credential."""
        settings = target if isinstance(target, ChannelSettings) else ChannelSettings(target=target)
        if tls is not None:
            settings = settings.model_copy(update={"tls": tls})
        channel = create_channel(settings, credentials=credentials(settings.tls, token))
        client = cls(channel, timeout_s=settings.timeout_s if timeout_s is None else timeout_s)
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

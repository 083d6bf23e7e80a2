"""Client channels to Atalaya services (and anything else gRPC).

Every channel gets: round_robin over all resolved addresses (use a `dns:///` target
and a headless Kubernetes Service so each call can go to a different replica),
retries of UNAVAILABLE through the gRPC service config (transparent, bounded,
with backoff), keepalive, message size limits, and OpenTelemetry client spans
that carry the W3C trace context to the server. Deadlines are per call: pass
`timeout=` on every call (the Python client does).

Transport security comes from `settings.tls` (services.common.settings: a service's
channels follow its own tls settings): TLS with the CA bundle, the client certificate
for mTLS, and the expected server name. Its files are read when the channel is made
and, for a channel that `create_channel` makes from settings, again when they change
on disk (ReloadingChannel): a long-running service shows its renewed certificate
without a restart, as its server does (services.common.tls)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import grpc

from services.common import tls
from services.common.settings import ChannelSettings
from services.common.telemetry import client_interceptors
from services.common.watch import WatchedFiles

log = logging.getLogger(__name__)

#: How often a reloading channel looks at its files (at most, and only when called).
RELOAD_CHECK_INTERVAL_S = 1.0
#: How long calls still running on a replaced channel get before it is closed.
REPLACED_CHANNEL_GRACE_S = 300.0


def _duration(seconds: float) -> str:
    """A protobuf JSON Duration ("0.050000000s"): never exponent notation."""
    return f"{seconds:.9f}s"


def service_config(settings: ChannelSettings) -> dict[str, Any]:
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if settings.max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{}],  # every method of every service on this channel
                "retryPolicy": {
                    "maxAttempts": settings.max_attempts,
                    "initialBackoff": _duration(settings.initial_backoff_s),
                    "maxBackoff": _duration(settings.max_backoff_s),
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return config


def channel_options(settings: ChannelSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.service_config", json.dumps(service_config(settings))),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        *tls.channel_options(settings.tls),
    ]


def create_channel(
    settings: ChannelSettings, *, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """An aio channel to `settings.target`: with `credentials` when given, else TLS
    when settings.tls enables it (re-made when its files change), else plaintext."""
    if credentials is None and tls.channel_files(settings.tls):
        return ReloadingChannel(settings)
    if credentials is None and settings.tls is not None and settings.tls.enabled:
        credentials = tls.channel_credentials(settings.tls)
    return _channel(settings, credentials)


def _channel(
    settings: ChannelSettings, credentials: grpc.ChannelCredentials | None
) -> grpc.aio.Channel:
    options = channel_options(settings)
    interceptors = client_interceptors()
    if credentials is not None:
        return grpc.aio.secure_channel(
            settings.target, credentials, options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(settings.target, options=options, interceptors=interceptors)


class _Reloading:
    """A multicallable of a ReloadingChannel: each call goes to the current channel."""

    def __init__(
        self, owner: ReloadingChannel, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._owner = owner
        self._kind = kind
        self._args = args
        self._kwargs = kwargs
        self._generation = -1
        self._callable: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel, generation = self._owner.current()
        if self._callable is None or generation != self._generation:
            self._callable = getattr(channel, self._kind)(*self._args, **self._kwargs)
            self._generation = generation
        return self._callable(*args, **kwargs)


class ReloadingChannel(grpc.aio.Channel):  # type: ignore[misc]
    """A TLS channel that follows its certificate, key and CA files: when one
    changes on disk, the next call goes over a new channel made from the new files,
    and the old one is closed once its calls are done (REPLACED_CHANNEL_GRACE_S at
    most). grpc's channel credentials are fixed bytes, hence this wrapper; a
    half-written rotation (a key that is not the certificate's) keeps the old one."""

    def __init__(self, settings: ChannelSettings) -> None:
        self._settings = settings
        self._watch = WatchedFiles(
            *tls.channel_files(settings.tls), check_interval_s=RELOAD_CHECK_INTERVAL_S
        )
        self._watch.seen_now()
        self._channel = _channel(settings, self._credentials())
        self.generation = 0
        self._replaced: list[grpc.aio.Channel] = []
        self._closing: set[asyncio.Task[None]] = set()

    def _credentials(self) -> grpc.ChannelCredentials:
        assert self._settings.tls is not None
        return tls.channel_credentials(self._settings.tls)

    def current(self) -> tuple[grpc.aio.Channel, int]:
        """The channel for the next call, re-made first when the files changed."""
        self._reload_if_changed()
        return self._channel, self.generation

    def _reload_if_changed(self) -> None:
        changed, signature = self._watch.poll()
        if not changed or signature is None:
            return
        self._watch.seen(signature)
        try:
            credentials = self._credentials()
        except tls.TLSFileError as exc:
            log.warning("client certificate not reloaded", extra={"reason": str(exc)})
            return
        old, self._channel = self._channel, _channel(self._settings, credentials)
        self.generation += 1
        log.info("client certificate reloaded", extra={"target": self._settings.target})
        self._replaced.append(old)
        with contextlib.suppress(RuntimeError):  # no running loop: closed by close()
            task = asyncio.get_running_loop().create_task(old.close(REPLACED_CHANNEL_GRACE_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Reloading(self, "unary_unary", args, kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Reloading(self, "unary_stream", args, kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _Reloading(self, "stream_unary", args, kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _Reloading(self, "stream_stream", args, kwargs)

    async def close(self, grace: float | None = None) -> None:
        for task in list(self._closing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for channel in (*self._replaced, self._channel):
            await channel.close(grace)
        self._replaced.clear()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)

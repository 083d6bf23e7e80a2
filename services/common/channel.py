"""Client channels to Atalaya services (and anything else gRPC).

Every channel gets: round_robin over all resolved addresses (use a `dns:///` target
and a headless Kubernetes Service so each call can go to a different replica),
retries of UNAVAILABLE through the gRPC service config (transparent, bounded,
with backoff), keepalive, message size limits, and OpenTelemetry client spans
that carry the W3C trace context to the server. Deadlines are per call: pass
`timeout=` on every call (the Python client does).

Transport security comes from `settings.tls` (services.common.settings: a service's
channels follow its own tls settings): TLS with the CA bundle, the client certificate
for mTLS, and the expected server name. Its files are read when the channel is made."""

from __future__ import annotations

import json
from typing import Any

import grpc

from services.common import tls
from services.common.settings import ChannelSettings
from services.common.telemetry import client_interceptors


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
    when settings.tls enables it, else plaintext."""
    if credentials is None and settings.tls is not None and settings.tls.enabled:
        credentials = tls.channel_credentials(settings.tls)
    options = channel_options(settings)
    interceptors = client_interceptors()
    if credentials is not None:
        return grpc.aio.secure_channel(
            settings.target, credentials, options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(settings.target, options=options, interceptors=interceptors)

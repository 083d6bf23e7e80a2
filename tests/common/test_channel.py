"""Client channel configuration: load balancing, retries, limits."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from services.common.channel import channel_options, service_config
from services.common.settings import ChannelSettings, ChannelTLSSettings


def test_round_robin_is_always_configured() -> None:
    for attempts in (1, 3):
        config = service_config(ChannelSettings(target="x:1", max_attempts=attempts))
        assert config["loadBalancingConfig"] == [{"round_robin": {}}]


def test_retry_policy_retries_unavailable_only_with_settings_attempts() -> None:
    settings = ChannelSettings(
        target="dns:///embedding:50054", max_attempts=4, initial_backoff_s=0.1, max_backoff_s=2.0
    )
    (method,) = service_config(settings)["methodConfig"]
    assert method["name"] == [{}]
    policy = method["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["maxAttempts"] == 4
    assert policy["initialBackoff"] == "0.100000000s"
    assert policy["maxBackoff"] == "2.000000000s"
    assert policy["backoffMultiplier"] > 1


def test_a_single_attempt_has_no_retry_policy() -> None:
    config = service_config(ChannelSettings(target="x:1", max_attempts=1))
    assert "methodConfig" not in config


@pytest.mark.parametrize("attempts", [0, 6])
def test_max_attempts_is_bounded(attempts: int) -> None:
    with pytest.raises(ValidationError, match="max_attempts"):
        ChannelSettings(target="x:1", max_attempts=attempts)


def test_channel_options_carry_the_service_config_as_valid_json() -> None:
    settings = ChannelSettings(target="x:1", max_attempts=5, max_message_bytes=4096)
    options = dict(channel_options(settings))

    decoded = json.loads(options["grpc.service_config"])

    assert decoded == service_config(settings)
    assert decoded["methodConfig"][0]["retryPolicy"]["maxAttempts"] == 5
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.max_receive_message_length"] == 4096
    assert options["grpc.max_send_message_length"] == 4096
    assert options["grpc.keepalive_time_ms"] == int(settings.keepalive_time_s * 1000)


def test_channel_option_names_are_unique() -> None:
    names = [name for name, _ in channel_options(ChannelSettings(target="x:1"))]
    assert len(names) == len(set(names))


DURATION = re.compile(r"^\d+(\.\d+)?s$")


def test_backoffs_are_written_as_proto_durations() -> None:
    settings = ChannelSettings(target="x:1", initial_backoff_s=0.05, max_backoff_s=1.0)
    policy = service_config(settings)["methodConfig"][0]["retryPolicy"]
    assert DURATION.match(policy["initialBackoff"])
    assert DURATION.match(policy["maxBackoff"])


def test_small_backoffs_are_still_valid_proto_durations() -> None:
    settings = ChannelSettings(target="x:1", initial_backoff_s=0.00001, max_backoff_s=0.00005)
    policy = service_config(settings)["methodConfig"][0]["retryPolicy"]
    assert DURATION.match(policy["initialBackoff"]), policy["initialBackoff"]
    assert DURATION.match(policy["maxBackoff"]), policy["maxBackoff"]


def test_tls_server_name_becomes_the_name_checked_in_the_certificate() -> None:
    named = ChannelSettings(
        target="10.0.0.7:50055",
        tls=ChannelTLSSettings(enabled=True, server_name="memory.prod.svc"),
    )
    assert ("grpc.ssl_target_name_override", "memory.prod.svc") in channel_options(named)
    for settings in (
        ChannelSettings(target="x:1"),
        ChannelSettings(target="x:1", tls=ChannelTLSSettings(enabled=True)),
        ChannelSettings(target="x:1", tls=ChannelTLSSettings(server_name="ignored when off")),
    ):
        assert all(key != "grpc.ssl_target_name_override" for key, _ in channel_options(settings))

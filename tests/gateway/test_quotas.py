"""Token buckets per tenant and per user on a fake clock: requests per second,
tokens per minute charged after the turn, per-tenant overrides, the retry delay."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.common import semconv
from services.common.errors import ResourceExhausted
from services.gateway.config import Limits, QuotaSettings, TenantLimits
from services.gateway.quotas import Quotas, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def quotas(**kw: Any) -> tuple[Quotas, Clock]:
    clock = Clock()
    return Quotas(QuotaSettings(**kw), clock=clock), clock


def refused(q: Quotas, tenant: str = "acme", user: str = "ana") -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as caught:
        q.admit(tenant, user)
    return caught.value


def test_a_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    bucket = TokenBucket(rate=2.0, capacity=4.0, now=0.0)
    bucket.take(0.0, 4.0)
    assert bucket.wait(0.0) == 0.5
    assert bucket.wait(0.25) == 0.25
    assert bucket.wait(100.0) == 0.0 and bucket.level == 4.0
    bucket.take(100.0, 10.0)  # a debt
    assert bucket.wait(100.0) == pytest.approx(3.5)
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, capacity=1.0, now=0.0)


def test_no_limits_by_default() -> None:
    q, _ = quotas()
    for i in range(1000):
        q.admit("default", f"user-{i}")
        q.charge("default", f"user-{i}", 10_000, 10_000)
    assert q.tracked_users() == 0  # nothing kept for unlimited users


def test_requests_per_second_per_user_with_a_retry_delay() -> None:
    q, clock = quotas(user=Limits(requests_per_s=2.0))
    q.admit("acme", "ana")
    q.admit("acme", "ana")
    exc = refused(q)
    assert exc.retry_after_s == 0.5
    assert "user's request rate" in str(exc)
    q.admit("acme", "bob")  # users are apart
    clock.now += 0.5
    q.admit("acme", "ana")
    assert refused(q).retry_after_s == 0.5


def test_the_burst_lets_a_caller_spend_saved_requests_at_once() -> None:
    q, clock = quotas(user=Limits(requests_per_s=1.0, request_burst=5.0))
    for _ in range(5):
        q.admit("acme", "ana")
    assert refused(q).retry_after_s == 1.0
    clock.now += 3.0
    for _ in range(3):
        q.admit("acme", "ana")
    refused(q)


def test_the_tenant_limit_covers_all_its_users_and_a_refusal_charges_nothing() -> None:
    q, clock = quotas(tenant=Limits(requests_per_s=3.0), user=Limits(requests_per_s=1.0))
    q.admit("acme", "ana")
    refused(q, user="ana")  # the user's bucket is empty; the tenant's is not charged
    q.admit("acme", "bob")
    q.admit("acme", "carla")
    exc = refused(q, user="dan")  # the tenant's 3 are spent
    assert "tenant's request rate" in str(exc)
    assert exc.retry_after_s == pytest.approx(1 / 3, abs=1e-3)
    q.admit("globex", "dan")  # another tenant
    clock.now += 1.0
    q.admit("acme", "dan")


def test_tokens_per_minute_are_charged_after_the_turn_and_may_overdraw() -> None:
    q, clock = quotas(user=Limits(tokens_per_min=600.0))  # 10 tokens a second
    q.admit("acme", "ana")
    q.charge("acme", "ana", input_tokens=400, output_tokens=500)  # 300 over
    exc = refused(q)
    assert "user's token quota" in str(exc)
    assert exc.retry_after_s == pytest.approx(30.1)  # the debt, and one token
    clock.now += 30.0
    refused(q)
    clock.now += 0.2
    q.admit("acme", "ana")


def test_a_tenant_override_replaces_the_defaults_it_names() -> None:
    q, _ = quotas(
        tenant=Limits(requests_per_s=1.0),
        user=Limits(requests_per_s=1.0),
        overrides={"acme": TenantLimits(tenant=Limits(requests_per_s=100.0))},
    )
    assert q.limits("acme")[0].requests_per_s == 100.0
    assert q.limits("acme")[1].requests_per_s == 1.0  # users keep the default
    for i in range(50):
        q.admit("acme", f"user-{i}")
    q.admit("globex", "ana")
    refused(q, tenant="globex", user="bob")


def test_overrides_parse_from_json_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.gateway.config import GatewaySettings

    monkeypatch.setenv(
        "ATALAYA_GATEWAY_QUOTAS__OVERRIDES", '{"acme": {"user": {"tokens_per_min": 1000}}}'
    )
    monkeypatch.setenv("ATALAYA_GATEWAY_QUOTAS__USER__REQUESTS_PER_S", "5")
    s = GatewaySettings().quotas
    assert s.user.requests_per_s == 5.0
    acme = s.overrides["acme"].user
    assert acme is not None and acme.tokens_per_min == 1000.0


def test_users_buckets_are_bounded() -> None:
    q, _ = quotas(user=Limits(requests_per_s=1.0), max_tracked_users=2)
    q.admit("acme", "ana")
    q.admit("acme", "bob")
    q.admit("acme", "carla")
    assert q.tracked_users() == 2
    q.admit("acme", "ana")  # forgotten, so a full bucket again


def test_usage_is_counted_per_tenant_and_never_per_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)  # the suite turns the SDK off
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    q = Quotas(QuotaSettings(user=Limits(requests_per_s=1.0)), clock=Clock(), meter_=meter)
    q.admit("acme", "ana")
    q.admit("acme", "bob")
    refused(q, user="ana")
    q.charge("acme", "ana", input_tokens=12, output_tokens=5)
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[tuple[dict[str, Any], int]]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                found[metric.name] = [
                    (dict(p.attributes or {}), p.value)  # type: ignore[union-attr]
                    for p in metric.data.data_points
                ]
    tenant = {semconv.ATALAYA_TENANT: "acme"}
    assert found[semconv.METRIC_GATEWAY_TENANT_REQUESTS] == [(tenant, 2)]
    assert found[semconv.METRIC_GATEWAY_RATE_LIMITED] == [
        (
            {
                **tenant,
                semconv.ATALAYA_QUOTA_LIMIT: "requests",
                semconv.ATALAYA_QUOTA_SCOPE: "user",
            },
            1,
        )
    ]
    assert sorted(found[semconv.METRIC_GATEWAY_TENANT_TOKENS], key=lambda p: p[1]) == [
        ({**tenant, semconv.GEN_AI_TOKEN_TYPE: "output"}, 5),
        ({**tenant, semconv.GEN_AI_TOKEN_TYPE: "input"}, 12),
    ]
    every_value = {v for points in found.values() for attrs, _ in points for v in attrs.values()}
    assert not every_value & {"ana", "bob"}

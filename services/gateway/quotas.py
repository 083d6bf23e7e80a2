"""Rate limits and token quotas per tenant and per user, as token buckets.

Each tenant, and each user of a tenant, has up to two buckets (settings.QuotaSettings,
with per-tenant overrides): requests per second (one token per Chat or Feedback
call) and model tokens per minute. A call is admitted when every bucket that applies
holds at least one token; otherwise it fails with RESOURCE_EXHAUSTED and the time
after which it would be admitted (`retry_after_s`, sent to the client as RetryInfo),
and no bucket is charged.

Tokens per minute are charged from the turn's usage after the turn ends (the
prompt's input tokens plus the generated ones, as generation reports them; the
guardrail's own tokens are the deployment's cost, not the caller's), because a
turn's size is known only then. A turn is therefore admitted while its buckets are
not empty and may overdraw them; the debt refills at the configured rate before the
next turn is admitted, so the long-run rate holds.

Buckets live in memory, per gateway replica: with N replicas behind a balancer a
tenant gets about N times the limits (set them per replica). Users' buckets are
kept for the `max_tracked_users` most recently seen users; a user forgotten that
way starts again with a full bucket."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from opentelemetry import metrics

from services.common import semconv
from services.common.errors import ResourceExhausted
from services.common.telemetry import meter
from services.gateway.config import Limits, QuotaSettings

Kind = Literal["requests", "tokens"]
Scope = Literal["tenant", "user"]


class TokenBucket:
    """`rate` tokens per second up to `capacity`; starts full. Its level may go
    below zero (a debt) when more is taken than it holds."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.rate)
        self.updated = now

    def wait(self, now: float, amount: float = 1.0) -> float:
        """Seconds until the bucket holds `amount` tokens (0: it does now)."""
        self.refill(now)
        missing = min(amount, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, now: float, amount: float) -> None:
        self.refill(now)
        self.level -= amount


@dataclass
class _Buckets:
    requests: TokenBucket | None
    tokens: TokenBucket | None

    def get(self, kind: Kind) -> TokenBucket | None:
        return self.requests if kind == "requests" else self.tokens


def _buckets(limits: Limits, now: float) -> _Buckets:
    requests = tokens = None
    if limits.requests_per_s > 0:
        burst = limits.request_burst or max(1.0, limits.requests_per_s)
        requests = TokenBucket(limits.requests_per_s, burst, now)
    if limits.tokens_per_min > 0:
        burst = limits.token_burst or limits.tokens_per_min
        tokens = TokenBucket(limits.tokens_per_min / 60.0, burst, now)
    return _Buckets(requests, tokens)


def _limited(limits: Limits) -> bool:
    return limits.requests_per_s > 0 or limits.tokens_per_min > 0


class _Lru:
    """Buckets by key, the least recently used dropped beyond `size`."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], _Buckets] = OrderedDict()

    def get(self, key: tuple[str, str], make: Callable[[], _Buckets]) -> _Buckets:
        found = self._items.get(key)
        if found is None:
            found = self._items[key] = make()
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return found

    def __len__(self) -> int:
        return len(self._items)


class Quotas:
    """The gateway's limits. `admit` before a call does any work, `charge` with a
    turn's tokens when it has ended."""

    def __init__(
        self,
        settings: QuotaSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        meter_: metrics.Meter | None = None,
    ) -> None:
        self._s = settings
        self._clock = clock
        self._tenants = _Lru(max(1024, len(settings.overrides)))
        self._users = _Lru(settings.max_tracked_users)
        m = meter_ or meter()
        self._requests = m.create_counter(
            semconv.METRIC_GATEWAY_TENANT_REQUESTS, description="Calls admitted, by tenant."
        )
        self._tokens = m.create_counter(
            semconv.METRIC_GATEWAY_TENANT_TOKENS,
            description="Model tokens charged to tenants, by tenant and token type.",
        )
        self._limited = m.create_counter(
            semconv.METRIC_GATEWAY_RATE_LIMITED,
            description="Calls refused by a rate limit or quota, by tenant, limit and scope.",
        )

    def limits(self, tenant: str) -> tuple[Limits, Limits]:
        """(the tenant's limits, each of its users' limits)."""
        override = self._s.overrides.get(tenant)
        if override is None:
            return self._s.tenant, self._s.user
        return override.tenant or self._s.tenant, override.user or self._s.user

    def _scopes(self, tenant: str, user: str, now: float) -> list[tuple[Scope, _Buckets]]:
        """The buckets that apply to a call (none kept for unlimited scopes)."""
        tenant_limits, user_limits = self.limits(tenant)
        scopes: list[tuple[Scope, _Buckets]] = []
        if _limited(tenant_limits):
            made = self._tenants.get((tenant, ""), lambda: _buckets(tenant_limits, now))
            scopes.append(("tenant", made))
        if user and _limited(user_limits):
            made = self._users.get((tenant, user), lambda: _buckets(user_limits, now))
            scopes.append(("user", made))
        return scopes

    def admit(self, tenant: str, user: str) -> None:
        """Take one request from the caller's buckets, or raise ResourceExhausted
        (with retry_after_s) without taking anything."""
        now = self._clock()
        scopes = self._scopes(tenant, user, now)
        waits: list[tuple[float, Kind, Scope]] = []
        for scope, buckets in scopes:
            for kind in ("requests", "tokens"):
                bucket = buckets.get(kind)
                if bucket is not None and (wait := bucket.wait(now)) > 0:
                    waits.append((wait, kind, scope))
        if waits:
            wait, kind, scope = max(waits)
            for _, k, sc in waits:
                self._limited.add(
                    1,
                    {
                        semconv.ATALAYA_TENANT: tenant,
                        semconv.ATALAYA_QUOTA_LIMIT: k,
                        semconv.ATALAYA_QUOTA_SCOPE: sc,
                    },
                )
            what = "request rate" if kind == "requests" else "token quota"
            retry = math.ceil(wait * 1000.0) / 1000.0
            raise ResourceExhausted(
                f"the {scope}'s {what} is used up; retry in {retry:.3f} s", retry_after_s=retry
            )
        for _, buckets in scopes:
            if buckets.requests is not None:
                buckets.requests.take(now, 1.0)
        self._requests.add(1, {semconv.ATALAYA_TENANT: tenant})

    def charge(self, tenant: str, user: str, input_tokens: int, output_tokens: int) -> None:
        """Charge a finished turn's tokens (may leave the buckets in debt)."""
        total = max(0, input_tokens) + max(0, output_tokens)
        if total:
            now = self._clock()
            for _, buckets in self._scopes(tenant, user, now):
                if buckets.tokens is not None:
                    buckets.tokens.take(now, float(total))
        for kind, count in (("input", input_tokens), ("output", output_tokens)):
            if count > 0:
                self._tokens.add(
                    count, {semconv.ATALAYA_TENANT: tenant, semconv.GEN_AI_TOKEN_TYPE: kind}
                )

    def tracked_users(self) -> int:
        return len(self._users)

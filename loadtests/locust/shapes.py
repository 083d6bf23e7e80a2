"""Load shapes as plain functions of time: (users, spawn rate) at second t of the
test, or None when the test is over. The locustfile's LoadTestShape asks these.

  constant  --users, started at --spawn-rate, for --run-time.
  step      a step ramp: --step-users more users every --step-seconds, up to --users.
  spike     --users, then --spike-users at --spike-at-s for --spike-seconds, then
            back to --users: how the system absorbs and recovers from a burst.
  soak      a ramp to --users over --ramp-seconds, then a long hold (--run-time):
            drifts, leaks and slow degradation.
  arrival   --users held while each user paces its requests so all together offer
            --arrival-rate requests/s (a fixed arrival rate, as long as --users can
            sustain it; the report shows what was achieved).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The run time of a shape when --run-time is not given (a load test always ends).
DEFAULT_RUN_TIME_S = 60.0


@dataclass(frozen=True)
class ShapeParams:
    kind: str
    users: int
    spawn_rate: float
    run_time_s: float = DEFAULT_RUN_TIME_S
    step_users: int = 2
    step_seconds: float = 10.0
    spike_users: int = 0
    spike_at_s: float = 10.0
    spike_seconds: float = 10.0
    ramp_seconds: float = 10.0


def shape_at(p: ShapeParams, t: float) -> tuple[int, float] | None:
    """Users and spawn rate at `t` seconds into the test; None once it is over."""
    if t >= p.run_time_s:
        return None
    plans = {
        "constant": _constant,
        "arrival": _constant,
        "step": _step,
        "spike": _spike,
        "soak": _soak,
    }
    if p.kind not in plans:
        raise ValueError(f"unknown shape {p.kind!r}")
    return plans[p.kind](p, t)


def _constant(p: ShapeParams, t: float) -> tuple[int, float]:
    return p.users, p.spawn_rate


def _step(p: ShapeParams, t: float) -> tuple[int, float]:
    step = int(t // p.step_seconds) + 1
    # Each step is reached at once: the plateau is what is measured.
    return min(p.step_users * step, p.users), max(p.spawn_rate, float(p.step_users))


def _spike(p: ShapeParams, t: float) -> tuple[int, float]:
    spike_users = p.spike_users or 4 * p.users
    if p.spike_at_s <= t < p.spike_at_s + p.spike_seconds:
        return spike_users, float(spike_users)  # the spike arrives within a second
    return p.users, float(max(spike_users, 1))


def _soak(p: ShapeParams, t: float) -> tuple[int, float]:
    if p.ramp_seconds <= 0:
        return p.users, float(p.users)
    return p.users, max(p.users / p.ramp_seconds, 0.1)


def pacing_s(arrival_rate: float, users: int) -> float:
    """Seconds between the starts of one user's requests so that `users` users offer
    `arrival_rate` requests/s together."""
    if arrival_rate <= 0:
        raise ValueError("arrival_rate must be > 0")
    return max(users, 1) / arrival_rate

"""Guard policies: which categories and role a request checks, which detectors
run in which order and how (cascade or parallel), each detector's timeout, and
what happens when no detector can give a verdict (fail closed or open).

Policies are named in config; a request picks one by name and may override its
detectors, mode, fail mode and timeout (PolicyOverride)."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from services.common.errors import InvalidArgument
from services.guardrail.domain import DetectorName
from services.guardrail.protocol import ALL_CODES, GuardRole, sorted_codes


class ExecutionMode(enum.StrEnum):
    CASCADE = "cascade"
    PARALLEL = "parallel"


class FailMode(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"


MIN_TIMEOUT_MS, MAX_TIMEOUT_MS = 1, 60_000


@dataclass(frozen=True)
class Policy:
    name: str
    codes: tuple[str, ...]
    detectors: tuple[DetectorName, ...]
    mode: ExecutionMode
    fail_mode: FailMode
    timeout_ms: int
    #: The role checked when a request leaves it unset; None: the last message's.
    role: GuardRole | None = None


@dataclass(frozen=True)
class Override:
    detectors: tuple[DetectorName, ...] = ()
    mode: ExecutionMode | None = None
    fail_mode: FailMode | None = None
    timeout_ms: int | None = None

    def apply(self, policy: Policy) -> Policy:
        if len(set(self.detectors)) != len(self.detectors):
            raise InvalidArgument("policy_override.detectors lists a detector twice")
        if self.timeout_ms is not None and not MIN_TIMEOUT_MS <= self.timeout_ms <= MAX_TIMEOUT_MS:
            raise InvalidArgument(
                f"policy_override.detector_timeout_ms must be in [{MIN_TIMEOUT_MS}, "
                f"{MAX_TIMEOUT_MS}], got {self.timeout_ms}"
            )
        return replace(
            policy,
            detectors=self.detectors or policy.detectors,
            mode=self.mode or policy.mode,
            fail_mode=self.fail_mode or policy.fail_mode,
            timeout_ms=self.timeout_ms if self.timeout_ms is not None else policy.timeout_ms,
        )


class PolicySettings(BaseModel):
    """One named policy in config (ATALAYA_GUARDRAIL_POLICIES, JSON)."""

    model_config = {"frozen": True, "extra": "forbid"}

    categories: list[str] = Field(
        default_factory=lambda: list(sorted_codes(ALL_CODES)),
        description="Codes checked when a request names none: S1..S14.",
    )
    role: Literal["user", "assistant"] | None = Field(
        None, description="Role checked when a request leaves it unset (default: the last's)."
    )
    detectors: list[DetectorName] = Field(
        default_factory=lambda: [DetectorName.PII, DetectorName.SEMANTIC, DetectorName.LLAMA_GUARD]
    )
    mode: ExecutionMode = ExecutionMode.CASCADE
    fail_mode: FailMode = FailMode.CLOSED
    detector_timeout_ms: int = Field(10_000, ge=MIN_TIMEOUT_MS, le=MAX_TIMEOUT_MS)

    @field_validator("categories")
    @classmethod
    def _known_codes(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - ALL_CODES)
        if unknown or not value:
            raise ValueError(f"categories must be a non-empty subset of S1..S14 (got {unknown})")
        return value

    @model_validator(mode="after")
    def _detectors_once(self) -> PolicySettings:
        if not self.detectors or len(set(self.detectors)) != len(self.detectors):
            raise ValueError("detectors must list each detector at most once, at least one")
        return self

    def policy(self, name: str) -> Policy:
        return Policy(
            name=name,
            codes=sorted_codes(self.categories),
            detectors=tuple(self.detectors),
            mode=self.mode,
            fail_mode=self.fail_mode,
            timeout_ms=self.detector_timeout_ms,
            role=self.role,
        )


def builtin_policies() -> dict[str, PolicySettings]:
    """Policies every server has (config may replace them or add others):
    default   pii -> semantic -> llama_guard as a cascade (llama_guard only for
              semantic scores in the uncertain band), all 14 categories, closed
    parallel  the three detectors at once; UNSAFE if any says so
    fast      pii -> semantic, no LLM: the cheapest check of all categories
    pii       the pii detector alone (S7 Privacy)"""
    sem, pii = DetectorName.SEMANTIC, DetectorName.PII
    return {
        "default": PolicySettings(),
        "parallel": PolicySettings(mode=ExecutionMode.PARALLEL),
        "fast": PolicySettings(detectors=[pii, sem]),
        "pii": PolicySettings(categories=["S7"], detectors=[pii]),
    }


def resolve_policies(
    configured: Mapping[str, PolicySettings], loaded: Iterable[DetectorName] | None = None
) -> dict[str, Policy]:
    """Built-in and configured policies. With `loaded` (the server's detectors),
    built-in policies needing another detector are left out; configured ones are
    kept, for the core to reject."""
    have = set(DetectorName) if loaded is None else set(loaded)
    builtin = {name: p for name, p in builtin_policies().items() if set(p.detectors) <= have}
    merged = {**builtin, **configured}
    return {name: settings.policy(name) for name, settings in merged.items()}

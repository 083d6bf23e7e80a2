"""The guardrail's domain types: what a detector is given, what it says, and
the interface every detector implements. No grpc here."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field

from services.guardrail.pii import PiiFinding
from services.guardrail.protocol import GuardRole, GuardTurn


class Verdict(enum.Enum):
    SAFE = "safe"
    UNSAFE = "unsafe"
    #: llama_guard only: output outside the protocol.
    UNPARSEABLE = "unparseable"
    #: The detector failed or timed out.
    ERROR = "error"

    @property
    def failed(self) -> bool:
        return self in (Verdict.UNPARSEABLE, Verdict.ERROR)


class DetectorName(enum.StrEnum):
    LLAMA_GUARD = "llama_guard"
    SEMANTIC = "semantic"
    PII = "pii"


@dataclass(frozen=True)
class GuardInput:
    request_id: str
    #: The conversation, oldest first; the last turn is the one classified.
    turns: tuple[GuardTurn, ...]
    role: GuardRole
    #: Checked categories, as codes ("S1".."S14"), in taxonomy order.
    codes: tuple[str, ...]

    @property
    def last(self) -> str:
        return self.turns[-1].content


@dataclass(frozen=True)
class DetectorResult:
    detector: DetectorName
    verdict: Verdict
    codes: tuple[str, ...] = ()
    #: In [0, 1], higher is more likely unsafe; None where the detector has none.
    score: float | None = None
    #: False for an inconclusive result (a semantic score in the uncertain band).
    confident: bool = True
    latency_ms: float = 0.0
    nearest_exemplar_id: str = ""
    model: str = ""
    stand_in: bool = False
    #: For UNPARSEABLE and ERROR: a short reason, never message text.
    error: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    pii: tuple[PiiFinding, ...] = field(default=())


class Detector(abc.ABC):
    """One way of classifying a message. `classify` returns a result or raises;
    the policy runner turns exceptions and timeouts into ERROR results."""

    name: DetectorName

    @abc.abstractmethod
    def covers(self) -> frozenset[str]:
        """The category codes this detector can judge."""

    @property
    def model(self) -> str:
        return ""

    @property
    def stand_in(self) -> bool:
        return False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load models, connect."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release what start took."""

    async def ready(self) -> bool:
        return True

    def queue_depth(self) -> int:
        """Requests waiting for this detector's model (an autoscaling signal); 0 for a
        detector that runs in the request's own task."""
        return 0

    async def check(self, guard_input: GuardInput) -> None:  # noqa: B027 - optional hook
        """Raise InvalidArgument when the input is outside this detector's limits;
        called for every detector a run may reach, before any runs."""

    @abc.abstractmethod
    async def classify(self, guard_input: GuardInput) -> DetectorResult:
        """The detector's finding on guard_input's last message, over the codes
        it covers among guard_input.codes."""

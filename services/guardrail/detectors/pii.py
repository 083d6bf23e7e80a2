"""The pii detector: personal data in the last message is S7 Privacy."""

from __future__ import annotations

from services.guardrail.domain import Detector, DetectorName, DetectorResult, GuardInput, Verdict
from services.guardrail.pii import find_pii
from services.guardrail.protocol import PRIVACY


class PiiDetector(Detector):
    name = DetectorName.PII

    def covers(self) -> frozenset[str]:
        return frozenset({PRIVACY})

    async def classify(self, guard_input: GuardInput) -> DetectorResult:
        findings = tuple(find_pii(guard_input.last))
        if findings:
            return DetectorResult(self.name, Verdict.UNSAFE, (PRIVACY,), pii=findings)
        return DetectorResult(self.name, Verdict.SAFE)

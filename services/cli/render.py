"""Text rendering of Chat events for a terminal: a pure function of the events, so
what the user sees can be tested without a server."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from atalaya.gateway.v1 import gateway_pb2 as gw
from atalaya.guardrail.v1 import guardrail_pb2 as guard

from services.client.gateway import stage_name
from services.common.vocab import DETECTOR, VERDICT, category_label

DIM = "\x1b[2m"
BOLD_RED = "\x1b[1;31m"
RESET = "\x1b[0m"


def category_name(category: int) -> str:
    """'S1 Violent Crimes' for HAZARD_CATEGORY_S1_VIOLENT_CRIMES."""
    if category == guard.HAZARD_CATEGORY_UNSPECIFIED:
        return "UNSPECIFIED"
    try:
        return category_label(category)
    except ValueError:
        return f"category {category}"


def detector_name(detector: int) -> str:
    """'llama_guard', 'semantic' or 'pii'."""
    return DETECTOR.name(detector, default=f"detector {detector}") or "unknown detector"


def _categories(categories: Iterable[int]) -> str:
    return ", ".join(category_name(c) for c in categories)


def format_verdict(verdict: gw.GuardVerdict) -> str:
    """One line, e.g. '[input guard: safe by semantic, 12 ms]'."""
    outcome = VERDICT.name(verdict.verdict) or "unspecified"
    if verdict.categories:
        outcome += f" ({_categories(verdict.categories)})"
    parts = [f"{outcome} by {detector_name(verdict.decided_by)}"]
    if verdict.stage == gw.GUARD_STAGE_OUTPUT and verdict.windows_checked:
        windows = verdict.windows_checked
        parts.append(f"{windows} window{'s' if windows != 1 else ''}")
    parts.append(f"{verdict.latency_ms:.0f} ms")
    if verdict.fail_mode_applied:
        parts.append("fail mode applied")
    if verdict.stand_in:
        parts.append("stand-in guard model")
    return f"[{stage_name(verdict.stage)} guard: {', '.join(parts)}]"


def format_blocked(blocked: gw.Blocked) -> str:
    """A heading line naming the stage, categories, reason and policy; then the
    refusal text."""
    details = []
    if blocked.categories:
        details.append(_categories(blocked.categories))
    if blocked.reason:
        details.append(blocked.reason)
    if blocked.fail_mode_applied:
        details.append("guardrail fail mode")
    if blocked.policy:
        details.append(f"policy {blocked.policy}")
    head = f"[blocked at {stage_name(blocked.stage)}"
    head += f": {'; '.join(details)}]" if details else "]"
    if blocked.stage == gw.GUARD_STAGE_OUTPUT:
        head += " (the reply above is withdrawn)"
    return f"{head}\n{blocked.refusal_text}" if blocked.refusal_text else head


def format_done(done: gw.Done, request_id: str) -> str:
    """One line: tokens, TTFT, total time, cost, memory, request id."""
    parts = [f"{done.usage.input_tokens} in / {done.usage.output_tokens} out tokens"]
    phases = done.timing.phases_ms
    if "ttft" in phases:
        parts.append(f"ttft {phases['ttft']:.0f} ms")
    parts.append(f"total {done.timing.total_ms:.0f} ms")
    if done.HasField("cost_usd"):
        parts.append(f"${done.cost_usd:.6f}")
    memory = done.memory
    if memory.degraded:
        parts.append(f"memory degraded ({memory.reason})" if memory.reason else "memory degraded")
    elif memory.used:
        parts.append(
            f"memory used ({memory.history_turns} turns, {memory.memories_recalled} recalled)"
        )
    else:
        parts.append("memory not used")
    if request_id:
        parts.append(f"request {request_id}")
    return f"[done: {', '.join(parts)}]"


@dataclass
class ChatRenderer:
    """Turns Chat events into terminal text: deltas inline as they come, every other
    event on its own line. `feed` returns what to write for one event."""

    color: bool = False
    _at_line_start: bool = field(default=True, init=False)

    def _line(self, text: str, style: str = DIM) -> str:
        prefix = "" if self._at_line_start else "\n"
        self._at_line_start = True
        if self.color:
            text = f"{style}{text}{RESET}"
        return f"{prefix}{text}\n"

    def feed(self, event: gw.ChatEvent) -> str:
        kind = event.WhichOneof("event")
        if kind == "delta":
            text = event.delta.text
            if text:
                self._at_line_start = text.endswith("\n")
            return text
        if kind == "verdict":
            return self._line(format_verdict(event.verdict))
        if kind == "blocked":
            heading, _, refusal = format_blocked(event.blocked).partition("\n")
            out = self._line(heading, BOLD_RED)
            if refusal:
                self._at_line_start = True
                out += refusal + "\n"
            return out
        if kind == "done":
            return self._line(format_done(event.done, event.request_id))
        return ""

    def finish(self) -> str:
        """What ends the turn's output cleanly (a newline if the cursor is mid-line)."""
        if self._at_line_start:
            return ""
        self._at_line_start = True
        return "\n"


def render_events(events: Iterable[gw.ChatEvent], *, color: bool = False) -> str:
    """The whole terminal text of a turn's events."""
    renderer = ChatRenderer(color=color)
    return "".join(renderer.feed(e) for e in events) + renderer.finish()

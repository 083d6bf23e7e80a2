"""The shipped prompt set: multi-turn conversations of varied lengths (JSON lines,
loadtests/prompts/conversations.jsonl). Each line is one conversation:

  {"id": "seed-qa", "turns": [{"user": "What is the capital of France?",
                               "reply": "The capital of France is Paris."}, ...]}

`reply` is the expected answer: `make loadtest` hands the replies to the generation
simulator as its scripts, so simulated turns read like real ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ScriptTurn:
    """One turn of a scripted conversation: what the user says, and the reply it expects."""

    user: str
    reply: str = ""


@dataclass(frozen=True)
class Conversation:
    id: str
    turns: tuple[ScriptTurn, ...]


def load_conversations(path: str | Path) -> list[Conversation]:
    out: list[Conversation] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        data = json.loads(line)
        turns = tuple(ScriptTurn(t["user"], t.get("reply", "")) for t in data["turns"])
        if not turns or any(not t.user.strip() for t in turns):
            raise ValueError(f"{path}:{number}: a conversation needs turns with a user message")
        out.append(Conversation(str(data.get("id", number)), turns))
    if not out:
        raise ValueError(f"{path}: no conversations")
    return out


def simulator_scripts(conversations: list[Conversation]) -> dict[str, str]:
    """user message -> reply, for the generation simulator's SCRIPTS setting."""
    return {t.user: t.reply for c in conversations for t in c.turns if t.reply}

"""Versioned prompt templates: TOML files (services.common.prompts) with a name,
a version, the system text and the memory block. The file's SHA-256 identifies
the exact text, so a reply can be reproduced from (template version, hash, seed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.prompts import load_prompt, require_placeholders

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_TEMPLATE = TEMPLATES_DIR / "chat.toml"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    sha256: str
    system: str
    memories: str
    temperature: float

    @classmethod
    def load(cls, path: Path) -> PromptTemplate:
        template = load_prompt(
            path,
            "prompt template",
            lambda file: cls(
                name=file.name,
                version=file.version,
                sha256=file.sha256,
                system=file.text("system"),
                memories=file.text("memories", "\n\n{memories}", strip=False),
                temperature=float(file.table.get("temperature", 0.7)),
            ),
        )
        require_placeholders(path, "memories block", template.memories, "{memories}")
        return template

    def render(
        self,
        message: str,
        history: Sequence[tuple[str, str]] = (),
        memories: Sequence[str] = (),
    ) -> list[tuple[str, str]]:
        """(role, content) messages: system (with recalled memories), the history's
        user/assistant pairs, oldest first, then the user's message."""
        system = self.system
        if memories:
            bullets = "\n".join(f"- {m}" for m in memories)
            system += self.memories.replace("{memories}", bullets)
        out = [("system", system)]
        for user, assistant in history:
            out += [("user", user), ("assistant", assistant)]
        out.append(("user", message))
        return out

"""Versioned prompt templates: TOML files with a name, a version, the system
text and the memory block. The file's SHA-256 identifies the exact text, so a
reply can be reproduced from (template version, hash, seed)."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
        raw = path.read_bytes()
        try:
            data = tomllib.loads(raw.decode("utf-8"))
            template = cls(
                name=str(data["name"]),
                version=str(data["version"]),
                sha256=hashlib.sha256(raw).hexdigest(),
                system=str(data["system"]).strip(),
                memories=str(data.get("memories", "\n\n{memories}")),
                temperature=float(data.get("temperature", 0.7)),
            )
        except (KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: not a prompt template ({exc})") from None
        if "{memories}" not in template.memories:
            raise ValueError(f"{path}: the memories block needs a {{memories}} placeholder")
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

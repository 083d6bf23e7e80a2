"""Versioned prompt files: TOML with a `name`, a `version` and the prompt's texts
(the gateway's chat templates, the evaluation's judge prompt). The SHA-256 of the
file's exact bytes identifies the text, so an output can be traced to (name,
version, hash) and reproduced."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class PromptFile:
    """A prompt file as read: its identity and its table of values."""

    name: str
    version: str
    sha256: str
    table: Mapping[str, Any]

    def text(self, key: str, default: str | None = None, *, strip: bool = True) -> str:
        """The text at `key` (stripped unless `strip` is False); KeyError when it is
        missing and there is no default."""
        if key not in self.table and default is not None:
            return default
        text = str(self.table[key])
        return text.strip() if strip else text


def load_prompt(path: Path, kind: str, build: Callable[[PromptFile], T]) -> T:
    """Read the prompt file at `path` and `build` a prompt from it. Invalid TOML, a
    missing key or a bad value is a ValueError naming the file and what it should
    have been (`kind`, e.g. "prompt template")."""
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
        return build(
            PromptFile(
                name=str(data["name"]),
                version=str(data["version"]),
                sha256=hashlib.sha256(raw).hexdigest(),
                table=data,
            )
        )
    except (KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: not a {kind} ({exc})") from None


def require_placeholders(path: Path, what: str, text: str, *placeholders: str) -> None:
    """ValueError naming the file unless `text` (the prompt's `what`) holds every
    placeholder."""
    for placeholder in placeholders:
        if placeholder not in text:
            raise ValueError(f"{path}: the {what} needs a {placeholder} placeholder")

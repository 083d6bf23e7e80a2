"""The chat message every service's conversations are made of: the domain
counterpart of atalaya.common.v1.ChatMessage (services.common.vocab converts
between the two). No grpc here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Role = Literal["system", "user", "assistant", "tool"]
#: The roles a message may have (the names of atalaya.common.v1.Role's values).
ROLES: frozenset[str] = frozenset(get_args(Role))


@dataclass(frozen=True)
class ChatMessage:
    #: One of ROLES; cores reject anything else (a servicer passes "" for an unset role).
    role: str
    content: str
    #: The author's name, when the caller gave one.
    name: str = ""

"""Text helpers shared by the engines that stream text themselves: stop-string
matching over a growing completion, and UTF-8 assembly of token pieces."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StopMatch:
    text: str  # the text before the stop string (not yet emitted)
    stop: str  # the stop string that matched


class StopMatcher:
    """Feed completion text piece by piece; get back the text that is safe to
    emit now. Text that could be the start of a stop string is held back until
    it is known not to be; when a stop string appears, `feed` returns a
    StopMatch holding the text before it (the stop string itself is dropped).
    With several candidates, the one starting first wins (then the longest)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""

    def feed(self, piece: str) -> str | StopMatch:
        if not self._stops:
            return piece
        text = self._pending + piece
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            at = text.find(stop)
            if at >= 0 and (best is None or (at, -len(stop)) < (best[0], -best[1])):
                best = (at, len(stop), stop)
        if best is not None:
            self._pending = ""
            return StopMatch(text=text[: best[0]], stop=best[2])
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        cut = len(text) - hold
        self._pending = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        """The held-back text, when the completion ends without a stop string."""
        out, self._pending = self._pending, ""
        return out


class Utf8Assembler:
    """Token pieces are bytes that may split a character; this yields whole
    characters only (invalid sequences become U+FFFD)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)

"""Output moderation of a generation stream, in windows of tokens.

The reply is cut into consecutive windows of `window_tokens` tokens (at delta
boundaries); each window is checked together with up to `lookback_tokens`
tokens before it, so that content split across a boundary is still seen whole.
The last, partial window is checked when generation ends.

  buffered    a delta is released only when every window up to the one holding
              it has been judged safe, and, but at the end, once the next window
              (which sees it again as look-back) has been too; windows are
              checked while generation goes on, so the client sees text about a
              window behind the model.
  optimistic  deltas are released at once; windows are checked alongside (at
              most `max_parallel` at a time) and the first unsafe one stops
              the stream.

On an unsafe window the generation stream is closed at once (which cancels the
upstream call and aborts generation) and pending checks are cancelled. A check
that fails (the guardrail unreachable, timed out) counts as unsafe when the
gateway fails closed, and as safe when it fails open; either way it is marked."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from services.gateway.upstream import GenDelta, GenDone, GuardResult

Mode = Literal["buffered", "optimistic"]
#: check(text) -> verdict on the reply text (with look-back), never raises.
Check = Callable[[str], Awaitable[GuardResult]]


@dataclass
class _Window:
    index: int
    start: int  # first chunk of the window
    end: int  # one past its last chunk
    result: GuardResult | None = None


@dataclass
class Moderated:
    """What the stream came to, once run() has finished."""

    unsafe: GuardResult | None = None  # the first unsafe window's verdict
    done: GenDone | None = None
    windows_checked: int = 0
    guard_ms: float = 0.0  # wall time with at least one check running
    text: str = ""  # the reply as generated (up to the abort)
    output_tokens: int = 0
    fail_mode_applied: bool = False
    stand_in: bool = False
    input_tokens_guard: int = 0
    output_tokens_guard: int = 0
    decided_by: str = ""
    policy: str = ""
    released_tokens: int = 0
    _busy_since: float | None = field(default=None, repr=False)


class StreamModerator:
    def __init__(
        self,
        check: Check,
        *,
        mode: Mode,
        window_tokens: int,
        lookback_tokens: int,
        max_parallel: int,
    ) -> None:
        self._check = check
        self._mode = mode
        self._window_tokens = window_tokens
        self._lookback_tokens = lookback_tokens
        self._slots = asyncio.Semaphore(max_parallel if mode == "optimistic" else 1 << 30)
        self._chunks: list[GenDelta] = []
        self._windows: list[_Window] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._pending_tokens = 0
        self.outcome = Moderated()

    def _window_text(self, w: _Window) -> str:
        start, budget = w.start, self._lookback_tokens
        while start > 0 and budget > 0:
            start -= 1
            budget -= self._chunks[start].token_count
        return "".join(c.text for c in self._chunks[start : w.end])

    def _tick(self, delta: int) -> None:
        now = time.perf_counter()
        if self._inflight == 0 and delta > 0:
            self.outcome._busy_since = now
        self._inflight += delta
        if self._inflight == 0 and self.outcome._busy_since is not None:
            self.outcome.guard_ms += (now - self.outcome._busy_since) * 1000.0
            self.outcome._busy_since = None

    def _start_check(self, window: _Window, events: asyncio.Queue[object]) -> None:
        async def run() -> None:
            async with self._slots:
                self._tick(+1)
                try:
                    window.result = await self._check(self._window_text(window))
                finally:
                    self._tick(-1)
            await events.put(window)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close_window(self, end: int, events: asyncio.Queue[object]) -> None:
        start = self._windows[-1].end if self._windows else 0
        if end > start:
            window = _Window(len(self._windows), start, end)
            self._windows.append(window)
            self._start_check(window, events)

    def _releasable(self) -> int:
        """Chunks that may go out. Optimistic: all. Buffered: those of the leading
        run of windows judged safe, less the last `lookback_tokens` while a later
        window (which will see them again, with what follows) is still to come:
        content split across a window boundary is never half shown."""
        if self._mode == "optimistic":
            return len(self._chunks)
        end = 0
        for w in self._windows:
            if w.result is None or w.result.unsafe:
                break
            end = w.end
        finished = self.outcome.done is not None and end == len(self._chunks)
        budget = 0 if finished else self._lookback_tokens
        while end > 0 and budget > 0:
            end -= 1
            budget -= self._chunks[end].token_count
        return end

    def _absorb(self, result: GuardResult) -> None:
        o = self.outcome
        o.windows_checked += 1
        o.input_tokens_guard += result.input_tokens
        o.output_tokens_guard += result.output_tokens
        o.fail_mode_applied |= result.fail_mode_applied
        o.stand_in |= result.stand_in
        o.policy = result.policy or o.policy
        if result.unsafe and o.unsafe is None:
            o.unsafe = result
            o.decided_by = result.decided_by
        elif not o.decided_by:
            o.decided_by = result.decided_by

    def _take(self, item: object, events: asyncio.Queue[object]) -> bool:
        """Account for one event; True when it is an unsafe window's verdict."""
        if isinstance(item, GenDelta):
            self._chunks.append(item)
            self.outcome.text += item.text
            self.outcome.output_tokens += item.token_count
            self._pending_tokens += item.token_count
            if self._pending_tokens >= self._window_tokens:
                self._close_window(len(self._chunks), events)
                self._pending_tokens = 0
        elif isinstance(item, GenDone):
            self.outcome.done = item
            self._close_window(len(self._chunks), events)
        elif isinstance(item, _Window):
            assert item.result is not None
            self._absorb(item.result)
            return item.result.unsafe
        return False

    async def run(self, stream: AsyncIterable[GenDelta | GenDone]) -> AsyncIterator[GenDelta]:
        """Consume `stream`, yielding the deltas that may be shown, in order.
        When it returns, `outcome` says whether the reply was cut off."""
        events: asyncio.Queue[object] = asyncio.Queue()
        released = 0

        async def pump() -> None:
            try:
                async for item in stream:
                    await events.put(item)
            except BaseException as exc:
                await events.put(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

        pumping = asyncio.create_task(pump())
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise item
                if self._take(item, events):
                    return  # an unsafe window
                limit = self._releasable()
                while released < limit:
                    chunk = self._chunks[released]
                    released += 1
                    self.outcome.released_tokens += chunk.token_count
                    yield chunk
                checked = self.outcome.windows_checked == len(self._windows)
                if self.outcome.done is not None and checked and released == len(self._chunks):
                    return
        finally:
            pumping.cancel()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(BaseException):
                await pumping
            for task in list(self._tasks):
                with contextlib.suppress(BaseException):
                    await task
            if self.outcome._busy_since is not None:
                elapsed = time.perf_counter() - self.outcome._busy_since
                self.outcome.guard_ms += elapsed * 1000.0

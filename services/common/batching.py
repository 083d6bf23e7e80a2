"""Dynamic micro-batching: concurrent callers' items are coalesced into batches for
one compute function that runs on a dedicated worker thread, so the event loop
never blocks and the model never waits for the event loop.

The worker thread takes batches straight from a locked queue: a batch starts as
soon as the previous one is done and either `max_batch` items wait or the oldest
has waited `max_wait_s`. Items that arrive while a batch computes form the next one
at once. A caller's items may span batches; its future completes (on the event
loop) when all of them are done. `max_queued` bounds the items waiting: beyond it,
submit raises ResourceExhausted (backpressure instead of an unbounded pile-up)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from services.common.errors import ResourceExhausted, Unavailable

In = TypeVar("In")
Out = TypeVar("Out")

log = logging.getLogger(__name__)


@dataclass
class BatchTiming:
    queue_s: float  # from submit to the start of the caller's last batch
    compute_s: float  # summed compute time of the batches that held its items


@dataclass
class _Pending(Generic[In, Out]):
    items: Sequence[In]
    future: asyncio.Future[tuple[list[Out], BatchTiming]]
    enqueued: float
    taken: int = 0  # items handed to a batch so far (worker thread, under the lock)
    finished: bool = False  # failed or cancelled: skip its remaining items
    results: list[Out | None] = field(default_factory=list)
    done_count: int = 0
    last_batch_start: float = 0.0
    compute_s: float = 0.0

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)


_Owners = list[tuple[_Pending[In, Out], int, int]]


class MicroBatcher(Generic[In, Out]):
    """Coalesce concurrent `submit` calls into batches for `compute`."""

    def __init__(
        self,
        compute: Callable[[list[In]], list[Out]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queued: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queued < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queued must be >= 1, max_wait_s >= 0")
        self._compute = compute
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queued = max_queued
        self._on_batch = on_batch
        self._queue: deque[_Pending[In, Out]] = deque()
        self._queued_items = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="batch-worker", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._queued_items = 0
            self._cond.notify_all()
        for pending in waiting:
            self._fail(pending, Unavailable("server is shutting down"))
        if self._thread is not None:
            # A batch still computing finishes on its own; its callers are failed by
            # the worker when it sees the batcher closed. Never block the loop on it.
            await asyncio.to_thread(self._thread.join, 30.0)

    async def submit(self, items: Sequence[In]) -> tuple[list[Out], BatchTiming]:
        """Results for `items`, in order, once every batch holding them has run."""
        if self._closed or self._thread is None:
            raise Unavailable("batcher is not running")
        if not items:
            return [], BatchTiming(0.0, 0.0)
        loop = asyncio.get_running_loop()
        pending: _Pending[In, Out] = _Pending(items, loop.create_future(), time.perf_counter())
        with self._cond:
            if self._queued_items + len(items) > self._max_queued:
                raise ResourceExhausted(
                    f"queue full ({self._queued_items} items waiting, limit {self._max_queued})"
                )
            self._queue.append(pending)
            self._queued_items += len(items)
            self._cond.notify()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The caller went away: drop whatever was not handed to a batch yet.
            with self._cond:
                pending.finished = True
                if pending in self._queue:
                    self._queue.remove(pending)
                    self._queued_items -= len(items) - pending.taken
            raise

    # --- worker thread -------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                batch, owners = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            started = time.perf_counter()
            for pending, _, _ in owners:
                pending.last_batch_start = started
            try:
                outputs = self._compute(batch)
                if len(outputs) != len(batch):
                    raise RuntimeError(f"compute returned {len(outputs)} for {len(batch)} items")
            except Exception as exc:  # the batch's callers get the error, the worker lives on
                log.exception("batch failed", extra={"batch_size": len(batch)})
                with self._cond:  # their remaining items must not be computed
                    for pending, _, _ in owners:
                        pending.finished = True
                self._call_soon(self._fail_all, owners, exc)
                continue
            elapsed = time.perf_counter() - started
            if self._on_batch is not None:
                self._on_batch(len(batch), elapsed)
            self._call_soon(self._distribute, outputs, owners, elapsed)

    def _next_batch(self) -> tuple[list[In] | None, _Owners[In, Out]]:
        """Under the lock: wait for work, let the batch fill, take it. None: closed."""
        while not self._queue and not self._closed:
            self._cond.wait()
        if self._closed:
            return None, []
        deadline = self._queue[0].enqueued + self._max_wait_s
        while self._queued_items < self._max_batch and not self._closed:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not self._queue:
                break
            self._cond.wait(remaining)
        if self._closed:
            return None, []
        return self._take()

    def _take(self) -> tuple[list[In], _Owners[In, Out]]:
        """Up to max_batch items from the queue head; owners hold (pending, start, end)."""
        batch: list[In] = []
        owners: _Owners[In, Out] = []
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue[0]
            if pending.finished:
                self._queue.popleft()
                self._queued_items -= len(pending.items) - pending.taken
                continue
            n = min(self._max_batch - len(batch), len(pending.items) - pending.taken)
            start = pending.taken
            batch.extend(pending.items[start : start + n])
            owners.append((pending, start, start + n))
            pending.taken += n
            self._queued_items -= n
            if pending.taken == len(pending.items):
                self._queue.popleft()
        return batch, owners

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
            self._loop.call_soon_threadsafe(callback, *args)

    # --- event loop ----------------------------------------------------------

    def _fail(self, pending: _Pending[In, Out], exc: Exception) -> None:
        with self._cond:
            pending.finished = True
        if not pending.future.done():
            pending.future.set_exception(exc)

    def _fail_all(self, owners: _Owners[In, Out], exc: Exception) -> None:
        for pending, _, _ in owners:
            self._fail(pending, exc)

    def _distribute(self, outputs: list[Out], owners: _Owners[In, Out], elapsed: float) -> None:
        offset = 0
        for pending, start, end in owners:
            n = end - start
            pending.results[start:end] = outputs[offset : offset + n]
            offset += n
            pending.done_count += n
            pending.compute_s += elapsed
            if self._closed and pending.done_count < len(pending.items):
                self._fail(pending, Unavailable("server is shutting down"))
            elif pending.done_count == len(pending.items) and not pending.future.done():
                timing = BatchTiming(pending.last_batch_start - pending.enqueued, pending.compute_s)
                pending.future.set_result((cast(list[Out], pending.results), timing))

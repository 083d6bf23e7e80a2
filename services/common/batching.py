"""Dynamic micro-batching: concurrent callers' items are coalesced into batches for
one compute function that runs in a worker thread, so the event loop never blocks.

A batch starts as soon as the worker is free and either `max_batch` items wait or
the oldest has waited `max_wait_s`. Items that arrive while a batch computes form
the next one at once. A caller's items may span batches; its future completes when
all of them are done. `max_queued` bounds the items waiting: beyond it, submit
raises ResourceExhausted (backpressure instead of an unbounded pile-up)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    taken: int = 0  # items handed to a batch so far
    results: list[Out | None] = field(default_factory=list)
    done_count: int = 0
    last_batch_start: float = 0.0
    compute_s: float = 0.0

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)


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
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(Unavailable("server is shutting down"))
        self._queue.clear()
        # Never block the event loop on a batch still running in the worker thread.
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: Sequence[In]) -> tuple[list[Out], BatchTiming]:
        """Results for `items`, in order, once every batch holding them has run."""
        if self._closed or self._worker is None:
            raise Unavailable("batcher is not running")
        if not items:
            return [], BatchTiming(0.0, 0.0)
        if self._queued_items + len(items) > self._max_queued:
            raise ResourceExhausted(
                f"queue full ({self._queued_items} items waiting, limit {self._max_queued})"
            )
        loop = asyncio.get_running_loop()
        pending: _Pending[In, Out] = _Pending(items, loop.create_future(), time.perf_counter())
        self._queue.append(pending)
        self._queued_items += len(items)
        self._arrived.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The caller went away: drop whatever was not handed to a batch yet.
            if pending in self._queue:
                self._queue.remove(pending)
                self._queued_items -= len(items) - pending.taken
            raise

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_fill()
            batch, owners = self._take()
            if not batch:
                continue
            started = time.perf_counter()
            for pending, _, _ in owners:
                pending.last_batch_start = started
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._compute, batch
                )
                if len(outputs) != len(batch):
                    raise RuntimeError(f"compute returned {len(outputs)} for {len(batch)} items")
            except asyncio.CancelledError:  # closing: the batch's callers must not wait forever
                for pending, _, _ in owners:
                    if not pending.future.done():
                        pending.future.set_exception(Unavailable("server is shutting down"))
                raise
            except Exception as exc:  # the batch's callers get the error, the worker lives on
                log.exception("batch failed", extra={"batch_size": len(batch)})
                for pending, _, _ in owners:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - started
            if self._on_batch is not None:
                self._on_batch(len(batch), elapsed)
            self._distribute(outputs, owners, elapsed)

    async def _wait_for_fill(self) -> None:
        deadline = self._queue[0].enqueued + self._max_wait_s
        while self._queued_items < self._max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
            if not self._queue:
                return

    def _take(self) -> tuple[list[In], list[tuple[_Pending[In, Out], int, int]]]:
        """Up to max_batch items from the queue head; owners hold (pending, start, end)."""
        batch: list[In] = []
        owners: list[tuple[_Pending[In, Out], int, int]] = []
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue[0]
            if pending.future.done():  # cancelled
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

    def _distribute(
        self,
        outputs: list[Out],
        owners: list[tuple[_Pending[In, Out], int, int]],
        elapsed: float,
    ) -> None:
        offset = 0
        for pending, start, end in owners:
            n = end - start
            pending.results[start:end] = outputs[offset : offset + n]
            offset += n
            pending.done_count += n
            pending.compute_s += elapsed
            if pending.done_count == len(pending.items) and not pending.future.done():
                timing = BatchTiming(pending.last_batch_start - pending.enqueued, pending.compute_s)
                pending.future.set_result((cast(list[Out], pending.results), timing))

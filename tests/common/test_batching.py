"""MicroBatcher: coalescing, spanning, backpressure, failures, cancellation, close."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from services.common.batching import MicroBatcher
from services.common.errors import ResourceExhausted, Unavailable
from tests.support.polling import async_wait_until

BatcherFactory = Callable[..., MicroBatcher[str, str]]


class Compute:
    """A compute function that records its batches and the threads it ran on.

    With `gated=True` the first batch blocks until `release()` is called, so a
    test can arrange what is queued while a batch is in flight."""

    def __init__(self, *, gated: bool = False, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.thread_ids: set[int] = set()
        self.thread_names: set[str] = set()
        self.in_flight = threading.Event()
        self._gate = threading.Event()
        if not gated:
            self._gate.set()
        self._fail_on = fail_on

    def release(self) -> None:
        self._gate.set()

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.thread_ids.add(threading.get_ident())
        self.thread_names.add(threading.current_thread().name)
        self.in_flight.set()
        self._gate.wait(10)
        if self._fail_on is not None and self._fail_on in items:
            raise RuntimeError(f"cannot compute {self._fail_on}")
        return [s.upper() for s in items]

    @property
    def computed(self) -> list[str]:
        return [item for batch in self.batches for item in batch]


@pytest.fixture
async def make_batcher() -> AsyncIterator[BatcherFactory]:
    made: list[tuple[MicroBatcher[str, str], Any]] = []

    def make(compute: Callable[[list[str]], list[str]], **kwargs: Any) -> MicroBatcher[str, str]:
        options: dict[str, Any] = {"max_batch": 8, "max_wait_s": 0.01, "max_queued": 100}
        options.update(kwargs)
        batcher: MicroBatcher[str, str] = MicroBatcher(compute, **options)
        batcher.start()
        made.append((batcher, compute))
        return batcher

    yield make
    for batcher, compute in made:
        if isinstance(compute, Compute):
            compute.release()
        await batcher.close()


async def test_concurrent_submits_are_coalesced_and_results_keep_caller_order(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute()
    sizes: list[int] = []
    batcher = make_batcher(
        compute,
        max_batch=30,
        max_wait_s=0.5,
        max_queued=1000,
        on_batch=lambda size, _elapsed: sizes.append(size),
    )
    requests = [[f"c{i}-{j}" for j in range(3)] for i in range(10)]

    answers = await asyncio.gather(*(batcher.submit(items) for items in requests))

    for items, (results, _timing) in zip(requests, answers, strict=True):
        assert results == [s.upper() for s in items]
    assert len(compute.batches) < len(requests)
    assert max(len(b) for b in compute.batches) > 3
    assert sorted(compute.computed) == sorted(s for items in requests for s in items)
    assert sizes == [len(b) for b in compute.batches]
    assert batcher.queued_items == 0


async def test_a_caller_larger_than_max_batch_spans_batches_in_order(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute()
    batcher = make_batcher(compute, max_batch=4)
    items = [f"item{i:02d}" for i in range(10)]

    results, timing = await batcher.submit(items)

    assert results == [s.upper() for s in items]
    assert [len(b) for b in compute.batches] == [4, 4, 2]
    assert compute.computed == items
    assert timing.queue_s >= 0.0
    assert timing.compute_s >= 0.0


async def test_large_and_small_callers_together_each_get_their_own_results(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute()
    batcher = make_batcher(compute, max_batch=4)
    big = [f"big{i}" for i in range(11)]
    small = ["s0", "s1", "s2"]

    (big_results, _), (small_results, _) = await asyncio.gather(
        batcher.submit(big), batcher.submit(small)
    )

    assert big_results == [s.upper() for s in big]
    assert small_results == [s.upper() for s in small]
    assert all(len(b) <= 4 for b in compute.batches)
    assert sorted(compute.computed) == sorted(big + small)


async def test_empty_submit_returns_nothing_without_computing(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute()
    batcher = make_batcher(compute)
    results, _ = await batcher.submit([])
    assert results == []
    assert compute.batches == []


async def test_more_than_max_queued_items_is_resource_exhausted(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute(gated=True)
    batcher = make_batcher(compute, max_batch=1, max_queued=3)
    first = asyncio.create_task(batcher.submit(["a"]))
    await async_wait_until(compute.in_flight.is_set)  # "a" was taken; the queue is empty
    waiting = asyncio.create_task(batcher.submit(["b1", "b2", "b3"]))
    await async_wait_until(lambda: batcher.queued_items == 3)

    with pytest.raises(ResourceExhausted, match=r"limit 3"):
        await batcher.submit(["c"])

    compute.release()
    assert (await first)[0] == ["A"]
    assert (await waiting)[0] == ["B1", "B2", "B3"]
    assert "c" not in compute.computed
    assert batcher.queued_items == 0
    assert (await batcher.submit(["d"]))[0] == ["D"]


async def test_one_call_above_max_queued_is_rejected_even_when_idle(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute()
    batcher = make_batcher(compute, max_queued=3)
    with pytest.raises(ResourceExhausted, match=r"queue full"):
        await batcher.submit(["a", "b", "c", "d"])
    assert compute.batches == []
    assert batcher.queued_items == 0


async def test_a_compute_error_fails_only_that_batch_and_the_worker_lives_on(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute(gated=True, fail_on="boom")
    batcher = make_batcher(compute, max_batch=2)
    gated = asyncio.create_task(batcher.submit(["gate"]))
    await async_wait_until(compute.in_flight.is_set)
    failing = asyncio.create_task(batcher.submit(["boom", "x2"]))
    await async_wait_until(lambda: batcher.queued_items == 2)
    bystander = asyncio.create_task(batcher.submit(["y1"]))
    await async_wait_until(lambda: batcher.queued_items == 3)

    compute.release()

    assert (await gated)[0] == ["GATE"]
    with pytest.raises(RuntimeError, match="cannot compute boom"):
        await failing
    assert (await bystander)[0] == ["Y1"]
    assert compute.batches == [["gate"], ["boom", "x2"], ["y1"]]
    assert (await batcher.submit(["later"]))[0] == ["LATER"]


async def test_a_failed_caller_spanning_batches_has_its_remaining_items_dropped(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute(fail_on="b1")
    batcher = make_batcher(compute, max_batch=2)

    with pytest.raises(RuntimeError, match="cannot compute b1"):
        await batcher.submit(["b1", "b2", "b3", "b4", "b5"])

    assert (await batcher.submit(["c"]))[0] == ["C"]
    assert compute.batches == [["b1", "b2"], ["c"]]
    assert batcher.queued_items == 0


async def test_compute_returning_the_wrong_count_fails_its_callers(
    make_batcher: BatcherFactory,
) -> None:
    calls: list[list[str]] = []

    def short(items: list[str]) -> list[str]:
        calls.append(items)
        return [] if len(calls) == 1 else [s.upper() for s in items]

    batcher = make_batcher(short)
    with pytest.raises(RuntimeError, match="compute returned 0 for 1 items"):
        await batcher.submit(["a"])
    assert (await batcher.submit(["b"]))[0] == ["B"]


async def test_a_cancelled_callers_queued_items_are_not_computed(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute(gated=True)
    batcher = make_batcher(compute, max_batch=1)
    first = asyncio.create_task(batcher.submit(["a"]))
    await async_wait_until(compute.in_flight.is_set)
    cancelled = asyncio.create_task(batcher.submit(["b1", "b2"]))
    await async_wait_until(lambda: batcher.queued_items == 2)

    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert batcher.queued_items == 0

    compute.release()
    assert (await first)[0] == ["A"]
    assert (await batcher.submit(["c"]))[0] == ["C"]
    assert compute.computed == ["a", "c"]


async def test_a_cancelled_caller_spanning_batches_loses_only_its_untaken_items(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute(gated=True)
    batcher = make_batcher(compute, max_batch=2)
    spanning = asyncio.create_task(batcher.submit(["b1", "b2", "b3", "b4"]))
    await async_wait_until(compute.in_flight.is_set)  # b1, b2 are in the running batch
    assert batcher.queued_items == 2

    spanning.cancel()
    with pytest.raises(asyncio.CancelledError):
        await spanning
    assert batcher.queued_items == 0

    compute.release()
    assert (await batcher.submit(["c"]))[0] == ["C"]
    assert compute.batches == [["b1", "b2"], ["c"]]


async def test_compute_runs_off_the_event_loop_thread(make_batcher: BatcherFactory) -> None:
    compute = Compute()
    batcher = make_batcher(compute)
    loop_thread = threading.get_ident()

    await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"]))
    await batcher.submit(["c"])

    assert compute.thread_ids
    assert loop_thread not in compute.thread_ids
    assert all(name.startswith("batch") for name in compute.thread_names)


async def test_close_fails_waiting_callers_with_unavailable(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute()
    # A long fill window keeps the items queued until close.
    batcher = make_batcher(compute, max_batch=100, max_wait_s=30.0)
    a = asyncio.create_task(batcher.submit(["a"]))
    b = asyncio.create_task(batcher.submit(["b1", "b2"]))
    await async_wait_until(lambda: batcher.queued_items == 3)

    await batcher.close()

    for task in (a, b):
        with pytest.raises(Unavailable, match="shutting down"):
            await task
    assert compute.batches == []
    with pytest.raises(Unavailable):
        await batcher.submit(["late"])


async def test_close_does_not_strand_callers_whose_batch_is_computing(
    make_batcher: BatcherFactory,
) -> None:
    compute = Compute(gated=True)
    batcher = make_batcher(compute)
    in_flight = asyncio.create_task(batcher.submit(["a"]))
    await async_wait_until(compute.in_flight.is_set)
    # close() joins the compute thread; let the batch finish shortly after.
    timer = threading.Timer(0.2, compute.release)
    timer.start()
    try:
        await batcher.close()
        done, _ = await asyncio.wait({in_flight}, timeout=3.0)
    finally:
        timer.cancel()
        compute.release()
    assert in_flight in done, "the caller of the in-flight batch was never answered"
    exc = in_flight.exception()
    if exc is None:
        assert in_flight.result()[0] == ["A"]
    else:
        assert isinstance(exc, Unavailable)


async def test_submit_before_start_is_unavailable() -> None:
    batcher: MicroBatcher[str, str] = MicroBatcher(
        Compute(), max_batch=2, max_wait_s=0.0, max_queued=10
    )
    with pytest.raises(Unavailable, match="not running"):
        await batcher.submit(["a"])


@pytest.mark.parametrize(
    ("max_batch", "max_wait_s", "max_queued"),
    [(0, 0.0, 10), (1, -0.1, 10), (1, 0.0, 0)],
)
def test_invalid_limits_are_rejected(max_batch: int, max_wait_s: float, max_queued: int) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Compute(), max_batch=max_batch, max_wait_s=max_wait_s, max_queued=max_queued)

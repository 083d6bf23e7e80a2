"""SlotPool: bounded concurrent slots with a bounded FIFO wait queue."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import ResourceExhausted, Unavailable
from services.engines.slots import SlotPool


class Token:
    """A request token compared by identity, like the engines' jobs."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Token({self.name})"


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        SlotPool[Token](0, 1)
    with pytest.raises(ValueError):
        SlotPool[Token](1, -1)


async def test_free_slots_are_taken_at_once() -> None:
    pool: SlotPool[Token] = SlotPool(2, 0)
    a, b = Token("a"), Token("b")
    await pool.acquire(a)
    await pool.acquire(b)
    assert pool.in_flight == 2
    assert pool.queued == 0
    assert pool.holds(a)
    assert pool.holds(b)
    assert set(pool.holders()) == {a, b}


async def test_full_queue_raises_resource_exhausted() -> None:
    pool: SlotPool[Token] = SlotPool(1, 1, exhausted_message=lambda n: f"{n} waiting")
    await pool.acquire(Token("a"))
    waiter = asyncio.create_task(pool.acquire(Token("b")))
    await _settle()
    assert pool.queued == 1
    with pytest.raises(ResourceExhausted, match="1 waiting"):
        await pool.acquire(Token("c"))
    assert pool.queued == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def test_no_queue_means_exhausted_when_busy() -> None:
    pool: SlotPool[Token] = SlotPool(1, 0)
    await pool.acquire(Token("a"))
    with pytest.raises(ResourceExhausted):
        await pool.acquire(Token("b"))
    assert pool.queued == 0


async def test_release_hands_slot_to_waiters_in_fifo_order() -> None:
    pool: SlotPool[Token] = SlotPool(1, 5)
    first = Token("first")
    await pool.acquire(first)
    order: list[str] = []
    tokens = [Token(str(i)) for i in range(3)]

    async def take(token: Token) -> None:
        await pool.acquire(token)
        order.append(token.name)

    tasks = [asyncio.create_task(take(t)) for t in tokens]
    await _settle()
    assert pool.waiters() == tuple(tokens)
    assert order == []

    assert pool.release(first)
    await _settle()
    assert order == ["0"]
    assert pool.holds(tokens[0])
    assert pool.in_flight == 1
    assert pool.queued == 2

    for t in tokens:
        pool.release(t)
        await _settle()
    await asyncio.gather(*tasks)
    assert order == ["0", "1", "2"]
    assert pool.in_flight == 0
    assert pool.queued == 0


async def test_newcomer_does_not_jump_the_queue() -> None:
    pool: SlotPool[Token] = SlotPool(1, 5)
    a, b, c = Token("a"), Token("b"), Token("c")
    await pool.acquire(a)
    waiter = asyncio.create_task(pool.acquire(b))
    await _settle()
    pool.release(a)  # b is granted; its task has not resumed yet
    late = asyncio.create_task(pool.acquire(c))
    await _settle()
    assert waiter.done()
    assert pool.holds(b)
    assert not late.done()
    assert pool.is_waiting(c)
    pool.release(b)
    await late
    assert pool.holds(c)


async def test_release_is_idempotent() -> None:
    pool: SlotPool[Token] = SlotPool(2, 2)
    a = Token("a")
    await pool.acquire(a)
    assert pool.release(a)
    assert not pool.release(a)
    assert not pool.release(Token("never"))
    assert pool.in_flight == 0


async def test_double_acquire_is_an_error() -> None:
    pool: SlotPool[Token] = SlotPool(2, 2)
    a = Token("a")
    await pool.acquire(a)
    with pytest.raises(ValueError):
        await pool.acquire(a)


async def test_fail_waiting_raises_unavailable_and_frees_the_place() -> None:
    pool: SlotPool[Token] = SlotPool(1, 1)
    a, b, c = Token("a"), Token("b"), Token("c")
    await pool.acquire(a)
    waiter = asyncio.create_task(pool.acquire(b))
    await _settle()
    assert pool.fail_waiting(b, "request aborted")
    assert pool.queued == 0
    with pytest.raises(Unavailable, match="request aborted"):
        await waiter
    assert not pool.fail_waiting(b, "again")
    assert not pool.fail_waiting(a, "holder")  # holders are not waiters
    assert pool.holds(a)
    # The freed place can be used again, and the slot goes to the new waiter.
    other = asyncio.create_task(pool.acquire(c))
    await _settle()
    pool.release(a)
    await other
    assert pool.holds(c)


async def test_fail_all_waiting() -> None:
    pool: SlotPool[Token] = SlotPool(1, 3)
    await pool.acquire(Token("a"))
    tasks = [asyncio.create_task(pool.acquire(Token(str(i)))) for i in range(3)]
    await _settle()
    pool.fail_all_waiting("engine stopped")
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Unavailable) and str(r) == "engine stopped" for r in results)
    assert pool.queued == 0
    assert pool.in_flight == 1


async def test_failed_waiter_is_skipped_on_release() -> None:
    pool: SlotPool[Token] = SlotPool(1, 3)
    a, b, c = Token("a"), Token("b"), Token("c")
    await pool.acquire(a)
    tb = asyncio.create_task(pool.acquire(b))
    tc = asyncio.create_task(pool.acquire(c))
    await _settle()
    pool.fail_waiting(b, "aborted")
    pool.release(a)
    await tc
    assert pool.holds(c)
    assert not pool.holds(b)
    with pytest.raises(Unavailable):
        await tb


async def test_cancelled_waiter_leaves_the_queue() -> None:
    pool: SlotPool[Token] = SlotPool(1, 2)
    a, b, c = Token("a"), Token("b"), Token("c")
    await pool.acquire(a)
    tb = asyncio.create_task(pool.acquire(b))
    tc = asyncio.create_task(pool.acquire(c))
    await _settle()
    tb.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tb
    assert pool.waiters() == (c,)
    pool.release(a)
    await tc
    assert pool.holds(c)
    assert pool.in_flight == 1


async def test_waiter_cancelled_just_after_grant_gives_the_slot_back() -> None:
    pool: SlotPool[Token] = SlotPool(1, 2)
    a, b, c = Token("a"), Token("b"), Token("c")
    await pool.acquire(a)
    tb = asyncio.create_task(pool.acquire(b))
    tc = asyncio.create_task(pool.acquire(c))
    await _settle()
    pool.release(a)  # grants b ...
    assert pool.holds(b)
    tb.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await tb
    await tc  # the slot went on to c
    assert not pool.holds(b)
    assert pool.holds(c)
    assert pool.in_flight == 1
    assert pool.queued == 0


async def test_waiter_cancelled_after_grant_with_nobody_behind_frees_the_slot() -> None:
    pool: SlotPool[Token] = SlotPool(1, 1)
    a, b = Token("a"), Token("b")
    await pool.acquire(a)
    tb = asyncio.create_task(pool.acquire(b))
    await _settle()
    pool.release(a)
    tb.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tb
    assert pool.in_flight == 0
    assert pool.queued == 0


async def test_failed_then_cancelled_waiter_leaks_nothing() -> None:
    pool: SlotPool[Token] = SlotPool(1, 1)
    a, b = Token("a"), Token("b")
    await pool.acquire(a)
    tb = asyncio.create_task(pool.acquire(b))
    await _settle()
    pool.fail_waiting(b, "aborted")
    tb.cancel()
    with pytest.raises((asyncio.CancelledError, Unavailable)):
        await tb
    assert pool.in_flight == 1
    assert pool.queued == 0


async def test_release_grants_several_waiters_when_capacity_allows() -> None:
    pool: SlotPool[Token] = SlotPool(3, 5)
    holders = [Token(f"h{i}") for i in range(3)]
    for h in holders:
        await pool.acquire(h)
    waiters = [Token(f"w{i}") for i in range(4)]
    tasks = [asyncio.create_task(pool.acquire(w)) for w in waiters]
    await _settle()
    assert pool.queued == 4
    pool.release(holders[0])
    pool.release(holders[1])
    await _settle()
    assert [t.done() for t in tasks] == [True, True, False, False]
    assert pool.in_flight == 3
    assert pool.queued == 2
    for t in [holders[2], *waiters]:
        pool.release(t)
    await asyncio.gather(*tasks)
    for w in waiters:
        pool.release(w)
    assert pool.in_flight == 0
    assert pool.queued == 0

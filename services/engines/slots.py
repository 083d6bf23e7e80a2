"""A bounded pool of concurrent slots with a bounded FIFO wait queue.

Engines that run a limited number of sequences at once put a SlotPool in front of
them. A request calls `acquire(token)`: it gets a free slot at once, or waits in
a FIFO queue of at most `max_waiting` requests (one more raises
ResourceExhausted). `release(token)` hands the freed slot straight to the first
waiter still waiting; `fail_waiting(token, message)` makes a waiter's acquire
raise ``Unavailable(message)`` (abort, engine stop). A waiter cancelled while
waiting leaves the queue, and one cancelled just after being granted gives its
slot back, so cancellation never leaks a slot.

Tokens identify requests; they must be hashable and unique while they are in
the pool (engines use their per-request objects, compared by identity). The
pool is not thread-safe: use it from the event loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from services.common.errors import ResourceExhausted, Unavailable

T = TypeVar("T", bound=Hashable)


def _default_exhausted_message(waiting: int) -> str:
    return f"{waiting} requests already waiting; retry later"


class SlotPool(Generic[T]):
    """`capacity` concurrent slots and a FIFO queue of at most `max_waiting` waiters."""

    def __init__(
        self,
        capacity: int,
        max_waiting: int,
        *,
        exhausted_message: Callable[[int], str] = _default_exhausted_message,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        self._capacity = capacity
        self._max_waiting = max_waiting
        #: Builds the ResourceExhausted message from the number of waiters.
        self._exhausted_message = exhausted_message
        self._holders: set[T] = set()
        #: Waiters in arrival order (dicts keep insertion order).
        self._waiting: dict[T, asyncio.Future[None]] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_waiting(self) -> int:
        return self._max_waiting

    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Slots held."""
        return len(self._holders)

    def holds(self, token: T) -> bool:
        return token in self._holders

    def is_waiting(self, token: T) -> bool:
        return token in self._waiting

    def holders(self) -> tuple[T, ...]:
        return tuple(self._holders)

    def waiters(self) -> tuple[T, ...]:
        """The waiting tokens, first in line first."""
        return tuple(self._waiting)

    async def acquire(self, token: T) -> None:
        """Take a slot for token, waiting in line if none is free.

        Raises ResourceExhausted (without waiting) when the queue is full, and
        Unavailable when the wait is failed with `fail_waiting`. Returns without
        yielding to the event loop when a slot is free and nobody waits.
        """
        if token in self._holders or token in self._waiting:
            raise ValueError("token is already in the pool")
        if len(self._holders) < self._capacity and not self._waiting:
            self._holders.add(token)
            return
        if len(self._waiting) >= self._max_waiting:
            raise ResourceExhausted(self._exhausted_message(len(self._waiting)))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[token] = fut
        try:
            await fut
        except BaseException:
            if self._waiting.get(token) is fut:
                del self._waiting[token]
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: a cancel may have won over a failure
            self.release(token)  # granted just before a cancel
            raise

    def release(self, token: T) -> bool:
        """Free token's slot, handing it to the first live waiter. Idempotent:
        returns False when token holds no slot."""
        if token not in self._holders:
            return False
        self._holders.discard(token)
        while self._waiting and len(self._holders) < self._capacity:
            nxt = next(iter(self._waiting))
            fut = self._waiting.pop(nxt)
            if not fut.done():
                self._holders.add(nxt)
                fut.set_result(None)
        return True

    def fail_waiting(self, token: T, message: str) -> bool:
        """Take token out of the queue; its acquire raises Unavailable(message).
        Returns False when token was not waiting."""
        fut = self._waiting.pop(token, None)
        if fut is None:
            return False
        if not fut.done():
            fut.set_exception(Unavailable(message))
        return True

    def fail_all_waiting(self, message: str) -> None:
        """Fail every waiter (for instance when the engine stops)."""
        for token in list(self._waiting):
            self.fail_waiting(token, message)

"""Wait for a condition that nothing signals: poll it until it holds or time runs out.

Where the code under test sets an event or resolves a future, wait on that instead.
What is polled is a real condition (a counter, a health status, an answer), and
running out of time fails the test with `message` (a string, or a function that
describes what was last seen); how long it took is never what a test asserts."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")
Message = str | Callable[[], str]

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_INTERVAL_S = 0.01
DEFAULT_MESSAGE = "condition never became true"


def wait_until(
    predicate: Callable[[], T | None],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: Message = DEFAULT_MESSAGE,
) -> T:
    """The first truthy value of `predicate()` (None, False, 0 and empty mean not
    yet), called every `interval_s`; AssertionError(message) once `timeout_s` has
    passed without one."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(message, timeout_s))
        time.sleep(interval_s)


@overload
async def async_wait_until(
    predicate: Callable[[], Awaitable[T | None]],
    timeout_s: float = ...,
    interval_s: float = ...,
    message: Message = ...,
) -> T: ...


@overload
async def async_wait_until(
    predicate: Callable[[], T | None],
    timeout_s: float = ...,
    interval_s: float = ...,
    message: Message = ...,
) -> T: ...


async def async_wait_until(
    predicate: Callable[[], Any],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: Message = DEFAULT_MESSAGE,
) -> Any:
    """wait_until for a running event loop: the loop goes on between polls, and
    `predicate` may be a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(_timed_out(message, timeout_s))
        await asyncio.sleep(interval_s)


def _timed_out(message: Message, timeout_s: float) -> str:
    text = message if isinstance(message, str) else message()
    return f"{text} (within {timeout_s} s)"

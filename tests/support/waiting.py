"""The one way tests wait for something that has no event to await: poll it until it is truthy.

`poll_until` blocks the calling thread (for conditions outside the test's event loop: a `dloop` process, HTTP,
the chain, a database file); `wait_until` is its async twin and accepts a sync or an async predicate (the
listener's status, a database query). Both return the predicate's truthy value and fail the test with an
`AssertionError` naming `what` when `timeout` passes.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import anyio


def _timed_out(timeout: float, what: str) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def poll_until(
    predicate: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        time.sleep(interval)


async def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition", interval: float = 0.05
) -> Any:
    """`poll_until` inside the event loop: `predicate` may be a plain or an async function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        await anyio.sleep(interval)

"""Awaiting two things at once, in structured concurrency, with their own errors (not a task group's)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio

from core.errors import DloopError, error_leaves, first_error

A = TypeVar("A")
B = TypeVar("B")


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results, awaited concurrently (a database read and a JSON-RPC round trip overlap). If one fails,
    the other is cancelled and the failure is raised as itself, so callers catch what they would catch from
    either alone. Anything else among the failures (a bug, an interrupt) leaves as the group, unhidden."""
    results: dict[int, Any] = {}

    async def run(index: int, awaitable: Awaitable[Any]) -> None:
        results[index] = await awaitable

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 0, first)
            tg.start_soon(run, 1, second)
    except BaseExceptionGroup as group:
        if all(isinstance(leaf, DloopError) for leaf in error_leaves(group)):
            raise first_error(group) from None
        raise
    return results[0], results[1]

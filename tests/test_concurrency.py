"""core.concurrency.both: two awaitables at once, with their own errors."""

from __future__ import annotations

import anyio
import pytest

from core.concurrency import both
from core.errors import TransientChainError

pytestmark = pytest.mark.anyio


async def test_both_results_come_back_in_order_after_running_at_once() -> None:
    started: list[str] = []

    async def slow(name: str, delay: float) -> str:
        started.append(name)
        await anyio.sleep(delay)
        return name

    with anyio.fail_after(1.0):
        assert await both(slow("first", 0.2), slow("second", 0.2)) == ("first", "second")
    assert sorted(started) == ["first", "second"]


async def test_a_failure_is_raised_as_itself_and_cancels_the_other() -> None:
    cancelled = anyio.Event()

    async def fails() -> None:
        raise TransientChainError("connection lost")

    async def waits() -> None:
        try:
            await anyio.sleep(10)
        finally:
            cancelled.set()

    with pytest.raises(TransientChainError, match="connection lost"):
        await both(waits(), fails())
    assert cancelled.is_set()


async def test_a_bug_beside_a_chain_error_is_not_hidden_behind_it() -> None:
    async def bug() -> None:
        raise TypeError("a bug")

    async def chain_trouble() -> None:
        with anyio.CancelScope(shield=True):  # like a shielded write: it ends with its own error
            await anyio.sleep(0.05)
            raise TransientChainError("connection lost")

    with pytest.raises(BaseExceptionGroup) as raised:
        await both(chain_trouble(), bug())
    assert any(isinstance(e, TypeError) for e in raised.value.exceptions)

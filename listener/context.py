"""What the parts of the listener share: where to store, whom to wake, and a shielded storage call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import anyio

from core.signals import WorkSignal
from storage.engine import SessionFactory

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class ListenerContext:
    sessions: SessionFactory
    signal: WorkSignal
    chain_id: int
    contract: str  # checksummed
    stream: str  # the cursor's key
    node_ids: tuple[int, ...]
    node_by_address: Mapping[str, int]  # lower-case address -> node id
    confirmations: int
    rpc_batch_size: int
    keep_blocks: int  # recent block hashes kept for reorg detection


async def stored(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one storage transaction shielded from cancellation: a reconnect never interrupts a commit."""
    with anyio.CancelScope(shield=True):
        result = await fn(*args, **kwargs)
    return result

"""Pure decisions of the listener: where to start, how to chunk eth_getLogs, when to retry, what is deep."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from chain.client import BlockHeader
from chain.connection import is_log_range_error

# Whether an eth_getLogs error asks for a smaller block range (the phrases live with the RPC errors).
is_range_error = is_log_range_error


@dataclass(frozen=True)
class ChunkPlan:
    """Blocks next_block..last_block still to read, `size` blocks per eth_getLogs call."""

    next_block: int
    last_block: int
    size: int

    @property
    def finished(self) -> bool:
        return self.next_block > self.last_block

    def current(self) -> tuple[int, int] | None:
        if self.finished:
            return None
        return self.next_block, min(self.last_block, self.next_block + self.size - 1)

    def advanced(self) -> ChunkPlan:
        """The plan after the current chunk was read."""
        current = self.current()
        if current is None:
            return self
        return ChunkPlan(current[1] + 1, self.last_block, self.size)

    def halved(self) -> ChunkPlan | None:
        """The plan after the provider refused the current chunk as too large; None if it was one block."""
        if self.size <= 1:
            return None
        return ChunkPlan(self.next_block, self.last_block, max(1, self.size // 2))


def backfill_start(
    *,
    cursor_block: int | None,
    start_block: int | None,
    deployment_block: int | None,
    head: int,
    backfill_blocks: int,
) -> int:
    """First block to backfill: after the cursor; on a first run DLOOP_START_BLOCK, else the contract's
    deployment block, else head minus DLOOP_BACKFILL_BLOCKS."""
    if cursor_block is not None:
        return cursor_block + 1
    if start_block is not None:
        return start_block
    if deployment_block is not None:
        return deployment_block
    return max(0, head - backfill_blocks)


def reconnect_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff with jitter: attempt 0 waits about `base`, doubling up to `cap`.

    `jitter` in [0, 1] (random) spreads the delay over its upper half, so many clients do not reconnect in
    lockstep and the wait is never shorter than half the backoff.
    """
    ceiling = min(cap, base * float(1 << min(attempt, 32)))
    return min(cap, ceiling / 2 + ceiling / 2 * min(max(jitter, 0.0), 1.0))


def deep_enough(block_number: int, head_number: int, confirmations: int) -> bool:
    """DLOOP_CONFIRMATIONS=N: a block is deep enough once N blocks including itself are on the chain
    (0 and 1 both mean as soon as it is mined)."""
    return head_number - block_number + 1 >= confirmations


def deepest_queueable_block(head_number: int, confirmations: int) -> int:
    """The highest block whose proposals may be queued at this head."""
    return head_number - max(confirmations, 1) + 1


def head_conflicts(known: Mapping[int, str], number: int, block_hash: str, parent_hash: str) -> bool:
    """A new head contradicts what we stored: another block at its height, or a parent we did not see."""
    stored_here = known.get(number)
    if stored_here is not None and stored_here != block_hash:
        return True
    stored_parent = known.get(number - 1)
    return stored_parent is not None and stored_parent != parent_hash


def links_hold(window: Mapping[int, BlockHeader], low: int, high: int) -> bool:
    """Whether each block of low..high names the one below as parent (pairs with a missing height skipped)."""
    return all(
        window[n].parent_hash == window[n - 1].hash
        for n in range(low + 1, high + 1)
        if n in window and n - 1 in window
    )


def tally_refresh_wait(
    *, pending: bool, since_refresh: float | None, interval: float, quiet: float
) -> float | None:
    """How long the listener may wait for more logs before it refreshes the pending tallies: None when none
    is pending; 0 when a refresh is due now (none yet, or the last one is `interval` old); otherwise until it
    is due, but at most `quiet`: that long without a log means the chain went quiet, so refresh then.

    One refresh per `interval` at most while logs keep coming (a proposal voted on in several blocks in a
    row is read once, not once per block), and within `quiet` of the last log once they stop."""
    if not pending:
        return None
    if since_refresh is None:
        return 0.0
    return max(0.0, min(quiet, interval - since_refresh))

"""Batch and nonce planning: which queued rows a round takes next, which nonces a lane may use. Pure."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from storage.queue import QueuedVote


def plan_batch(
    candidates: Sequence[QueuedVote], *, batch_size: int, node_ids: Collection[int]
) -> list[QueuedVote]:
    """The rows of at most `batch_size` proposals, all their (sendable) nodes, most urgent proposal first.

    Urgency is the end of voting, then the proposal id; rows of nodes not in `node_ids` (unfunded) wait.
    """
    eligible = [c for c in candidates if c.node_id in node_ids]
    ordered = sorted(eligible, key=lambda c: (c.voting_ends_at, c.proposal_id, c.node_id))
    chosen: list[int] = []
    for row in ordered:
        if row.proposal_row_id not in chosen:
            if len(chosen) == batch_size:
                break
            chosen.append(row.proposal_row_id)
    keep = set(chosen)
    return [row for row in ordered if row.proposal_row_id in keep]


def rows_by_node(rows: Sequence[QueuedVote]) -> dict[int, list[QueuedVote]]:
    """Each node's rows, in the batch's order: one lane per node."""
    lanes: dict[int, list[QueuedVote]] = {}
    for row in rows:
        lanes.setdefault(row.node_id, []).append(row)
    return lanes


@dataclass(frozen=True)
class NonceCounts:
    """An account's transaction counts: `mined` at the latest block, `pending` with the node's pool. A pool
    can count transactions it no longer holds (anvil after a reorg), so only `mined` says which nonces are
    used. `read_at`: the monotonic clock when the read began (the snapshot's counts are a moment old when
    a lane signs; what its own transactions used since then is not a gap)."""

    mined: int
    pending: int
    read_at: float = 0.0


def nonce_gap(mined: int, below: int, held: Collection[int], used: Collection[int] = ()) -> list[int]:
    """Nonces under `below` that no mined transaction used and none of ours in flight holds: a transaction
    at `below` or above waits until each is used. `used`: nonces our own transactions were seen using
    after `mined` was read."""
    return [n for n in range(mined, below) if n not in held and n not in used]


def used_after(
    seen: Mapping[int, float], counts: NonceCounts, *, now: float, memory_s: float
) -> tuple[dict[int, float], set[int]]:
    """Of our nonces seen used (nonce -> when), (those still worth remembering, those seen after `counts`
    were read). One seen before the read is the counts' to say (after a reorg took it away it is free
    again, and the counts say so). Each is kept for `memory_s` (from `now`), not just until newer counts
    cover it: a batch may sign with counts read before the newest ones."""
    kept = {n: at for n, at in seen.items() if at >= now - memory_s}
    return kept, {n for n, at in kept.items() if at >= counts.read_at}


def nonce_plan(
    counts: NonceCounts, held: Collection[int], used: Collection[int] = ()
) -> tuple[int, list[int]]:
    """(next nonce, free nonces below it) for a lane holding `held` in flight. The next one is past the
    pool's count (a pending transaction we do not track, sent outside the service, keeps its nonce) and
    past ours; the free ones are the gap below our highest, counted from the mined count. `used`: nonces
    our transactions were seen using (mined) since the counts were read: without them, counts read before
    a burst's receipts arrived made every vote mined meanwhile look like a gap, and the lane signed new
    votes with nonces already used (refused as "nonce too low")."""
    highest = max((n + 1 for n in [*held, *used]), default=0)
    return max(counts.pending, counts.mined, highest), nonce_gap(counts.mined, highest, held, used)

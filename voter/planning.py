"""Batch planning: which queued rows a round takes next. Pure."""

from __future__ import annotations

from collections.abc import Collection, Sequence

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

"""The reconcile pass's decisions, pure: which proposals to read, what to record, which vote rows to fix
or reopen, which `sent` votes are mined. Frozen values in and out, no I/O (tests/test_reconcile_plan.py).

Nothing planned here can lead to a second vote: rows only ever move *out* of the sending path, except a
confirmation the chain no longer has (queued again), and the voter reads `hasVoted` before it signs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chain.client import Receipt, mined_receipt
from chain.types import ProposalData, ProposalStatus
from storage.models import VoteState
from storage.scan import KnownProposal, VoteRow

__all__ = [
    "KnownProposal",
    "ProposalRecord",
    "RecordPlan",
    "VoteFix",
    "VoteRow",
    "id_windows",
    "ids_to_read",
    "mined_sent_votes",
    "plan_records",
    "plan_vote_fixes",
]

_WAITING = (VoteState.PENDING, VoteState.QUEUED)


def id_windows(count: int, size: int) -> list[range]:
    """Ids 1..count inclusive (id 0 does not exist), cut into windows of at most `size` consecutive ids."""
    if size < 1:
        raise ValueError(f"a window of at least one id, not {size}")
    return [range(first, min(first + size, count + 1)) for first in range(1, count + 1, size)]


def ids_to_read(proposal_ids: range, known: Mapping[int, KnownProposal], chain_time: int) -> list[int]:
    """The ids of `proposal_ids` (a window of 1..count; id 0 does not exist) that are unknown or may still
    change.

    A known proposal is skipped once it can no longer be voted on and none of our votes on it is open:
    its tally cannot move after `votingEnds`, and executed/canceled proposals are final.
    """
    wanted = []
    for proposal_id in proposal_ids:
        entry = known.get(proposal_id)
        if (
            entry is None
            or entry.has_open_votes
            or (entry.status == ProposalStatus.ACTIVE and entry.voting_ends >= chain_time)
        ):
            wanted.append(proposal_id)
    return wanted


@dataclass(frozen=True)
class ProposalRecord:
    """A proposal read from the chain, to insert (or refresh), and the state its new vote rows start in."""

    data: ProposalData
    initial_state: VoteState


@dataclass(frozen=True)
class RecordPlan:
    records: tuple[ProposalRecord, ...]
    open_ids: frozenset[int]  # read, and open for voting at the chain time
    read_ids: frozenset[int]  # every proposal read


def plan_records(proposals: Sequence[ProposalData], chain_time: int) -> RecordPlan:
    """Every proposal read is recorded; the vote rows missing for an open one are queued (the pass read it
    at a confirmed block), those of one no longer open start closed."""
    open_ids = frozenset(p.proposal_id for p in proposals if p.open_at(chain_time))
    return RecordPlan(
        records=tuple(
            ProposalRecord(p, VoteState.QUEUED if p.proposal_id in open_ids else VoteState.CLOSED)
            for p in proposals
        ),
        open_ids=open_ids,
        read_ids=frozenset(p.proposal_id for p in proposals),
    )


@dataclass(frozen=True)
class VoteFix:
    vote_id: int
    from_states: tuple[VoteState, ...]
    to_state: VoteState
    reason: str


def plan_vote_fixes(
    rows: Sequence[VoteRow],
    open_ids: set[int] | frozenset[int],
    read_ids: set[int] | frozenset[int],
    has_voted: Mapping[tuple[int, int], bool],
    read_block: int | None = None,
) -> list[VoteFix]:
    """State changes the chain calls for. Only one can lead to a vote, and only when the chain says the
    node has not voted: the voter checks `hasVoted` again before it signs anything.

    - a proposal read and no longer open: waiting rows -> closed;
    - an open proposal the node already voted on (hasVoted, and we never sent anything): -> already_voted;
    - an open proposal read at a confirmed block: pending rows -> queued (the listener may be down);
    - a row confirmed at or below the block read, whose node has not voted there: its transaction left the
      chain in a reorg the listener did not see -> queued again (reopened).
    """
    fixes = []
    for row in rows:
        if (
            row.state == VoteState.CONFIRMED
            and row.proposal_id in open_ids
            and read_block is not None
            and row.confirmed_block is not None
            and row.confirmed_block <= read_block
            and has_voted.get((row.proposal_id, row.node_id)) is False
        ):
            reason = f"confirmed at block {row.confirmed_block}, not voted on chain at {read_block} (reorg)"
            fixes.append(VoteFix(row.vote_id, (VoteState.CONFIRMED,), VoteState.QUEUED, reason))
            continue
        if row.proposal_id not in read_ids or row.state not in _WAITING:
            continue
        if row.proposal_id not in open_ids:
            fixes.append(
                VoteFix(row.vote_id, _WAITING, VoteState.CLOSED, "proposal no longer open for voting")
            )
        elif has_voted.get((row.proposal_id, row.node_id)) and row.tx_hash is None:
            fixes.append(
                VoteFix(row.vote_id, _WAITING, VoteState.ALREADY_VOTED, "hasVoted was true before we sent")
            )
        elif row.state == VoteState.PENDING:
            fixes.append(
                VoteFix(row.vote_id, (VoteState.PENDING,), VoteState.QUEUED, "confirmed by reconcile")
            )
    return fixes


def mined_sent_votes(
    receipts: Mapping[int, Sequence[Receipt | None]], head: int, confirmations: int
) -> dict[int, Receipt]:
    """By vote id: the `sent` vote's transaction mined with success and deep enough (to confirm it)."""
    return {
        vote_id: receipt
        for vote_id, vote_receipts in receipts.items()
        if (receipt := mined_receipt(vote_receipts, head, confirmations)) is not None
    }

"""What the reconcile pass (the contract scan) reads from the database: plain frozen rows, for its plan."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.engine import SessionFactory
from storage.models import OPEN_VOTE_STATES, Proposal, Vote, VoteState, VoteTransaction, one_of
from storage.transactions import read


@dataclass(frozen=True, slots=True)
class KnownProposal:
    """What the database already knows of a proposal."""

    proposal_id: int
    status: int
    voting_ends: int  # unix seconds
    has_open_votes: bool  # some vote row still pending/queued/sent: read again by every pass


@dataclass(frozen=True)
class VoteRow:
    vote_id: int
    proposal_id: int
    node_id: int
    state: str
    tx_hash: str | None
    confirmed_block: int | None = None


async def known_proposals(
    sessions: SessionFactory, chain_id: int, contract: str, proposal_ids: range
) -> dict[int, KnownProposal]:
    """The stored proposals of the contract with an id in `proposal_ids` (a window of consecutive ids: the
    pass reads a window at a time, not every proposal at once), by proposal id."""
    if proposal_ids.step != 1:
        raise ValueError(f"a window of consecutive ids, not {proposal_ids!r}")
    open_states = [str(s) for s in OPEN_VOTE_STATES]
    # One statement: a vote reopened (or a proposal added) between two separate reads would be missed.
    has_open_votes = (
        exists().where(Vote.proposal_ref == Proposal.id, Vote.state.in_(open_states)).label("has_open_votes")
    )
    statement = select(Proposal.proposal_id, Proposal.status, Proposal.voting_ends_at, has_open_votes).where(
        Proposal.chain_id == chain_id,
        Proposal.contract == contract,
        Proposal.proposal_id >= proposal_ids.start,
        Proposal.proposal_id < proposal_ids.stop,
    )

    async def work(session: AsyncSession) -> dict[int, KnownProposal]:
        return {
            pid: KnownProposal(pid, status, int(ends.timestamp()), bool(open_votes))
            for pid, status, ends, open_votes in await session.execute(statement)
        }

    return await read(sessions, work, what="read known proposals")


async def vote_rows(
    sessions: SessionFactory, chain_id: int, contract: str, proposal_ids: Collection[int]
) -> list[VoteRow]:
    """The vote rows (every node) of these proposals."""
    if not proposal_ids:
        return []

    async def work(session: AsyncSession) -> list[VoteRow]:
        rows = await session.execute(
            select(
                Vote.id, Proposal.proposal_id, Vote.node_id, Vote.state, Vote.tx_hash, Vote.confirmed_block
            )
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(
                Proposal.chain_id == chain_id,
                Proposal.contract == contract,
                one_of(Proposal.proposal_id, sorted(proposal_ids)),
            )
        )
        return [VoteRow(*row) for row in rows]

    return await read(sessions, work, what="read vote rows")


async def sent_transactions(sessions: SessionFactory, chain_id: int, contract: str) -> list[tuple[int, str]]:
    """(vote id, transaction hash) of every transaction of every `sent` vote of the contract."""

    async def work(session: AsyncSession) -> list[tuple[int, str]]:
        rows = await session.execute(
            select(VoteTransaction.vote_id, VoteTransaction.tx_hash)
            .join(Vote, VoteTransaction.vote_id == Vote.id)
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(
                Vote.state == VoteState.SENT,
                Proposal.chain_id == chain_id,
                Proposal.contract == contract,
            )
        )
        return [(vote_id, tx_hash) for vote_id, tx_hash in rows.all()]

    return await read(sessions, work, what="read sent transactions")

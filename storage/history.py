"""What `dloop replay` reads: every decided vote with the stored proposal, tally and price it was made on."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chain.types import AssetInfo, ProposalData
from storage.engine import SessionFactory
from storage.models import Node, Proposal, Vote
from storage.transactions import read


@dataclass(frozen=True)
class DecidedVote:
    """One node's recorded decision and what it was made on (the proposal and tally as stored now)."""

    node: str
    strategy: str
    state: str
    decision: str  # for / against / none
    reason: str | None
    price: str | None  # exact decimal text, NULL when no oracle answered (or before migration 0006)
    decided_at: dt.datetime | None
    proposal: ProposalData


def _timestamp(moment: dt.datetime) -> int:
    return int(moment.timestamp())


async def decided_votes(
    sessions: SessionFactory, *, node: str | None = None, since: dt.datetime | None = None
) -> list[DecidedVote]:
    """Votes with a recorded decision, oldest proposal first; `since`: proposals created from then on."""

    async def work(session: AsyncSession) -> list[DecidedVote]:
        query = (
            select(Vote, Proposal, Node.name, Node.strategy)
            .join(Proposal, Proposal.id == Vote.proposal_ref)
            .join(Node, Node.id == Vote.node_id)
            .where(Vote.decision.is_not(None))
            .order_by(Proposal.proposal_id, Node.name)
        )
        if node is not None:
            query = query.where(Node.name == node)
        if since is not None:
            query = query.where(Proposal.created_at >= since)
        out = []
        for vote, proposal, name, strategy in (await session.execute(query)).all():
            data = ProposalData(
                proposal_id=int(proposal.proposal_id),
                proposal_type=proposal.proposal_type,
                asset_address=proposal.asset_address,
                amount=int(proposal.amount),
                description=proposal.description,
                proposer=proposal.proposer,
                created_at=_timestamp(proposal.created_at),
                voting_ends=_timestamp(proposal.voting_ends_at),
                yes_votes=int(proposal.yes_votes),
                no_votes=int(proposal.no_votes),
                status=proposal.status,
                executed=proposal.executed,
                asset=AssetInfo(
                    proposal.asset_address,
                    proposal.asset_symbol,
                    proposal.asset_decimals,
                    proposal.read_error,
                ),
            )
            out.append(
                DecidedVote(
                    node=name,
                    strategy=strategy,
                    state=vote.state,
                    decision=str(vote.decision),
                    reason=vote.reason,
                    price=vote.price,
                    decided_at=vote.decided_at,
                    proposal=data,
                )
            )
        return out

    return await read(sessions, work, what="vote history")

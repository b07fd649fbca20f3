"""What the analytics read (monitor/analytics.py computes), and the outcomes recorded after votingEnds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from monitor.analytics import Outcome, ProposalFact, VoteFact
from storage.engine import SessionFactory
from storage.models import Node, Proposal, ProposalResult, Vote, one_of, utcnow
from storage.queries import ContractScope, Scope
from storage.transactions import read, write


@dataclass(frozen=True)
class Facts:
    proposals: list[ProposalFact]
    votes: list[VoteFact]
    nodes: list[str]


@dataclass(frozen=True)
class EndedProposal:
    ref: int  # the proposals row
    proposal_id: int


@dataclass(frozen=True)
class FinalResult:
    ref: int
    yes: int
    no: int
    status: int
    status_name: str
    executed: bool

    @property
    def majority(self) -> str:
        return Outcome(self.yes, self.no, self.status_name, self.executed).majority or "tie"


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


async def analytics_facts(
    sessions: SessionFactory,
    scope: Scope | None,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Facts:
    """The proposals created in [since, until) with their recorded outcomes, and their votes (of the
    scope's contract; of every contract in the database when `scope` is None)."""
    conditions = []
    if scope is not None:
        conditions.append(scope.where())
    if since is not None:
        conditions.append(Proposal.created_at >= since)
    if until is not None:
        conditions.append(Proposal.created_at < until)

    async def work(session: AsyncSession) -> Facts:
        proposals = []
        for row in await session.execute(
            select(
                Proposal.proposal_id,
                Proposal.proposal_type_name,
                Proposal.asset_symbol,
                Proposal.asset_address,
                Proposal.created_at,
                Proposal.voting_ends_at,
                ProposalResult.yes_votes,
                ProposalResult.no_votes,
                ProposalResult.status_name,
                Proposal.executed,
            )
            .outerjoin(ProposalResult, ProposalResult.proposal_ref == Proposal.id)
            .where(*conditions)
            .order_by(Proposal.proposal_id)
        ):
            (pid, kind, symbol, address, created, ends, yes, no, status, executed) = row
            outcome = None if yes is None else Outcome(_int(yes), _int(no), status, bool(executed))
            proposals.append(ProposalFact(int(pid), kind, symbol or address, created, ends, outcome))
        votes = [
            VoteFact(
                int(pid),
                node,
                strategy,
                state,
                decision,
                confirmed_at,
                gas,
                None if fee is None else _int(fee),
            )
            for pid, node, strategy, state, decision, confirmed_at, gas, fee in await session.execute(
                select(
                    Proposal.proposal_id,
                    Node.name,
                    Node.strategy,
                    Vote.state,
                    Vote.decision,
                    Vote.confirmed_at,
                    Vote.gas_used,
                    Vote.fee_wei,
                )
                .join(Node, Vote.node_id == Node.id)
                .join(Proposal, Vote.proposal_ref == Proposal.id)
                .where(*conditions)
            )
        ]
        nodes = list((await session.execute(select(Node.name).order_by(Node.name))).scalars())
        return Facts(proposals, votes, nodes)

    return await read(sessions, work, what="reading analytics", brief=True)


async def ended_without_result(
    sessions: SessionFactory, scope: ContractScope, *, chain_now: dt.datetime, limit: int = 200
) -> list[EndedProposal]:
    """Proposals whose votingEnds passed (by the chain's clock) and whose outcome is not recorded yet."""

    async def work(session: AsyncSession) -> list[EndedProposal]:
        rows = await session.execute(
            select(Proposal.id, Proposal.proposal_id)
            .outerjoin(ProposalResult, ProposalResult.proposal_ref == Proposal.id)
            .where(
                Proposal.chain_id == scope.chain_id,
                Proposal.contract == scope.contract,
                Proposal.voting_ends_at < chain_now,
                ProposalResult.proposal_ref.is_(None),
            )
            .order_by(Proposal.proposal_id)
            .limit(limit)
        )
        return [EndedProposal(int(ref), int(pid)) for ref, pid in rows]

    return await read(sessions, work, what="reading ended proposals", brief=True)


async def record_results(sessions: SessionFactory, results: Sequence[FinalResult]) -> int:
    """Record each outcome once (a result already there is kept); returns how many were added."""
    if not results:
        return 0

    async def work(session: AsyncSession) -> int:
        known = set(
            (
                await session.execute(
                    select(ProposalResult.proposal_ref).where(
                        one_of(ProposalResult.proposal_ref, [r.ref for r in results])
                    )
                )
            ).scalars()
        )
        added = 0
        now = utcnow()
        for result in results:
            if result.ref in known:
                continue
            session.add(
                ProposalResult(
                    proposal_ref=result.ref,
                    yes_votes=str(result.yes),
                    no_votes=str(result.no),
                    majority=result.majority,
                    status=result.status,
                    status_name=result.status_name,
                    executed=result.executed,
                    recorded_at=now,
                )
            )
            known.add(result.ref)
            added += 1
        return added

    return await write(sessions, work, what="recording proposal results", conflict_retries=1)

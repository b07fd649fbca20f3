"""The alerts table: what the evaluator fires, sees again and resolves (monitor/engine.py decides)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from monitor.engine import Alert
from monitor.rules import UnvotedVote
from storage.engine import SessionFactory
from storage.models import OPEN_VOTE_STATES, AlertRow, Node, Proposal, Vote, VoteState, utcnow
from storage.queries import ContractScope
from storage.transactions import read, write


def _alert(row: AlertRow) -> Alert:
    return Alert(
        fingerprint=row.fingerprint,
        rule=row.rule,
        subject=row.subject,
        severity=row.severity,
        summary=row.summary,
        first_seen=row.first_seen_at,
        last_seen=row.last_seen_at,
        resolved_at=row.resolved_at,
        last_notified=row.last_notified_at,
        id=row.id,
    )


async def firing_alerts(sessions: SessionFactory) -> list[Alert]:
    async def work(session: AsyncSession) -> list[Alert]:
        rows = await session.execute(
            select(AlertRow).where(AlertRow.resolved_at.is_(None)).order_by(AlertRow.id)
        )
        return [_alert(row) for row in rows.scalars()]

    return await read(sessions, work, what="reading firing alerts", brief=True)


async def list_alerts(
    sessions: SessionFactory, *, state: str | None = None, limit: int = 100, offset: int = 0
) -> list[Alert]:
    """Newest first; `state` firing (resolved_at NULL) or resolved."""

    async def work(session: AsyncSession) -> list[Alert]:
        query = select(AlertRow)
        if state == "firing":
            query = query.where(AlertRow.resolved_at.is_(None))
        elif state == "resolved":
            query = query.where(AlertRow.resolved_at.is_not(None))
        rows = await session.execute(query.order_by(AlertRow.id.desc()).limit(limit).offset(offset))
        return [_alert(row) for row in rows.scalars()]

    return await read(sessions, work, what="reading alerts", brief=True)


async def save_alerts(sessions: SessionFactory, alerts: Sequence[Alert]) -> list[Alert]:
    """Insert the new alerts (no id) and update the others; returns them with their ids."""
    if not alerts:
        return []

    async def work(session: AsyncSession) -> list[Alert]:
        saved = []
        for alert in alerts:
            values = {
                "summary": alert.summary,
                "last_seen_at": alert.last_seen,
                "resolved_at": alert.resolved_at,
                "last_notified_at": alert.last_notified,
            }
            if alert.id is None:
                row = AlertRow(
                    fingerprint=alert.fingerprint,
                    rule=alert.rule,
                    subject=alert.subject,
                    severity=alert.severity,
                    first_seen_at=alert.first_seen,
                    **values,
                )
                session.add(row)
                await session.flush()
                saved.append(_alert(row))
            else:
                await session.execute(update(AlertRow).where(AlertRow.id == alert.id).values(**values))
                saved.append(alert)
        return saved

    return await write(sessions, work, what="saving alerts")


async def votes_not_on_chain(
    sessions: SessionFactory, scope: ContractScope, *, chain_now: dt.datetime, horizon: dt.datetime
) -> list[UnvotedVote]:
    """On proposals still Active and open at the chain's now: vote rows pending, queued or sent whose voting
    ends before `horizon` (the facts of MissedVoteRisk), and failed ones whatever the deadline (VoteFailed;
    MissedVoteRisk judges those too, within its own horizon)."""
    wall = utcnow()

    async def work(session: AsyncSession) -> list[UnvotedVote]:
        rows = await session.execute(
            select(
                Proposal.proposal_id,
                Node.name,
                Vote.state,
                Proposal.voting_ends_at,
                Vote.queued_at,
                Vote.last_error,
            )
            .join(Node, Vote.node_id == Node.id)
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(
                Proposal.chain_id == scope.chain_id,
                Proposal.contract == scope.contract,
                Proposal.status == 1,
                Proposal.voting_ends_at >= chain_now,
                # Near the deadline (MissedVoteRisk), or failed whatever the deadline (VoteFailed).
                or_(
                    and_(Proposal.voting_ends_at <= horizon, Vote.state.in_(list(OPEN_VOTE_STATES))),
                    Vote.state == VoteState.FAILED,
                ),
            )
            .order_by(Proposal.proposal_id, Node.name)
        )
        return [
            UnvotedVote(
                proposal_id=int(pid),
                node=name,
                state=str(state),
                voting_ends=ends,
                queued_for=(wall - queued_at).total_seconds(),
                reason=last_error,
            )
            for pid, name, state, ends, queued_at, last_error in rows
        ]

    return await read(sessions, work, what="reading votes not on chain", brief=True)

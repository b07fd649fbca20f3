"""Bookkeeping of voting rounds (reconcile pass + drain). Each function is one short transaction."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from storage.engine import SessionFactory
from storage.models import LaneLease, Round, Vote, utcnow
from storage.transactions import read, write


class RoundKind(enum.StrEnum):
    STARTUP = "startup"
    SCHEDULED = "scheduled"
    MANUAL = "manual"


class RoundState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class RoundRecord:
    id: int
    kind: str
    state: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    proposals_scanned: int
    new_proposals: int
    missing_votes: int
    resolved_transactions: int
    votes_sent: int
    votes_confirmed: int
    error: str | None


@dataclass(frozen=True)
class ReconcileCounts:
    proposals_scanned: int = 0
    new_proposals: int = 0
    missing_votes: int = 0
    resolved_transactions: int = 0


def _record(row: Round) -> RoundRecord:
    return RoundRecord(
        id=row.id,
        kind=row.kind,
        state=row.state,
        started_at=row.started_at,
        finished_at=row.finished_at,
        proposals_scanned=row.proposals_scanned,
        new_proposals=row.new_proposals,
        missing_votes=row.missing_votes,
        resolved_transactions=row.resolved_transactions,
        votes_sent=row.votes_sent,
        votes_confirmed=row.votes_confirmed,
        error=row.error,
    )


async def start_round(
    sessions: SessionFactory, kind: RoundKind | str, *, instance: str | None = None
) -> RoundRecord:
    async def work(session: AsyncSession) -> RoundRecord:
        row = Round(
            instance=instance,
            kind=str(kind),
            state=RoundState.RUNNING,
            started_at=utcnow(),
            proposals_scanned=0,
            new_proposals=0,
            missing_votes=0,
            resolved_transactions=0,
            votes_sent=0,
            votes_confirmed=0,
        )
        session.add(row)
        await session.flush()
        return _record(row)

    return await write(sessions, work, what="start_round")


async def record_reconcile(sessions: SessionFactory, round_id: int, counts: ReconcileCounts) -> None:
    """What the reconcile pass of a running round found (progress before the drain)."""

    async def work(session: AsyncSession) -> None:
        await session.execute(
            update(Round)
            .where(Round.id == round_id, Round.state == RoundState.RUNNING)
            .values(
                proposals_scanned=counts.proposals_scanned,
                new_proposals=counts.new_proposals,
                missing_votes=counts.missing_votes,
                resolved_transactions=counts.resolved_transactions,
            )
        )

    await write(sessions, work, what="record_reconcile")


async def finish_round(
    sessions: SessionFactory,
    round_id: int,
    *,
    state: RoundState,
    error: str | None = None,
    instance: str | None = None,
) -> RoundRecord | None:
    """Close a running round. Votes sent/confirmed are those sent or mined while it ran (by the round's
    drain or by the voter reacting to the listener meanwhile). A round of `instance` that another instance
    starting up took for interrupted (it held no lane then: a standby) is closed with its real outcome."""

    async def work(session: AsyncSession) -> RoundRecord | None:
        row = await session.get(Round, round_id)
        if row is None:
            return None
        mistaken = instance is not None and row.instance == instance and row.error == INTERRUPTED
        if row.state == RoundState.RUNNING or mistaken:
            now = utcnow()
            row.votes_sent = await _count_between(session, Vote.sent_at, row.started_at, now)
            row.votes_confirmed = await _count_between(session, Vote.confirmed_at, row.started_at, now)
            row.state = state
            row.finished_at = now
            row.error = error[:2000] if error else None
            await session.flush()
        return _record(row)

    return await write(sessions, work, what="finish_round")


async def _count_between(
    session: AsyncSession,
    column: InstrumentedAttribute[dt.datetime | None],
    start: dt.datetime,
    end: dt.datetime,
) -> int:
    stmt = select(func.count()).select_from(Vote).where(column >= start, column <= end)
    return int((await session.execute(stmt)).scalar_one())


async def get_round(sessions: SessionFactory, round_id: int) -> RoundRecord | None:
    async def work(session: AsyncSession) -> RoundRecord | None:
        row = await session.get(Round, round_id)
        return None if row is None else _record(row)

    return await read(sessions, work, what="get_round")


async def last_round(sessions: SessionFactory) -> RoundRecord | None:
    async def work(session: AsyncSession) -> RoundRecord | None:
        row = (await session.execute(select(Round).order_by(Round.id.desc()).limit(1))).scalar_one_or_none()
        return None if row is None else _record(row)

    return await read(sessions, work, what="last_round")


INTERRUPTED = "interrupted: the service stopped"


async def fail_interrupted_rounds(
    sessions: SessionFactory, *, instance: str | None = None, shared: bool = False
) -> int:
    """Rounds left `running` by a stopped process can never finish: close them at start-up.

    `shared` (PostgreSQL: other instances may be running): only rounds of no instance (older rows) or of an
    instance other than `instance` that holds no live lane lease; a live owner renews its leases every T/4,
    so its rounds are left alone. A live standby (no lane) has its round closed too: it records the round's
    real outcome when it ends (finish_round). Without `shared` (SQLite, one instance by its run lock): all."""
    now = utcnow()

    async def work(session: AsyncSession) -> int:
        query = update(Round).where(Round.state == RoundState.RUNNING)
        if shared:
            live = (
                select(LaneLease.owner)
                .where(LaneLease.owner == Round.instance, LaneLease.expires_at > now)
                .exists()
            )
            query = query.where(
                or_(Round.instance.is_(None), and_(Round.instance != (instance or ""), ~live))
            )
        result = await session.execute(
            query.values(state=RoundState.FAILED, finished_at=now, error=INTERRUPTED),
            execution_options={"synchronize_session": False},
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    return await write(sessions, work, what="fail_interrupted_rounds")


async def recent_rounds(sessions: SessionFactory, limit: int = 10) -> list[RoundRecord]:
    """The latest `limit` rounds, newest first (the dashboard's "recent rounds")."""

    async def work(session: AsyncSession) -> list[RoundRecord]:
        rows = (await session.execute(select(Round).order_by(Round.id.desc()).limit(limit))).scalars()
        return [_record(row) for row in rows]

    return await read(sessions, work, what="recent_rounds")

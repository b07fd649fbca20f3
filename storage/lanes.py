"""Lane leases: which `dloop run` instance signs for a node (its nonce lane) on a chain. The only owner of
`lane_leases` rows.

Several instances may share one PostgreSQL; exactly one signs for a node at a time. The owner renews its
lease well before it expires; another instance takes a lane only once its lease has expired. `token` (the
fencing token) grows by one every time a lane is taken, by another instance or by the same one after its
lease lapsed, and a signed vote is recorded only in a transaction that finds its owner's token still current
and its lease unexpired (`hold_fence`, called by storage/votes.py::record_sent). A lapsed owner's signature
is therefore never stored, so never broadcast, whatever its clock or its scheduling did.

Times come from the instances' clocks (like every lease here): instances must keep them in sync (NTP); a
skew shortens or lengthens a lease by that much, never lets two instances record under the same token.
Portable SQL only: conditional UPDATEs whose row counts say who won; an INSERT race is settled by the
primary key.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Row, Select, and_, case, delete, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import LaneLost
from storage.engine import SessionFactory
from storage.models import LaneLease, Node, UTCDateTime, one_of, utcnow
from storage.transactions import read, write

# The alert evaluator's lease: one row under a key no lane can have (no chain has id 0, no account address
# is "alerts"): the instance evaluating alerts is elected like a lane's signer, whatever deployments it runs.
ALERTS_CHAIN_ID = 0
ALERTS_ADDRESS = "alerts"


@dataclass(frozen=True)
class LaneRecord:
    """One lane's lease row."""

    chain_id: int
    address: str  # lower case
    owner: str
    token: int
    acquired_at: dt.datetime
    renewed_at: dt.datetime
    expires_at: dt.datetime

    def live(self, now: dt.datetime) -> bool:
        return self.expires_at > now


@dataclass(frozen=True)
class LaneFence:
    """What a signed transaction is recorded under: `owner`'s fencing `token` for one lane."""

    chain_id: int
    address: str
    owner: str
    token: int


class NoLanes(enum.Enum):
    """The explicit "this process is the only signer" marker (a voter built without lane ownership)."""

    NO_LANES = "no lanes"


NO_LANES = NoLanes.NO_LANES
# What a signed transaction is recorded under: always said, never defaulted, so that a fence lost on the way
# (None) can never pass for "no fencing". NO_LANES is refused too once the node has a lane lease row.
Fencing = LaneFence | Literal[NoLanes.NO_LANES]


@dataclass(frozen=True)
class LaneClaim:
    """One lane after an acquire-or-renew by `owner`: the row before and after (None: no row yet)."""

    owner: str
    before: LaneRecord | None
    after: LaneRecord

    @property
    def held(self) -> bool:
        return self.after.owner == self.owner

    @property
    def taken(self) -> bool:
        """`owner` holds the lane under a new token: taken from another instance, first acquired, or taken
        again after its own lease lapsed. Either way, what it knew of the lane is stale."""
        return self.held and (self.before is None or self.before.token != self.after.token)

    @property
    def fence(self) -> LaneFence:
        return LaneFence(self.after.chain_id, self.after.address, self.after.owner, self.after.token)


def _record(row: LaneLease) -> LaneRecord:
    return LaneRecord(
        chain_id=int(row.chain_id),
        address=row.address,
        owner=row.owner,
        token=int(row.token),
        acquired_at=row.acquired_at,
        renewed_at=row.renewed_at,
        expires_at=row.expires_at,
    )


async def _rows(session: AsyncSession, chain_id: int, addresses: list[str]) -> dict[str, LaneRecord]:
    query = select(LaneLease).where(LaneLease.chain_id == chain_id, LaneLease.address.in_(addresses))
    return {row.address: _record(row) for row in (await session.execute(query)).scalars()}


async def acquire(
    sessions: SessionFactory,
    *,
    chain_id: int,
    addresses: Collection[str],
    owner: str,
    seconds: float,
    now: dt.datetime | None = None,
) -> dict[str, LaneClaim]:
    """Renew the lanes `owner` holds and take the expired ones, in one transaction; per address its claim.

    One conditional UPDATE (`owner` is me, or the lease expired) for all lanes; a lane with no row yet is
    inserted, and an insert that lost the race to another instance is read back on a second run.
    """
    wanted = sorted({a.lower() for a in addresses})  # one order: two instances never deadlock on the rows
    if not wanted:
        return {}
    moment = now or utcnow()
    expires = moment + dt.timedelta(seconds=seconds)

    async def work(session: AsyncSession) -> dict[str, LaneClaim]:
        before = await _rows(session, chain_id, wanted)
        # A live renewal keeps the token; any other take (another owner's lapsed lease, or our own) moves it.
        renewal = and_(LaneLease.owner == owner, LaneLease.expires_at > moment)
        await session.execute(
            update(LaneLease)
            .where(
                LaneLease.chain_id == chain_id,
                LaneLease.address.in_(wanted),
                or_(LaneLease.owner == owner, LaneLease.expires_at <= moment),
            )
            .values(
                owner=owner,
                token=case((renewal, LaneLease.token), else_=LaneLease.token + 1),
                # Typed as the column: an untyped aware datetime is bound as TIMESTAMP WITH TIME ZONE on
                # PostgreSQL and stored shifted by the session's TimeZone.
                acquired_at=case((renewal, LaneLease.acquired_at), else_=literal(moment, UTCDateTime())),
                renewed_at=moment,
                expires_at=expires,
            )
        )
        for address in wanted:
            if address not in before:
                session.add(
                    LaneLease(
                        chain_id=chain_id,
                        address=address,
                        owner=owner,
                        token=1,
                        acquired_at=moment,
                        renewed_at=moment,
                        expires_at=expires,
                    )
                )
        await session.flush()  # an insert race surfaces here: the write runs again and reads the row
        after = await _rows(session, chain_id, wanted)
        return {a: LaneClaim(owner, before.get(a), after[a]) for a in wanted}

    # Urgent: a renewal queued behind a burst of vote writes would let the lease lapse.
    return await write(sessions, work, what="lane leases", conflict_retries=2, urgent=True)


async def release(
    sessions: SessionFactory,
    *,
    chain_id: int,
    owner: str,
    addresses: Collection[str] | None = None,
    now: dt.datetime | None = None,
) -> int:
    """A clean stop: `owner`'s leases end now, so another instance takes the lanes at its next try instead of
    waiting for them to expire. The rows keep the owner's name (shown as the previous owner). `addresses`
    (lower case) keeps it to those lanes: another deployment of the instance may use the same chain."""
    moment = now or utcnow()

    async def work(session: AsyncSession) -> int:
        query = update(LaneLease).where(
            LaneLease.chain_id == chain_id, LaneLease.owner == owner, LaneLease.expires_at > moment
        )
        if addresses is not None:
            query = query.where(LaneLease.address.in_(list(addresses)))
        result = await session.execute(query.values(expires_at=moment))
        return int(result.rowcount)  # type: ignore[attr-defined]

    return await write(sessions, work, what="lane leases")


async def forget(sessions: SessionFactory, *, chain_id: int, addresses: Collection[str]) -> int:
    """Delete these lanes' lease rows (lower-case addresses). Only for a database one instance holds by its
    run lock (SQLite): rows left by a run with lane ownership would otherwise refuse its NO_LANES records."""

    async def work(session: AsyncSession) -> int:
        result = await session.execute(
            delete(LaneLease).where(LaneLease.chain_id == chain_id, LaneLease.address.in_(list(addresses)))
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    return await write(sessions, work, what="lane leases")


async def owners(sessions: SessionFactory, *, chain_id: int) -> list[LaneRecord]:
    """Every lane's lease row on the chain, by address."""

    async def work(session: AsyncSession) -> list[LaneRecord]:
        query = select(LaneLease).where(LaneLease.chain_id == chain_id).order_by(LaneLease.address)
        return [_record(row) for row in (await session.execute(query)).scalars()]

    return await read(sessions, work, what="lane leases")


async def hold_fence(session: AsyncSession, fence: LaneFence, now: dt.datetime) -> None:
    """Inside a write transaction: the fence's owner still holds the lane under its token with an unexpired
    lease, else LaneLost (the caller's transaction then rolls back). The check is an UPDATE, not a SELECT:
    on PostgreSQL it locks the lease row until the transaction ends, so a takeover waits for this
    transaction and, once it commits, sees (and resolves) what it recorded."""
    result = await session.execute(
        update(LaneLease)
        .where(
            LaneLease.chain_id == fence.chain_id,
            LaneLease.address == fence.address,
            LaneLease.owner == fence.owner,
            LaneLease.token == fence.token,
            LaneLease.expires_at > now,
        )
        .values(token=LaneLease.token)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return
    row = (await _rows(session, fence.chain_id, [fence.address])).get(fence.address)
    if row is None:
        why = "no lease is recorded"
    elif row.owner != fence.owner or row.token != fence.token:
        why = f"taken over by {row.owner} (token {row.token}, ours was {fence.token})"
    else:
        why = f"our lease expired at {row.expires_at:%H:%M:%S.%f} UTC"
    raise LaneLost(fence.address, why)


async def hold(
    session: AsyncSession, fence: Fencing, now: dt.datetime, *, node_ids: Collection[int] | Select[int]
) -> None:
    """Inside a write transaction that records a signed transaction of the nodes `node_ids`: with a fence,
    `hold_fence`; with NO_LANES, LaneLost if any of those nodes has a lane lease row (lanes are in use
    there: a record without the lane's fence would skip the fencing check)."""
    if fence is not NO_LANES:
        await hold_fence(session, fence, now)
        return
    row = await _lane_lease_of(session, node_ids)
    if row is not None:
        raise LaneLost(row.address, f"lanes are in use (owner {row.owner}): a record needs the lane's fence")


async def lanes_in_use(session: AsyncSession, node_ids: Collection[int] | Select[Any]) -> bool:
    """Whether any of the nodes `node_ids` has a lane lease row (then records need the lane's fence)."""
    return await _lane_lease_of(session, node_ids) is not None


async def _lane_lease_of(
    session: AsyncSession, node_ids: Collection[int] | Select[Any]
) -> Row[str, str] | None:
    # one_of passes a subquery through; a collection is deduplicated and sorted first
    wanted = node_ids if isinstance(node_ids, Select) else sorted(set(node_ids))
    addresses = select(func.lower(Node.address)).where(one_of(Node.id, wanted))
    return (
        await session.execute(
            select(LaneLease.address, LaneLease.owner).where(LaneLease.address.in_(addresses)).limit(1)
        )
    ).first()

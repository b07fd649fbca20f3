"""The vote queue: leases of `votes` rows and the voter's transactions. Each function is one short
transaction (storage.transactions); the state changes themselves are storage/votes.py's.

Every change is a conditional UPDATE (`WHERE state = ... AND lease_owner = ...`) whose row count says whether
this writer won: two voters, or the voter and the listener, can race on a row and only one change applies.
Portable SQL only (SQLAlchemy Core), no SQLite-specific statements.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import LaneLost
from storage import votes
from storage.engine import SessionFactory
from storage.lanes import Fencing, hold
from storage.models import (
    NonceFiller,
    Proposal,
    Vote,
    VoteOutcome,
    VoteState,
    VoteTransaction,
    one_of,
    utcnow,
)

# The voter names its deployment's queue with it (defined with the API's reads).
from storage.queries import ContractScope as ContractScope
from storage.transactions import read, write

# Defined with the transitions; the voter imports them from here.
from storage.votes import Confirmation as Confirmation
from storage.votes import SentRecord as SentRecord
from storage.votes import SignedTx as SignedTx

# Rows deferred after an error are "leased" to nobody until a time: the lease query skips them till then.
DEFERRED_OWNER = "deferred"


@dataclass(frozen=True)
class QueuedVote:
    """A queued vote row with what the voter needs to decide on it."""

    vote_id: int
    node_id: int
    proposal_row_id: int
    proposal_id: int  # on chain
    chain_id: int
    contract: str
    content_hash: str  # of the stored proposal
    voting_ends_at: dt.datetime
    attempts: int


@dataclass(frozen=True)
class SentVote:
    """A `sent` row and every transaction ever signed for it (first send, replacements, older attempts)."""

    vote_id: int
    node_id: int
    proposal_id: int
    nonce: int
    tx_hash: str
    transactions: tuple[SignedTx, ...]

    @property
    def latest(self) -> SignedTx:
        """The transaction currently expected to land (the last one signed with the row's nonce)."""
        same_nonce = [tx for tx in self.transactions if tx.nonce == self.nonce]
        for tx in same_nonce:
            if tx.tx_hash == self.tx_hash:
                return tx
        return same_nonce[-1] if same_nonce else self.transactions[-1]


def _lease_free(now: dt.datetime) -> ColumnElement[bool]:
    return or_(Vote.lease_expires_at.is_(None), Vote.lease_expires_at < now)


# -- leasing ---------------------------------------------------------------------------------------------


def _in_scope(scope: ContractScope) -> ColumnElement[bool]:
    """A node's rows of one deployment (chain AND contract): a key voting in several deployments has one
    nonce lane per chain, and rows left by another contract on the same chain must never be leased, adopted
    or voted on this contract by their proposal number."""
    return Vote.proposal_ref.in_(select(Proposal.id).where(scope.where()))


def _free_queued(node_ids: Collection[int], scope: ContractScope, now: dt.datetime) -> ColumnElement[bool]:
    """Rows a voter may lease: queued, not leased (or the lease ran out), of these nodes and deployment."""
    return and_(
        Vote.state == VoteState.QUEUED,
        _lease_free(now),
        Vote.node_id.in_(list(node_ids)),
        _in_scope(scope),
    )


def _most_urgent(free: ColumnElement[bool], max_proposals: int) -> ScalarSelect[int]:
    """The row ids of the `max_proposals` proposals with free rows that end first, as a subquery."""
    return (
        select(Proposal.id)
        .join(Vote, Vote.proposal_ref == Proposal.id)
        .where(free)
        .group_by(Proposal.id, Proposal.voting_ends_at)
        .order_by(Proposal.voting_ends_at, Proposal.id)
        .limit(max_proposals)
        .scalar_subquery()
    )


async def queued_candidates(
    sessions: SessionFactory,
    *,
    node_ids: Collection[int],
    max_proposals: int,
    scope: ContractScope,
    now: dt.datetime | None = None,
) -> list[QueuedVote]:
    """Free queued rows of the `max_proposals` most urgent proposals (earliest end of voting first): what
    `lease_most_urgent` would take."""
    free = _free_queued(node_ids, scope, now or utcnow())

    async def work(session: AsyncSession) -> list[QueuedVote]:
        rows = await session.execute(
            _queued_select().where(free, Vote.proposal_ref.in_(_most_urgent(free, max_proposals)))
        )
        return [_queued(row) for row in rows.all()]

    return await read(sessions, work, what="vote queue")


async def lease_most_urgent(
    sessions: SessionFactory,
    *,
    node_ids: Collection[int],
    max_proposals: int,
    scope: ContractScope,
    owner: str,
    lease_seconds: float,
    now: dt.datetime | None = None,
) -> list[QueuedVote]:
    """Lease the free queued rows of the `max_proposals` most urgent proposals for `owner`, in one
    transaction (choosing and leasing apart took two, on the way from every event to its votes); returns
    the rows this owner now holds."""
    moment = now or utcnow()
    expires = moment + dt.timedelta(seconds=lease_seconds)
    free = _free_queued(node_ids, scope, moment)

    async def work(session: AsyncSession) -> list[QueuedVote]:
        await session.execute(
            update(Vote)
            .where(free, Vote.proposal_ref.in_(_most_urgent(free, max_proposals)))
            .values(lease_owner=owner, lease_expires_at=expires)
            .execution_options(synchronize_session=False)
        )
        return await _held(session, owner, expires, Vote.node_id.in_(list(node_ids)))

    return await write(sessions, work, what="vote queue")


def _queued_select() -> Any:
    return select(
        Vote.id,
        Vote.node_id,
        Vote.proposal_ref,
        Proposal.proposal_id,
        Proposal.chain_id,
        Proposal.contract,
        Proposal.content_hash,
        Proposal.voting_ends_at,
        Vote.attempts,
    ).join(Proposal, Proposal.id == Vote.proposal_ref)


def _queued(row: Any) -> QueuedVote:
    return QueuedVote(
        vote_id=row.id,
        node_id=row.node_id,
        proposal_row_id=row.proposal_ref,
        proposal_id=int(row.proposal_id),
        chain_id=int(row.chain_id),
        contract=row.contract,
        content_hash=row.content_hash,
        voting_ends_at=row.voting_ends_at,
        attempts=row.attempts,
    )


async def lease(
    sessions: SessionFactory,
    vote_ids: Sequence[int],
    *,
    owner: str,
    lease_seconds: float,
    now: dt.datetime | None = None,
) -> list[QueuedVote]:
    """Take the free queued rows among `vote_ids` for `owner`; returns the rows this owner now holds."""
    if not vote_ids:
        return []
    moment = now or utcnow()
    expires = moment + dt.timedelta(seconds=lease_seconds)

    async def work(session: AsyncSession) -> list[QueuedVote]:
        await session.execute(
            update(Vote)
            .where(one_of(Vote.id, vote_ids), Vote.state == VoteState.QUEUED, _lease_free(moment))
            .values(lease_owner=owner, lease_expires_at=expires)
        )
        return await _held(session, owner, expires, one_of(Vote.id, vote_ids))

    return await write(sessions, work, what="vote queue")


async def _held(
    session: AsyncSession, owner: str, expires: dt.datetime, among: ColumnElement[bool]
) -> list[QueuedVote]:
    """The queued rows `owner` holds with the lease it just took: rows another voter leased first are not
    ours."""
    rows = await session.execute(
        _queued_select().where(
            among,
            Vote.state == VoteState.QUEUED,
            Vote.lease_owner == owner,
            Vote.lease_expires_at == expires,
        )
    )
    return [_queued(row) for row in rows.all()]


async def release(
    sessions: SessionFactory,
    vote_ids: Sequence[int],
    *,
    owner: str,
    error: str | None = None,
    defer_until: dt.datetime | None = None,
) -> int:
    """Give leased rows back to the queue (now, or not before `defer_until`); they stay `queued`."""
    if not vote_ids:
        return 0
    values: dict[str, Any] = {
        "lease_owner": DEFERRED_OWNER if defer_until else None,
        "lease_expires_at": defer_until,
    }
    if error is not None:
        values["last_error"] = error

    async def work(session: AsyncSession) -> int:
        result = await session.execute(
            update(Vote)
            .where(one_of(Vote.id, vote_ids), Vote.state == VoteState.QUEUED, Vote.lease_owner == owner)
            .values(**values)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    return await write(sessions, work, what="vote queue")


async def release_owner(sessions: SessionFactory, owner: str) -> int:
    """Give back every queued row `owner` holds (after its connection dropped mid-round)."""

    async def work(session: AsyncSession) -> int:
        result = await session.execute(
            update(Vote)
            .where(Vote.state == VoteState.QUEUED, Vote.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    return await write(sessions, work, what="vote queue")


async def release_node_leases(
    sessions: SessionFactory, node_id: int, *, keep_owner: str, scope: ContractScope
) -> int:
    """Free the queued rows of one node leased by owners other than `keep_owner` (not the deferred ones):
    the node's lane has a new owner, and only it can record those votes. `scope` keeps it to that lane's
    deployment: the node's rows of another deployment's chain belong to that chain's lane (and voter)."""

    async def work(session: AsyncSession) -> int:
        result = await session.execute(
            update(Vote)
            .where(
                Vote.node_id == node_id,
                Vote.state == VoteState.QUEUED,
                Vote.lease_owner.is_not(None),
                Vote.lease_owner.not_in([keep_owner, DEFERRED_OWNER]),
                _in_scope(scope),
            )
            .values(lease_owner=None, lease_expires_at=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    return await write(sessions, work, what="vote queue")


async def count_leasable(
    sessions: SessionFactory,
    *,
    node_ids: Collection[int],
    scope: ContractScope,
    now: dt.datetime | None = None,
) -> int:
    moment = now or utcnow()

    async def work(session: AsyncSession) -> int:
        query = select(func.count()).select_from(Vote).where(_free_queued(node_ids, scope, moment))
        return int((await session.execute(query)).scalar_one())

    return await read(sessions, work, what="vote queue")


# -- decisions without a transaction ---------------------------------------------------------------------


async def finish_unsent(
    sessions: SessionFactory,
    vote_id: int,
    *,
    owner: str,
    state: VoteState,
    decision: str | None,
    confidence: float | None,
    reason: str,
    price: str | None = None,
    value: str | None = None,
) -> bool:
    """queued -> already_voted / closed / no_vote / dry_run / failed (or pending: the proposal is not on
    chain), by the lease holder, without any transaction."""

    async def work(session: AsyncSession) -> bool:
        return await votes.finish_unsent(
            session,
            vote_id,
            owner=owner,
            state=state,
            decision=decision,
            confidence=confidence,
            reason=reason,
            price=price,
            value=value,
        )

    return await write(sessions, work, what="vote queue")


# -- transactions ----------------------------------------------------------------------------------------


async def record_sent(
    sessions: SessionFactory,
    vote_id: int,
    *,
    owner: str,
    tx: SignedTx,
    decision: str,
    confidence: float,
    reason: str,
    fence: Fencing,
) -> bool:
    """queued -> sent with the signed transaction, BEFORE it is broadcast. False: the lease was lost."""
    record = SentRecord(vote_id, tx, decision, confidence, reason)
    return vote_id in await record_sent_many(sessions, [record], owner=owner, fence=fence)


async def record_sent_many(
    sessions: SessionFactory, records: Sequence[SentRecord], *, owner: str, fence: Fencing
) -> set[int]:
    """queued -> sent for each record, in ONE transaction, before any of them is broadcast.

    Returns the vote ids recorded; a row missing from it had lost its lease (another voter has it). Raises
    LaneLost (nothing recorded) when the node's lane is not this owner's under `fence` (or, with NO_LANES,
    when lanes are in use).
    """
    if not records:
        return set()
    (recorded,) = await record_sent_lanes(sessions, [(records, fence)], owner=owner)
    if isinstance(recorded, LaneLost):
        raise recorded
    return recorded


async def record_sent_lanes(
    sessions: SessionFactory, lanes: Sequence[tuple[Sequence[SentRecord], Fencing]], *, owner: str
) -> list[set[int] | LaneLost]:
    """`record_sent_many` for several lanes' signed votes (each with its lane's fence) in ONE transaction:
    the five nodes' votes on a proposal are stored together, then broadcast together. Per lane, the vote ids
    recorded, or LaneLost: that lane's fence did not hold, so none of its records were written (the fence
    check writes nothing when it fails) while the other lanes' were."""

    async def work(session: AsyncSession) -> list[set[int] | LaneLost]:
        return await votes.record_sent(session, lanes, owner=owner)

    return await write(sessions, work, what="vote queue")


async def record_replacement(
    sessions: SessionFactory, vote_id: int, tx: SignedTx, *, note: str, fence: Fencing
) -> bool:
    """A replacement (same nonce, higher fees) of a `sent` vote, persisted before it is broadcast (under the
    lane's `fence`, like a first send)."""

    async def work(session: AsyncSession) -> bool:
        await hold(session, fence, utcnow(), node_ids=select(Vote.node_id).where(Vote.id == vote_id))
        result = await session.execute(
            update(Vote)
            .where(Vote.id == vote_id, Vote.state == VoteState.SENT, Vote.nonce == tx.nonce)
            .values(
                tx_hash=tx.tx_hash,
                max_fee_per_gas=str(tx.max_fee_per_gas),
                max_priority_fee_per_gas=str(tx.max_priority_fee_per_gas),
                last_error=note,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        await votes.add_transactions(session, [(vote_id, tx)])
        return True

    return await write(sessions, work, what="vote queue")


async def mark_confirmed(
    sessions: SessionFactory, vote_id: int, *, tx_hash: str, block_number: int, gas_used: int | None
) -> bool:
    """sent -> confirmed. Also accepts a row already confirmed (the listener's VoteCast handler may win)."""
    done = await mark_confirmed_many(sessions, [Confirmation(vote_id, tx_hash, block_number, gas_used)])
    return vote_id in done


async def mark_confirmed_many(sessions: SessionFactory, confirmations: Sequence[Confirmation]) -> set[int]:
    """Several sent -> confirmed changes in one transaction, each conditional; returns the ids changed."""
    if not confirmations:
        return set()

    async def work(session: AsyncSession) -> set[int]:
        return await votes.confirm_by_receipts(session, confirmations)

    return await write(sessions, work, what="vote queue", background=True)


async def own_transaction_hashes(sessions: SessionFactory, vote_ids: Collection[int]) -> dict[int, list[str]]:
    """Every transaction hash signed for each vote (first sends and replacements)."""
    if not vote_ids:
        return {}

    async def work(session: AsyncSession) -> dict[int, list[str]]:
        rows = await session.execute(
            select(VoteTransaction.vote_id, VoteTransaction.tx_hash)
            .where(one_of(VoteTransaction.vote_id, vote_ids))
            .order_by(VoteTransaction.id)
        )
        hashes: dict[int, list[str]] = {}
        for vote_id, tx_hash in rows:
            hashes.setdefault(vote_id, []).append(tx_hash)
        return hashes

    return await read(sessions, work, what="vote queue")


async def confirm_queued_by_own_tx(
    sessions: SessionFactory, *, owner: str, confirmation: Confirmation
) -> bool:
    """queued -> confirmed, by the lease holder, when one of the vote's own earlier transactions is on chain
    (a reorg had queued it again, and the transaction was mined again). Decision and reason stay."""

    async def work(session: AsyncSession) -> bool:
        return await votes.confirm_queued_by_own_tx(session, owner=owner, confirmation=confirmation)

    return await write(sessions, work, what="vote queue")


async def mark_failed(
    sessions: SessionFactory,
    vote_id: int,
    *,
    reason: str,
    tx_hash: str | None = None,
    block_number: int | None = None,
    gas_used: int | None = None,
) -> bool:
    """sent -> failed: mined with status 0, or rejected for good. `reason` names the contract error."""

    async def work(session: AsyncSession) -> bool:
        return await votes.mark_failed(
            session,
            vote_id,
            reason=reason,
            tx_hash=tx_hash,
            block_number=block_number,
            gas_used=gas_used,
        )

    return await write(sessions, work, what="vote queue")


async def resolve_sent(
    sessions: SessionFactory,
    vote_id: int,
    *,
    state: VoteState,
    reason: str,
    tx_outcome: str | None = None,
    defer_until: dt.datetime | None = None,
    only_if_tx_in: Collection[str] | None = None,
    outcome: VoteOutcome | None = None,
) -> bool:
    """sent -> queued (the vote was not cast and can be sent again), -> pending (the same, but only once its
    proposal is back on the canonical chain) or -> already_voted.

    `tx_outcome` marks the row's unsettled transactions (e.g. "rejected", "dropped"). Back in the queue,
    the row may wait until `defer_until`. With `only_if_tx_in`, only while the row's current transaction is
    one of those (not a later attempt). `outcome`: the row's VoteOutcome, when not the usual one of `state`.
    """

    async def work(session: AsyncSession) -> bool:
        return await votes.resolve_sent(
            session,
            vote_id,
            state=state,
            reason=reason,
            deferred_owner=DEFERRED_OWNER,
            tx_outcome=tx_outcome,
            defer_until=defer_until,
            only_if_tx_in=only_if_tx_in,
            outcome=outcome,
        )

    return await write(sessions, work, what="vote queue")


async def record_nonce_filler(
    sessions: SessionFactory,
    *,
    node_id: int,
    nonce: int,
    tx_hash: str,
    reason: str,
    fence: Fencing,
) -> None:
    """A gap filler's hash and nonce, BEFORE it is broadcast (like every transaction the service signs),
    under the lane's `fence`."""

    async def work(session: AsyncSession) -> None:
        await hold(session, fence, utcnow(), node_ids=[node_id])
        session.add(NonceFiller(node_id=node_id, nonce=nonce, tx_hash=tx_hash, reason=reason))

    await write(sessions, work, what="vote queue")


async def set_note(sessions: SessionFactory, vote_id: int, note: str) -> None:
    """Record why a sent vote is waiting (fee cap, stuck) without changing its state."""

    async def work(session: AsyncSession) -> None:
        await session.execute(
            update(Vote).where(Vote.id == vote_id, Vote.state == VoteState.SENT).values(last_error=note)
        )

    await write(sessions, work, what="vote queue")


async def reopen_confirmed(
    sessions: SessionFactory,
    *,
    vote_ids: Sequence[int] = (),
    tx_hashes: Sequence[str] = (),
    reason: str = "vote transaction reorged out of the chain; checking it again",
) -> int:
    """confirmed -> sent, for votes whose transaction a reorg removed: the voter then resolves them from the
    chain (receipt again, rebroadcast from the stored bytes, or back to the queue)."""
    if not vote_ids and not tx_hashes:
        return 0

    async def work(session: AsyncSession) -> int:
        return await votes.reopen_confirmed(session, vote_ids=vote_ids, tx_hashes=tx_hashes, reason=reason)

    return await write(sessions, work, what="vote queue")


# -- the reconcile pass -----------------------------------------------------------------------------------


async def apply_reconcile_fix(
    sessions: SessionFactory,
    vote_id: int,
    *,
    from_states: Sequence[VoteState],
    to_state: VoteState,
    reason: str,
) -> bool:
    """One change the reconcile pass read from the chain (see storage.votes.apply_reconcile_fix)."""

    async def work(session: AsyncSession) -> bool:
        return await votes.apply_reconcile_fix(
            session, vote_id, from_states=from_states, to_state=to_state, reason=reason
        )

    return await write(sessions, work, what="reconcile")


async def confirm_by_reconcile(sessions: SessionFactory, confirmation: Confirmation) -> bool:
    """sent -> confirmed: the reconcile pass found the vote's transaction mined with success."""

    async def work(session: AsyncSession) -> bool:
        return await votes.confirm_by_reconcile(session, confirmation)

    return await write(sessions, work, what="reconcile")


async def sent_vote_ids(
    sessions: SessionFactory, node_ids: Collection[int], *, scope: ContractScope
) -> dict[int, set[int]]:
    """Ids of the `sent` rows of these nodes, by node: the cheap check whether a lane has rows to adopt."""

    async def work(session: AsyncSession) -> dict[int, set[int]]:
        rows = await session.execute(
            select(Vote.node_id, Vote.id).where(
                Vote.node_id.in_(list(node_ids)), Vote.state == VoteState.SENT, _in_scope(scope)
            )
        )
        by_node: dict[int, set[int]] = {}
        for node_id, vote_id in rows:
            by_node.setdefault(node_id, set()).add(vote_id)
        return by_node

    return await read(sessions, work, what="vote queue")


async def sent_votes(sessions: SessionFactory, node_id: int, *, scope: ContractScope) -> list[SentVote]:
    """Every `sent` row of a node in one deployment with all its signed transactions, oldest nonce first."""

    async def work(session: AsyncSession) -> list[SentVote]:
        rows = (
            await session.execute(
                select(Vote.id, Vote.node_id, Proposal.proposal_id, Vote.nonce, Vote.tx_hash)
                .join(Proposal, Proposal.id == Vote.proposal_ref)
                .where(Vote.node_id == node_id, Vote.state == VoteState.SENT, _in_scope(scope))
                .order_by(Vote.nonce)
            )
        ).all()
        if not rows:
            return []
        txs = (
            await session.execute(
                select(VoteTransaction)
                .where(one_of(VoteTransaction.vote_id, [r.id for r in rows]))
                .order_by(VoteTransaction.id)
            )
        ).scalars()
        by_vote: dict[int, list[SignedTx]] = {}
        for t in txs:
            by_vote.setdefault(t.vote_id, []).append(
                SignedTx(
                    tx_hash=t.tx_hash,
                    nonce=int(t.nonce),
                    max_fee_per_gas=int(t.max_fee_per_gas),
                    max_priority_fee_per_gas=int(t.max_priority_fee_per_gas),
                    gas_limit=int(t.gas_limit),
                    raw_transaction=bytes.fromhex(t.raw_transaction.removeprefix("0x")),
                )
            )
        return [
            SentVote(r.id, r.node_id, int(r.proposal_id), int(r.nonce), r.tx_hash, tuple(by_vote[r.id]))
            for r in rows
            if r.id in by_vote and r.nonce is not None and r.tx_hash is not None
        ]

    return await read(sessions, work, what="vote queue")

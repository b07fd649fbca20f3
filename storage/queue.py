"""The vote queue: leases and state changes of `votes` rows. Each function is one short transaction.

Every change is a conditional UPDATE (`WHERE state = ... AND lease_owner = ...`) whose row count says whether
this writer won: two voters, or the voter and the listener, can race on a row and only one change applies.
Portable SQL only (SQLAlchemy Core), no SQLite-specific statements.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

import anyio
from sqlalchemy import ColumnElement, Table, and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import StorageError
from storage.engine import SessionFactory
from storage.models import NonceFiller, Proposal, Vote, VoteState, VoteTransaction, utcnow

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
class SignedTx:
    """A signed vote transaction, persisted before it is broadcast."""

    tx_hash: str
    nonce: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    gas_limit: int
    raw_transaction: bytes


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


# The voter's lanes and watchers write concurrently. SQLite has one writer at a time and its busy handler
# sleeps up to 100 ms per retry, so writers of one process take turns here instead (each write is a few ms).
_write_locks: weakref.WeakKeyDictionary[SessionFactory, anyio.Lock] = weakref.WeakKeyDictionary()


def _write_lock(sessions: SessionFactory) -> anyio.Lock:
    lock = _write_locks.get(sessions)
    if lock is None:
        lock = _write_locks[sessions] = anyio.Lock()
    return lock


async def _in_transaction(sessions: SessionFactory, work: Any, *, write: bool = True) -> Any:
    # A write runs shielded from cancellation: cancelled mid-statement, its rollback would be cancelled too
    # (anyio cancellation is level-triggered), leaving the connection's write lock held till the busy timeout.
    try:
        with anyio.CancelScope(shield=write):
            async with _write_lock(sessions) if write else nullcontext(), sessions.begin() as session:
                return await work(session)
    except SQLAlchemyError as exc:
        raise StorageError(f"vote queue: {exc}") from exc


# -- leasing ---------------------------------------------------------------------------------------------


async def queued_candidates(
    sessions: SessionFactory, *, node_ids: Collection[int], max_proposals: int, now: dt.datetime | None = None
) -> list[QueuedVote]:
    """Free queued rows of the `max_proposals` most urgent proposals (earliest end of voting first)."""
    moment = now or utcnow()

    async def work(session: AsyncSession) -> list[QueuedVote]:
        free = and_(Vote.state == VoteState.QUEUED, _lease_free(moment), Vote.node_id.in_(list(node_ids)))
        proposals = (
            select(Proposal.id, Proposal.voting_ends_at)
            .join(Vote, Vote.proposal_ref == Proposal.id)
            .where(free)
            .distinct()
            .order_by(Proposal.voting_ends_at, Proposal.id)
            .limit(max_proposals)
        )
        ids = [row.id for row in (await session.execute(proposals)).all()]
        if not ids:
            return []
        rows = await session.execute(_queued_select().where(free, Vote.proposal_ref.in_(ids)))
        return [_queued(row) for row in rows.all()]

    result: list[QueuedVote] = await _in_transaction(sessions, work, write=False)
    return result


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
            .where(Vote.id.in_(list(vote_ids)), Vote.state == VoteState.QUEUED, _lease_free(moment))
            .values(lease_owner=owner, lease_expires_at=expires)
        )
        # Read back what we hold: rows another voter leased first are not ours.
        rows = await session.execute(
            _queued_select().where(
                Vote.id.in_(list(vote_ids)),
                Vote.state == VoteState.QUEUED,
                Vote.lease_owner == owner,
                Vote.lease_expires_at == expires,
            )
        )
        return [_queued(row) for row in rows.all()]

    result: list[QueuedVote] = await _in_transaction(sessions, work)
    return result


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
            .where(Vote.id.in_(list(vote_ids)), Vote.state == VoteState.QUEUED, Vote.lease_owner == owner)
            .values(**values)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    count: int = await _in_transaction(sessions, work)
    return count


async def release_owner(sessions: SessionFactory, owner: str) -> int:
    """Give back every queued row `owner` holds (after its connection dropped mid-round)."""

    async def work(session: AsyncSession) -> int:
        result = await session.execute(
            update(Vote)
            .where(Vote.state == VoteState.QUEUED, Vote.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    count: int = await _in_transaction(sessions, work)
    return count


async def count_leasable(
    sessions: SessionFactory, *, node_ids: Collection[int], now: dt.datetime | None = None
) -> int:
    moment = now or utcnow()

    async def work(session: AsyncSession) -> int:
        query = (
            select(func.count())
            .select_from(Vote)
            .where(Vote.state == VoteState.QUEUED, _lease_free(moment), Vote.node_id.in_(list(node_ids)))
        )
        return int((await session.execute(query)).scalar_one())

    count: int = await _in_transaction(sessions, work, write=False)
    return count


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
) -> bool:
    """queued -> already_voted / closed / no_vote / failed, by the lease holder, without any transaction."""
    now = utcnow()

    async def work(session: AsyncSession) -> bool:
        result = await session.execute(
            update(Vote)
            .where(Vote.id == vote_id, Vote.state == VoteState.QUEUED, Vote.lease_owner == owner)
            .values(
                state=state,
                decision=decision,
                confidence=confidence,
                reason=reason,
                decided_at=now,
                lease_owner=None,
                lease_expires_at=None,
                last_error=reason if state == VoteState.FAILED else None,
            )
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    done: bool = await _in_transaction(sessions, work)
    return done


# -- transactions ----------------------------------------------------------------------------------------


async def _add_tx(session: AsyncSession, vote_id: int, tx: SignedTx) -> None:
    await _add_txs(session, [(vote_id, tx)])


async def _add_txs(session: AsyncSession, txs: Sequence[tuple[int, SignedTx]]) -> None:
    """Insert signed transactions; signing is deterministic, so a refused one signed again has the same
    hash: then the stored row is reused (its outcome reset)."""
    if not txs:
        return
    stored = await session.execute(
        select(VoteTransaction.tx_hash, VoteTransaction.vote_id).where(
            VoteTransaction.tx_hash.in_([tx.tx_hash for _, tx in txs])
        )
    )
    known = {tx_hash: vote_id for tx_hash, vote_id in stored}
    fresh = [_tx_row(vote_id, tx) for vote_id, tx in txs if tx.tx_hash not in known]
    if fresh:
        await session.execute(insert(VoteTransaction), fresh)
    for vote_id, tx in txs:
        owner = known.get(tx.tx_hash)
        if owner is None:
            continue
        if owner != vote_id:
            raise StorageError(f"transaction {tx.tx_hash} is already stored for another vote")
        await session.execute(
            update(VoteTransaction).where(VoteTransaction.tx_hash == tx.tx_hash).values(outcome=None)
        )


def _tx_row(vote_id: int, tx: SignedTx) -> dict[str, Any]:
    return {
        "vote_id": vote_id,
        "tx_hash": tx.tx_hash,
        "nonce": tx.nonce,
        "max_fee_per_gas": str(tx.max_fee_per_gas),
        "max_priority_fee_per_gas": str(tx.max_priority_fee_per_gas),
        "gas_limit": tx.gas_limit,
        "raw_transaction": "0x" + tx.raw_transaction.hex(),
        "created_at": utcnow(),
    }


@dataclass(frozen=True)
class SentRecord:
    """A decided vote and its signed transaction, to be persisted before the broadcast."""

    vote_id: int
    tx: SignedTx
    decision: str
    confidence: float
    reason: str


async def record_sent(
    sessions: SessionFactory,
    vote_id: int,
    *,
    owner: str,
    tx: SignedTx,
    decision: str,
    confidence: float,
    reason: str,
) -> bool:
    """queued -> sent with the signed transaction, BEFORE it is broadcast. False: the lease was lost."""
    record = SentRecord(vote_id, tx, decision, confidence, reason)
    return vote_id in await record_sent_many(sessions, [record], owner=owner)


async def record_sent_many(
    sessions: SessionFactory, records: Sequence[SentRecord], *, owner: str
) -> set[int]:
    """queued -> sent for each record, in ONE transaction, before any of them is broadcast.

    Returns the vote ids recorded; a row missing from it had lost its lease (another voter has it).
    """
    now = utcnow()

    async def work(session: AsyncSession) -> set[int]:
        recorded: set[int] = set()
        for record in records:
            tx = record.tx
            result = await session.execute(
                update(Vote)
                .where(Vote.id == record.vote_id, Vote.state == VoteState.QUEUED, Vote.lease_owner == owner)
                .values(
                    state=VoteState.SENT,
                    decision=record.decision,
                    confidence=record.confidence,
                    reason=record.reason,
                    decided_at=now,
                    tx_hash=tx.tx_hash,
                    nonce=tx.nonce,
                    max_fee_per_gas=str(tx.max_fee_per_gas),
                    max_priority_fee_per_gas=str(tx.max_priority_fee_per_gas),
                    attempts=Vote.attempts + 1,
                    sent_at=now,
                    last_error=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                recorded.add(record.vote_id)
        await _add_txs(session, [(r.vote_id, r.tx) for r in records if r.vote_id in recorded])
        return recorded

    if not records:
        return set()
    done: set[int] = await _in_transaction(sessions, work)
    return done


async def record_replacement(sessions: SessionFactory, vote_id: int, tx: SignedTx, *, note: str) -> bool:
    """A replacement (same nonce, higher fees) of a `sent` vote, persisted before it is broadcast."""

    async def work(session: AsyncSession) -> bool:
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
        await _add_tx(session, vote_id, tx)
        return True

    done: bool = await _in_transaction(sessions, work)
    return done


@dataclass(frozen=True)
class Confirmation:
    vote_id: int
    tx_hash: str
    block_number: int
    gas_used: int | None


async def mark_confirmed(
    sessions: SessionFactory, vote_id: int, *, tx_hash: str, block_number: int, gas_used: int | None
) -> bool:
    """sent -> confirmed. Also accepts a row already confirmed (the listener's VoteCast handler may win)."""
    done = await mark_confirmed_many(sessions, [Confirmation(vote_id, tx_hash, block_number, gas_used)])
    return vote_id in done


async def mark_confirmed_many(sessions: SessionFactory, confirmations: Sequence[Confirmation]) -> set[int]:
    """Several sent -> confirmed changes in one transaction, each conditional; returns the ids changed.

    One statement for all rows (executemany), not one per row: a burst confirms hundreds of votes a second.
    """
    if not confirmations:
        return set()
    now = utcnow()
    votes = cast(
        Table, Vote.__table__
    )  # Core table: a list of parameters is a plain executemany, not an ORM bulk update

    async def work(session: AsyncSession) -> set[int]:
        await session.execute(
            update(votes)
            .where(
                votes.c.id == bindparam("b_vote"),
                # Not IN (...): an expanding parameter cannot be used with executemany.
                or_(votes.c.state == VoteState.SENT, votes.c.state == VoteState.CONFIRMED),
            )
            .values(
                state=VoteState.CONFIRMED,
                tx_hash=bindparam("b_tx"),
                confirmed_block=bindparam("b_block"),
                gas_used=bindparam("b_gas"),
                confirmed_at=func.coalesce(votes.c.confirmed_at, now),
                last_error=None,
            ),
            [_confirmation_params(item) for item in confirmations],
        )
        # Which of them this statement confirmed (the write lock is held now: a consistent read).
        confirmed = await session.execute(
            select(Vote.id, Vote.tx_hash).where(
                Vote.id.in_([c.vote_id for c in confirmations]), Vote.state == VoteState.CONFIRMED
            )
        )
        hashes = {vote_id: tx_hash for vote_id, tx_hash in confirmed}
        done = [c for c in confirmations if hashes.get(c.vote_id) == c.tx_hash]
        await _settle_outcomes_many(session, [(c.vote_id, c.tx_hash) for c in done], "mined")
        return {c.vote_id for c in done}

    result: set[int] = await _in_transaction(sessions, work)
    return result


def _confirmation_params(item: Confirmation) -> dict[str, Any]:
    return {
        "b_vote": item.vote_id,
        "b_tx": item.tx_hash,
        "b_block": item.block_number,
        "b_gas": item.gas_used,
    }


async def _settle_outcomes_many(
    session: AsyncSession, settled: Sequence[tuple[int, str]], outcome: str
) -> None:
    """Each vote's transaction `tx_hash` gets `outcome`, its other unsettled ones "replaced" (they are of the
    same attempt, with the same nonce: once one is mined, the others never can be). One executemany."""
    if not settled:
        return
    txs = cast(Table, VoteTransaction.__table__)
    await session.execute(
        update(txs)
        .where(
            txs.c.vote_id == bindparam("b_vote"),
            or_(txs.c.tx_hash == bindparam("b_tx"), txs.c.outcome.is_(None)),
        )
        .values(outcome=case((txs.c.tx_hash == bindparam("b_tx"), outcome), else_="replaced")),
        [{"b_vote": vote_id, "b_tx": tx_hash} for vote_id, tx_hash in settled],
    )


async def own_transaction_hashes(sessions: SessionFactory, vote_ids: Collection[int]) -> dict[int, list[str]]:
    """Every transaction hash signed for each vote (first sends and replacements)."""
    if not vote_ids:
        return {}

    async def work(session: AsyncSession) -> dict[int, list[str]]:
        rows = await session.execute(
            select(VoteTransaction.vote_id, VoteTransaction.tx_hash)
            .where(VoteTransaction.vote_id.in_(list(vote_ids)))
            .order_by(VoteTransaction.id)
        )
        hashes: dict[int, list[str]] = {}
        for vote_id, tx_hash in rows:
            hashes.setdefault(vote_id, []).append(tx_hash)
        return hashes

    result: dict[int, list[str]] = await _in_transaction(sessions, work, write=False)
    return result


async def confirm_queued_by_own_tx(
    sessions: SessionFactory, *, owner: str, confirmation: Confirmation
) -> bool:
    """queued -> confirmed, by the lease holder, when one of the vote's own earlier transactions is on chain
    (a reorg had queued it again, and the transaction was mined again). Decision and reason stay."""
    now = utcnow()

    async def work(session: AsyncSession) -> bool:
        result = await session.execute(
            update(Vote)
            .where(Vote.id == confirmation.vote_id, Vote.state == VoteState.QUEUED, Vote.lease_owner == owner)
            .values(
                state=VoteState.CONFIRMED,
                tx_hash=confirmation.tx_hash,
                confirmed_block=confirmation.block_number,
                gas_used=confirmation.gas_used,
                confirmed_at=now,
                last_error=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        await _settle_outcomes_many(session, [(confirmation.vote_id, confirmation.tx_hash)], "mined")
        return True

    done: bool = await _in_transaction(sessions, work)
    return done


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
        values: dict[str, Any] = {"state": VoteState.FAILED, "last_error": reason}
        if tx_hash is not None:
            values.update(tx_hash=tx_hash, confirmed_block=block_number, gas_used=gas_used)
        result = await session.execute(
            update(Vote).where(Vote.id == vote_id, Vote.state == VoteState.SENT).values(**values)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        if tx_hash is not None:
            await _settle_outcomes_many(session, [(vote_id, tx_hash)], "failed")
        return True

    done: bool = await _in_transaction(sessions, work)
    return done


async def resolve_sent(
    sessions: SessionFactory,
    vote_id: int,
    *,
    state: VoteState,
    reason: str,
    tx_outcome: str | None = None,
    defer_until: dt.datetime | None = None,
    only_if_tx_in: Collection[str] | None = None,
) -> bool:
    """sent -> queued (the vote was not cast and can be sent again), -> pending (the same, but only once its
    proposal is back on the canonical chain) or -> already_voted / closed.

    `tx_outcome` marks the row's unsettled transactions (e.g. "rejected", "dropped"). Back in the queue,
    the row may wait until `defer_until`. With `only_if_tx_in`, only while the row's current transaction is
    one of those (not a later attempt).
    """

    async def work(session: AsyncSession) -> bool:
        values: dict[str, Any] = {"state": state, "last_error": reason}
        if state in (VoteState.QUEUED, VoteState.PENDING):
            values.update(
                tx_hash=None,
                nonce=None,
                lease_owner=DEFERRED_OWNER if defer_until else None,
                lease_expires_at=defer_until,
            )
        else:
            values["reason"] = reason
        condition = [Vote.id == vote_id, Vote.state == VoteState.SENT]
        if only_if_tx_in is not None:
            condition.append(Vote.tx_hash.in_(list(only_if_tx_in)))
        result = await session.execute(update(Vote).where(*condition).values(**values))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        if tx_outcome is not None:
            await session.execute(
                update(VoteTransaction)
                .where(VoteTransaction.vote_id == vote_id, VoteTransaction.outcome.is_(None))
                .values(outcome=tx_outcome)
            )
        return True

    done: bool = await _in_transaction(sessions, work)
    return done


async def record_nonce_filler(
    sessions: SessionFactory, *, node_id: int, nonce: int, tx_hash: str, reason: str
) -> None:
    """A gap filler's hash and nonce, BEFORE it is broadcast (like every transaction the service signs)."""

    async def work(session: AsyncSession) -> None:
        session.add(NonceFiller(node_id=node_id, nonce=nonce, tx_hash=tx_hash, reason=reason))

    await _in_transaction(sessions, work)


async def set_note(sessions: SessionFactory, vote_id: int, note: str) -> None:
    """Record why a sent vote is waiting (fee cap, stuck) without changing its state."""

    async def work(session: AsyncSession) -> None:
        await session.execute(
            update(Vote).where(Vote.id == vote_id, Vote.state == VoteState.SENT).values(last_error=note)
        )

    await _in_transaction(sessions, work)


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
        match = or_(Vote.id.in_(list(vote_ids)), Vote.tx_hash.in_(list(tx_hashes)))
        ids = list(
            (await session.execute(select(Vote.id).where(match, Vote.state == VoteState.CONFIRMED))).scalars()
        )
        if not ids:
            return 0
        result = await session.execute(
            update(Vote)
            .where(Vote.id.in_(ids), Vote.state == VoteState.CONFIRMED)
            .values(
                state=VoteState.SENT,
                confirmed_block=None,
                gas_used=None,
                confirmed_at=None,
                last_error=reason,
            )
        )
        await session.execute(
            update(VoteTransaction)
            .where(VoteTransaction.vote_id.in_(ids), VoteTransaction.outcome.in_(["mined", "replaced"]))
            .values(outcome=None)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    count: int = await _in_transaction(sessions, work)
    return count


async def sent_vote_ids(sessions: SessionFactory, node_ids: Collection[int]) -> dict[int, set[int]]:
    """Ids of the `sent` rows of these nodes, by node: the cheap check whether a lane has rows to adopt."""

    async def work(session: AsyncSession) -> dict[int, set[int]]:
        rows = await session.execute(
            select(Vote.node_id, Vote.id).where(
                Vote.node_id.in_(list(node_ids)), Vote.state == VoteState.SENT
            )
        )
        by_node: dict[int, set[int]] = {}
        for node_id, vote_id in rows:
            by_node.setdefault(node_id, set()).add(vote_id)
        return by_node

    result: dict[int, set[int]] = await _in_transaction(sessions, work, write=False)
    return result


async def sent_votes(sessions: SessionFactory, node_id: int) -> list[SentVote]:
    """Every `sent` row of a node with all its signed transactions, oldest nonce first."""

    async def work(session: AsyncSession) -> list[SentVote]:
        rows = (
            await session.execute(
                select(Vote.id, Vote.node_id, Proposal.proposal_id, Vote.nonce, Vote.tx_hash)
                .join(Proposal, Proposal.id == Vote.proposal_ref)
                .where(Vote.node_id == node_id, Vote.state == VoteState.SENT)
                .order_by(Vote.nonce)
            )
        ).all()
        if not rows:
            return []
        txs = (
            await session.execute(
                select(VoteTransaction)
                .where(VoteTransaction.vote_id.in_([r.id for r in rows]))
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

    result: list[SentVote] = await _in_transaction(sessions, work, write=False)
    return result

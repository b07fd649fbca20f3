"""Every change of a `votes` row's state, and the transitions allowed, written down once.

Each function here runs its statements in the caller's transaction (storage.transactions.write); the
modules that own a whole transaction (queue, chain_state, proposals) call them. Every UPDATE is conditional
on the row's current state being an allowed source of the change (`WHERE state IN ...`, checked against
ALLOWED when the statement is built), so an illegal transition cannot happen, whatever the caller asks.
A row count says whether this writer won a race: two voters, or the voter and the listener, may both try.

Every transition also sets `outcome` (a VoteOutcome): code decides on it, `last_error` is text for people.
Portable SQL only (SQLAlchemy Core), no SQLite-specific statements.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, bindparam, case, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import LaneLost, StorageError
from storage.lanes import NO_LANES, Fencing, hold, hold_fence, lanes_in_use
from storage.models import Vote, VoteOutcome, VoteState, VoteTransaction, core_table, one_of, utcnow

S = VoteState

# from-state -> the states a row may move to from it. A self-loop is a change of the row's details that
# keeps its state (a confirmation moved to another block, a decision dropped after a reorg).
ALLOWED: Mapping[VoteState, frozenset[VoteState]] = {
    # Waiting for confirmations: queued once deep enough; closed or voted elsewhere meanwhile.
    S.PENDING: frozenset({S.QUEUED, S.CLOSED, S.ALREADY_VOTED, S.CONFIRMED}),
    # Waiting for the voter: sent, or ended without a transaction; parked again after a reorg.
    S.QUEUED: frozenset(
        {S.QUEUED, S.PENDING, S.SENT, S.CONFIRMED, S.FAILED, S.ALREADY_VOTED, S.CLOSED, S.NO_VOTE, S.DRY_RUN}
    ),
    # Broadcast: settled from the chain, or back to the queue when the transaction will never land.
    S.SENT: frozenset({S.QUEUED, S.PENDING, S.CONFIRMED, S.FAILED, S.ALREADY_VOTED}),
    # A reorg can take a confirmation away: checked again (sent) or owed again (queued / pending).
    S.CONFIRMED: frozenset({S.CONFIRMED, S.SENT, S.QUEUED, S.PENDING}),
    # Our VoteCast log confirms it; a ProposalNotFound revert is owed again once the proposal is back.
    S.FAILED: frozenset({S.CONFIRMED, S.QUEUED, S.PENDING}),
    # Our VoteCast log confirms it; the closing event may leave the chain in a reorg.
    S.CLOSED: frozenset({S.CONFIRMED, S.QUEUED, S.PENDING}),
    # Decided again when a reorg put other content under the proposal id.
    S.NO_VOTE: frozenset({S.QUEUED}),
    # Final: the chain has this node's vote, and nothing of ours can change that.
    S.ALREADY_VOTED: frozenset(),
    # Final: decided under DLOOP_DRY_RUN and never signed; turning dry run off does not vote it afterwards.
    S.DRY_RUN: frozenset(),
}
# The states a new row is inserted in: pending while DLOOP_CONFIRMATIONS are not reached, closed when the
# reconcile pass first finds a proposal no longer open.
INITIAL: frozenset[VoteState] = frozenset({S.PENDING, S.QUEUED, S.CLOSED})


class IllegalTransition(ValueError):
    """A caller asked for a change the table does not allow: a bug, never a condition of the data."""


def allowed(source: VoteState, target: VoteState) -> bool:
    return target in ALLOWED[source]


def sources(target: VoteState, among: Iterable[VoteState] | None = None) -> tuple[VoteState, ...]:
    """The states a row may be in to move to `target`: `among` (each one checked), or all allowed ones."""
    if among is None:
        return tuple(s for s in VoteState if allowed(s, target))
    chosen = tuple(dict.fromkeys(VoteState(s) for s in among))
    illegal = [s for s in chosen if not allowed(s, target)]
    if illegal or not chosen:
        raise IllegalTransition(f"vote state {', '.join(illegal) or '(none)'} -> {target} is not allowed")
    return chosen


def _state_in(
    column: Any, target: VoteState, among: Iterable[VoteState] | None = None
) -> ColumnElement[bool]:
    # OR of equalities, not IN (...): an expanding IN cannot be used with executemany (mark_confirmed).
    return or_(*(column == str(s) for s in sources(target, among)))


# Bulk UPDATEs here never read the updated objects back: skip the ORM's session synchronisation.
_NO_SYNC = {"synchronize_session": False}


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def _update(
    session: AsyncSession, where: Sequence[ColumnElement[bool]], values: Mapping[str, Any]
) -> int:
    result = await session.execute(update(Vote).where(*where).values(**values), execution_options=_NO_SYNC)
    return _count(result)


# -- new rows ---------------------------------------------------------------------------------------------


async def insert_missing(
    session: AsyncSession, proposal_row_id: int, node_ids: Sequence[int], state: VoteState
) -> int:
    """One row per node that has none for this proposal yet, in `state` (one of INITIAL)."""
    if state not in INITIAL:
        raise IllegalTransition(f"a new vote row cannot start as {state}")
    existing = set(
        (await session.execute(select(Vote.node_id).where(Vote.proposal_ref == proposal_row_id)))
        .scalars()
        .all()
    )
    missing = [n for n in node_ids if n not in existing]
    await insert_for_new_proposals(session, [(proposal_row_id, state)], missing)
    return len(missing)


async def insert_for_new_proposals(
    session: AsyncSession, proposals: Sequence[tuple[int, VoteState]], node_ids: Sequence[int]
) -> None:
    """One row per node for each of these new proposals (row id, initial state), in one bulk statement: a
    first reconcile pass records thousands at once."""
    if not proposals or not node_ids:
        return
    illegal = sorted({str(state) for _, state in proposals if state not in INITIAL})
    if illegal:
        raise IllegalTransition(f"a new vote row cannot start as {', '.join(illegal)}")
    now = utcnow()
    rows = [
        {
            "proposal_ref": row_id,
            "node_id": node_id,
            "state": state,
            "outcome": VoteOutcome.CLOSED if state == S.CLOSED else None,
            "attempts": 0,
            "queued_at": now,
        }
        for row_id, state in proposals
        for node_id in node_ids
    ]
    # Core INSERT: the ORM's bulk insert works per row (thousands here).
    await session.execute(insert(core_table(Vote)), rows)


# -- the voter: decisions, sends, settlements ------------------------------------------------------------

# The outcome of a row the voter ends without a transaction, by its new state.
UNSENT_OUTCOMES: Mapping[VoteState, VoteOutcome] = {
    S.ALREADY_VOTED: VoteOutcome.ALREADY_VOTED,
    S.CLOSED: VoteOutcome.CLOSED,
    S.NO_VOTE: VoteOutcome.NO_VOTE,
    S.DRY_RUN: VoteOutcome.DRY_RUN,
    S.FAILED: VoteOutcome.REJECTED,
    S.PENDING: VoteOutcome.PROPOSAL_NOT_FOUND,  # the gas estimate says a reorg took the proposal away
}


async def finish_unsent(
    session: AsyncSession,
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
    """queued -> already_voted / closed / no_vote / dry_run / failed / pending, by the lease holder, no
    transaction. `price` / `value`: what a decision was valued at (exact decimal text), if priced."""
    if state not in UNSENT_OUTCOMES:  # queued -> sent needs its transaction: record_sent
        raise IllegalTransition(f"a vote ended without a transaction cannot become {state}")
    return (
        await _update(
            session,
            [Vote.id == vote_id, _state_in(Vote.state, state, [S.QUEUED]), Vote.lease_owner == owner],
            {
                "state": state,
                "outcome": UNSENT_OUTCOMES[state],
                "decision": decision,
                "confidence": confidence,
                "reason": reason,
                "decided_at": utcnow(),
                "lease_owner": None,
                "lease_expires_at": None,
                "last_error": reason if state == S.FAILED else None,
                "price": price,
                "value": value,
            },
        )
        == 1
    )


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
class SentRecord:
    """A decided vote and its signed transaction, to be persisted before the broadcast."""

    vote_id: int
    tx: SignedTx
    decision: str
    confidence: float
    reason: str
    price: str | None = None  # the asset price the decision used (exact decimal text), if priced
    value: str | None = None  # the proposal's value at that price


async def record_sent(
    session: AsyncSession, lanes: Sequence[tuple[Sequence[SentRecord], Fencing]], *, owner: str
) -> list[set[int] | LaneLost]:
    """queued -> sent for each record held by `owner`, with its transaction, for several lanes at once; per
    lane, the vote ids recorded (a row missing from it had lost its lease), or LaneLost: the lane is not
    ours under its fence (storage/lanes.py::hold), so none of its records are written (nothing may be
    broadcast) while the other lanes' are. The fences are checked first, then every lane's records are
    written together: one statement per step, not one per lane (a proposal's five votes are one record)."""
    now = utcnow()
    lost: dict[int, LaneLost] = {}
    for index, (records, fence) in enumerate(lanes):
        if records and fence is not NO_LANES:
            try:
                await hold_fence(session, fence, now)
            except LaneLost as exc:
                lost[index] = exc
    unfenced = [i for i, (records, fence) in enumerate(lanes) if records and fence is NO_LANES]
    if unfenced and await lanes_in_use(session, _node_ids([r for i in unfenced for r in lanes[i][0]])):
        for index in unfenced:  # someone records without a fence where lanes are in use: lane by lane
            try:
                await hold(session, NO_LANES, now, node_ids=_node_ids(lanes[index][0]))
            except LaneLost as exc:
                lost[index] = exc
    recorded = await _record_sent_rows(
        session, [r for i, (records, _) in enumerate(lanes) if i not in lost for r in records], owner, now
    )
    return [
        lost[index] if index in lost else {r.vote_id for r in records if r.vote_id in recorded}
        for index, (records, _) in enumerate(lanes)
    ]


def _node_ids(records: Sequence[SentRecord]) -> Select[int]:
    return select(Vote.node_id).where(one_of(Vote.id, [r.vote_id for r in records]))


async def _record_sent_rows(
    session: AsyncSession, records: Sequence[SentRecord], owner: str, now: dt.datetime
) -> set[int]:
    """The rows' queued -> sent (one executemany) and their transactions; the vote ids recorded."""
    if not records:
        return set()
    table = cast(Table, Vote.__table__)  # Core table: a list of parameters is one executemany
    await session.execute(
        update(table)
        .where(
            table.c.id == bindparam("b_vote"),
            _state_in(table.c.state, S.SENT, [S.QUEUED]),
            table.c.lease_owner == owner,
        )
        .values(
            state=S.SENT,
            outcome=VoteOutcome.SENT,
            decision=bindparam("b_decision"),
            confidence=bindparam("b_confidence"),
            reason=bindparam("b_reason"),
            price=bindparam("b_price"),
            value=bindparam("b_value"),
            decided_at=now,
            tx_hash=bindparam("b_tx"),
            nonce=bindparam("b_nonce"),
            max_fee_per_gas=bindparam("b_max_fee"),
            max_priority_fee_per_gas=bindparam("b_priority_fee"),
            attempts=table.c.attempts + 1,
            sent_at=now,
            last_error=None,
            lease_owner=None,
            lease_expires_at=None,
        ),
        [
            {
                "b_vote": r.vote_id,
                "b_decision": r.decision,
                "b_confidence": r.confidence,
                "b_reason": r.reason,
                "b_price": r.price,
                "b_value": r.value,
                "b_tx": r.tx.tx_hash,
                "b_nonce": r.tx.nonce,
                "b_max_fee": str(r.tx.max_fee_per_gas),
                "b_priority_fee": str(r.tx.max_priority_fee_per_gas),
            }
            for r in records
        ],
    )
    # Which rows this statement moved (a row that had lost its lease is not sent with this hash).
    rows = await session.execute(
        select(Vote.id, Vote.tx_hash).where(
            one_of(Vote.id, [r.vote_id for r in records]), Vote.state == S.SENT
        )
    )
    hashes = dict(rows.all())
    recorded = {r.vote_id for r in records if hashes.get(r.vote_id) == r.tx.tx_hash}
    await add_transactions(session, [(r.vote_id, r.tx) for r in records if r.vote_id in recorded])
    return recorded


async def add_transactions(session: AsyncSession, txs: Sequence[tuple[int, SignedTx]]) -> None:
    """Insert signed transactions; signing is deterministic, so a refused one signed again has the same
    hash: then the stored row is reused (its outcome reset)."""
    if not txs:
        return
    stored = await session.execute(
        select(VoteTransaction.tx_hash, VoteTransaction.vote_id).where(
            one_of(VoteTransaction.tx_hash, [tx.tx_hash for _, tx in txs])
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
class Confirmation:
    vote_id: int
    tx_hash: str
    block_number: int
    gas_used: int | None
    fee_wei: int | None = None  # gas used x effective gas price, when the receipt says


async def confirm_by_receipts(session: AsyncSession, confirmations: Sequence[Confirmation]) -> set[int]:
    """sent (or already confirmed: the listener's VoteCast handler may win) -> confirmed, each conditional;
    returns the ids this confirmed with the given hash.

    One statement for all rows (executemany), not one per row: a burst confirms hundreds of votes a second.
    """
    if not confirmations:
        return set()
    now = utcnow()
    votes = cast(Table, Vote.__table__)  # Core table: a list of parameters is a plain executemany
    await session.execute(
        update(votes)
        .where(
            votes.c.id == bindparam("b_vote"), _state_in(votes.c.state, S.CONFIRMED, [S.SENT, S.CONFIRMED])
        )
        .values(
            state=S.CONFIRMED,
            outcome=VoteOutcome.CONFIRMED,
            tx_hash=bindparam("b_tx"),
            confirmed_block=bindparam("b_block"),
            gas_used=bindparam("b_gas"),
            fee_wei=bindparam("b_fee"),
            confirmed_at=func.coalesce(votes.c.confirmed_at, now),
            last_error=None,
        ),
        [
            {
                "b_vote": c.vote_id,
                "b_tx": c.tx_hash,
                "b_block": c.block_number,
                "b_gas": c.gas_used,
                "b_fee": None if c.fee_wei is None else str(c.fee_wei),
            }
            for c in confirmations
        ],
    )
    # Which of them this statement confirmed (the write lock is held now: a consistent read).
    confirmed = await session.execute(
        select(Vote.id, Vote.tx_hash).where(
            one_of(Vote.id, [c.vote_id for c in confirmations]), Vote.state == S.CONFIRMED
        )
    )
    hashes = {vote_id: tx_hash for vote_id, tx_hash in confirmed}
    done = [c for c in confirmations if hashes.get(c.vote_id) == c.tx_hash]
    await settle_transactions(session, [(c.vote_id, c.tx_hash) for c in done], "mined")
    return {c.vote_id for c in done}


async def settle_transactions(
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


async def confirm_queued_by_own_tx(session: AsyncSession, *, owner: str, confirmation: Confirmation) -> bool:
    """queued -> confirmed, by the lease holder, when one of the vote's own earlier transactions is on chain
    (a reorg had queued it again, and the transaction was mined again). Decision and reason stay."""
    changed = await _update(
        session,
        [
            Vote.id == confirmation.vote_id,
            _state_in(Vote.state, S.CONFIRMED, [S.QUEUED]),
            Vote.lease_owner == owner,
        ],
        {
            "state": S.CONFIRMED,
            "outcome": VoteOutcome.CONFIRMED_OWN_TX,
            "tx_hash": confirmation.tx_hash,
            "confirmed_block": confirmation.block_number,
            "gas_used": confirmation.gas_used,
            "fee_wei": None if confirmation.fee_wei is None else str(confirmation.fee_wei),
            "confirmed_at": utcnow(),
            "last_error": None,
            "lease_owner": None,
            "lease_expires_at": None,
        },
    )
    if changed != 1:
        return False
    await settle_transactions(session, [(confirmation.vote_id, confirmation.tx_hash)], "mined")
    return True


async def mark_failed(
    session: AsyncSession,
    vote_id: int,
    *,
    reason: str,
    tx_hash: str | None = None,
    block_number: int | None = None,
    gas_used: int | None = None,
) -> bool:
    """sent -> failed: mined with status 0 (reverted), or refused for good. `reason` names the error."""
    values: dict[str, Any] = {
        "state": S.FAILED,
        "outcome": VoteOutcome.REVERTED if tx_hash is not None else VoteOutcome.REFUSED,
        "last_error": reason,
    }
    if tx_hash is not None:
        values.update(tx_hash=tx_hash, confirmed_block=block_number, gas_used=gas_used)
    if await _update(session, [Vote.id == vote_id, _state_in(Vote.state, S.FAILED, [S.SENT])], values) != 1:
        return False
    if tx_hash is not None:
        await settle_transactions(session, [(vote_id, tx_hash)], "failed")
    return True


# The outcome of a sent row resolved without a receipt, by its new state.
RESOLVED_OUTCOMES: Mapping[VoteState, VoteOutcome] = {
    S.QUEUED: VoteOutcome.REQUEUED,
    S.PENDING: VoteOutcome.REQUEUED,
    S.ALREADY_VOTED: VoteOutcome.ALREADY_VOTED,
}


async def resolve_sent(
    session: AsyncSession,
    vote_id: int,
    *,
    state: VoteState,
    reason: str,
    deferred_owner: str,
    tx_outcome: str | None = None,
    defer_until: dt.datetime | None = None,
    only_if_tx_in: Collection[str] | None = None,
    outcome: VoteOutcome | None = None,
) -> bool:
    """sent -> queued / pending (not cast; sent again, once the proposal is on the canonical chain for
    pending), or -> already_voted. See storage.queue.resolve_sent."""
    if state not in RESOLVED_OUTCOMES:  # confirmed / failed come with their receipt
        raise IllegalTransition(f"a sent vote resolved without a receipt cannot become {state}")
    values: dict[str, Any] = {
        "state": state,
        "outcome": outcome or RESOLVED_OUTCOMES[state],
        "last_error": reason,
    }
    if state in (S.QUEUED, S.PENDING):
        values.update(
            tx_hash=None,
            nonce=None,
            lease_owner=deferred_owner if defer_until else None,
            lease_expires_at=defer_until,
        )
    else:
        values["reason"] = reason
    condition = [Vote.id == vote_id, _state_in(Vote.state, state, [S.SENT])]
    if only_if_tx_in is not None:
        condition.append(one_of(Vote.tx_hash, only_if_tx_in))
    if await _update(session, condition, values) != 1:
        return False
    if tx_outcome is not None:
        await session.execute(
            update(VoteTransaction)
            .where(VoteTransaction.vote_id == vote_id, VoteTransaction.outcome.is_(None))
            .values(outcome=tx_outcome)
        )
    return True


async def reopen_confirmed(
    session: AsyncSession, *, vote_ids: Sequence[int], tx_hashes: Sequence[str], reason: str
) -> int:
    """confirmed -> sent, for votes whose transaction a reorg removed: the voter then resolves them from the
    chain (receipt again, rebroadcast from the stored bytes, or back to the queue)."""
    match = or_(one_of(Vote.id, vote_ids), one_of(Vote.tx_hash, tx_hashes))
    ids = list((await session.execute(select(Vote.id).where(match, Vote.state == S.CONFIRMED))).scalars())
    if not ids:
        return 0
    count = await _update(
        session,
        [one_of(Vote.id, ids), _state_in(Vote.state, S.SENT, [S.CONFIRMED])],
        {
            "state": S.SENT,
            "outcome": VoteOutcome.CONFIRMATION_REORGED,
            "confirmed_block": None,
            "gas_used": None,
            "fee_wei": None,
            "confirmed_at": None,
            "last_error": reason,
        },
    )
    await session.execute(
        update(VoteTransaction)
        .where(one_of(VoteTransaction.vote_id, ids), VoteTransaction.outcome.in_(["mined", "replaced"]))
        .values(outcome=None)
    )
    return count


# -- the listener: confirmations, closing events, reorgs --------------------------------------------------


async def queue_deep_pending(session: AsyncSession, proposal_refs: Any) -> int:
    """pending -> queued for the rows of these proposals (ids, or a subquery of them): deep enough now."""
    now = utcnow()
    return await _update(
        session,
        [_state_in(Vote.state, S.QUEUED, [S.PENDING]), one_of(Vote.proposal_ref, proposal_refs)],
        {"state": S.QUEUED, "outcome": VoteOutcome.DEEP_ENOUGH, "queued_at": now, "updated_at": now},
    )


async def forget_pending_decisions(session: AsyncSession, proposal_row_id: int) -> None:
    """Pending rows of a proposal whose content changed keep no decision made on the old content."""
    await _update(
        session,
        [Vote.proposal_ref == proposal_row_id, Vote.state == S.PENDING],
        {
            "decision": None,
            "confidence": None,
            "reason": None,
            "decided_at": None,
            "price": None,
            "value": None,
        },
    )


CONTENT_CHANGED_REASON = "proposal content changed on chain (reorg); decided again"


async def decide_again(session: AsyncSession, proposal_row_id: int) -> None:
    """queued / no_vote -> queued, decision dropped: a reorg put other content under the proposal id."""
    await _update(
        session,
        [Vote.proposal_ref == proposal_row_id, _state_in(Vote.state, S.QUEUED, [S.QUEUED, S.NO_VOTE])],
        {
            "state": S.QUEUED,
            "outcome": VoteOutcome.CONTENT_CHANGED,
            "decision": None,
            "price": None,
            "value": None,
            "confidence": None,
            "reason": None,
            "decided_at": None,
            "last_error": CONTENT_CHANGED_REASON,
        },
    )


@dataclass(frozen=True)
class LogConfirmation:
    """Our node's VoteCast log for the vote row of (proposal row, node)."""

    proposal_row_id: int
    node_id: int
    tx_hash: str
    block: int


async def confirm_by_logs(session: AsyncSession, logs: Sequence[LogConfirmation]) -> set[tuple[int, int]]:
    """Our nodes' VoteCast logs: each row -> confirmed from any state but no_vote (that keeps the strategy's
    recorded decision: a VoteCast there means someone else used the key) and the final ones. One SELECT and
    one executemany UPDATE (a burst brings hundreds of our VoteCast logs at once); returns the (proposal
    row, node) pairs this confirmed. The UPDATE stays conditional on the state, so a row another writer
    moved meanwhile is left alone."""
    if not logs:
        return set()
    among = [S.PENDING, S.QUEUED, S.SENT, S.FAILED, S.CLOSED]
    refs = sorted({c.proposal_row_id for c in logs})
    rows = await session.execute(
        select(Vote.id, Vote.proposal_ref, Vote.node_id).where(
            one_of(Vote.proposal_ref, refs), _state_in(Vote.state, S.CONFIRMED, among)
        )
    )
    vote_ids = {(ref, node): vote_id for vote_id, ref, node in rows.all()}
    chosen = {(c.proposal_row_id, c.node_id): c for c in logs if (c.proposal_row_id, c.node_id) in vote_ids}
    if not chosen:
        return set()
    now = utcnow()
    table = cast(Table, Vote.__table__)
    await session.execute(
        update(table)
        .where(table.c.id == bindparam("b_vote"), _state_in(table.c.state, S.CONFIRMED, among))
        .values(
            state=S.CONFIRMED,
            outcome=VoteOutcome.CONFIRMED_BY_LOG,
            confirmed_block=bindparam("b_block"),
            confirmed_at=now,
            updated_at=now,
            tx_hash=func.coalesce(table.c.tx_hash, bindparam("b_tx")),
            lease_owner=None,
            lease_expires_at=None,
        ),
        [{"b_vote": vote_ids[key], "b_block": c.block, "b_tx": c.tx_hash} for key, c in chosen.items()],
    )
    return set(chosen)


# The start of the last_error (text for people) of votes a closing log closed; code tells them by their
# outcome, VoteOutcome.CLOSED_BY_EVENT.
CLOSED_BY_EVENT = "closed on chain by "


async def close_by_event(session: AsyncSession, proposal_row_id: int, event: str) -> int:
    """ProposalCanceled / ProposalExecuted: pending / queued rows (not yet sent) -> closed."""
    return await _update(
        session,
        [Vote.proposal_ref == proposal_row_id, _state_in(Vote.state, S.CLOSED, [S.PENDING, S.QUEUED])],
        {
            "state": S.CLOSED,
            "outcome": VoteOutcome.CLOSED_BY_EVENT,
            "updated_at": utcnow(),
            "last_error": f"{CLOSED_BY_EVENT}{event} before our vote was sent",
        },
    )


PARKED_REASON = "the proposal's block left the chain in a reorg; waiting for it on the canonical chain"
REOPENED_REASON = "the event that closed the proposal left the chain in a reorg"


async def park(session: AsyncSession, proposal_row_ids: Sequence[int]) -> int:
    """queued -> pending: the proposal's block left the chain; queued again when its log is seen again."""
    return await _update(
        session,
        [one_of(Vote.proposal_ref, proposal_row_ids), _state_in(Vote.state, S.PENDING, [S.QUEUED])],
        {
            "state": S.PENDING,
            "outcome": VoteOutcome.PARKED_BY_REORG,
            "last_error": PARKED_REASON,
            "updated_at": utcnow(),
        },
    )


async def reopen_closed_by_event(
    session: AsyncSession, proposal_row_ids: Sequence[int], state: VoteState
) -> int:
    """closed -> `state` (queued, or pending when the proposal is parked) for rows a closing log closed, now
    that the log left the chain. Rows closed for other reasons stay closed."""
    return await _update(
        session,
        [
            one_of(Vote.proposal_ref, proposal_row_ids),
            _state_in(Vote.state, state, [S.CLOSED]),
            Vote.outcome == VoteOutcome.CLOSED_BY_EVENT,
        ],
        {
            "state": state,
            "outcome": VoteOutcome.REOPENED_AFTER_REORG,
            "last_error": REOPENED_REASON,
            "updated_at": utcnow(),
        },
    )


REOPENED_AFTER_REORG = (
    "the proposal was created again after a reorg; the vote that reverted on its absence is owed"
)


async def reopen_not_found(
    session: AsyncSession, proposal_row_id: int, *, state: VoteState, content_changed: bool
) -> int:
    """failed -> `state` for rows whose transaction reverted with ProposalNotFound (mined while a reorg had
    taken the proposal away): owed once the proposal is on the canonical chain again. The voter reads
    hasVoted before signing; a changed content drops the old decision."""
    now = utcnow()
    values: dict[str, Any] = {
        "state": state,
        "outcome": VoteOutcome.REOPENED_AFTER_REORG,
        "last_error": REOPENED_AFTER_REORG,
        "confirmed_block": None,
        "queued_at": now,
        "updated_at": now,
    }
    if content_changed:
        values.update(decision=None, confidence=None, reason=None, decided_at=None, price=None, value=None)
    return await _update(
        session,
        [
            Vote.proposal_ref == proposal_row_id,
            _state_in(Vote.state, state, [S.FAILED]),
            Vote.outcome == VoteOutcome.PROPOSAL_NOT_FOUND,
        ],
        values,
    )


async def requeue_orphaned(session: AsyncSession, vote_id: int, *, parked: bool, reason: str) -> bool:
    """confirmed -> queued (pending when its proposal is parked): its transaction left the chain."""
    state = S.PENDING if parked else S.QUEUED
    return (
        await _update(
            session,
            [Vote.id == vote_id, _state_in(Vote.state, state, [S.CONFIRMED])],
            {
                "state": state,
                "outcome": VoteOutcome.CONFIRMATION_REORGED,
                "confirmed_block": None,
                "confirmed_at": None,
                "last_error": reason,
                "updated_at": utcnow(),
            },
        )
        > 0
    )


async def move_confirmation(session: AsyncSession, vote_id: int, block: int) -> bool:
    """confirmed -> confirmed in another block: the transaction is still on the chain after the reorg."""
    return (
        await _update(
            session,
            [Vote.id == vote_id, _state_in(Vote.state, S.CONFIRMED, [S.CONFIRMED])],
            {"confirmed_block": block, "updated_at": utcnow()},
        )
        > 0
    )


# -- the reconcile pass ------------------------------------------------------------------------------------


def _reconcile_outcome(to_state: VoteState, from_confirmed: bool) -> VoteOutcome:
    if from_confirmed:
        return VoteOutcome.CONFIRMATION_REORGED
    return {
        S.CLOSED: VoteOutcome.CLOSED,
        S.ALREADY_VOTED: VoteOutcome.ALREADY_VOTED,
        S.QUEUED: VoteOutcome.DEEP_ENOUGH,
    }.get(to_state, VoteOutcome.REQUEUED)


async def apply_reconcile_fix(
    session: AsyncSession, vote_id: int, *, from_states: Sequence[VoteState], to_state: VoteState, reason: str
) -> bool:
    """A change the reconcile pass read from the chain (listener/reconcile_plan.py::plan_vote_fixes). Rows we
    sent a transaction for stay the voter's, except a confirmation the chain no longer has."""
    from_confirmed = S.CONFIRMED in from_states
    values: dict[str, Any] = {
        "state": to_state,
        "outcome": _reconcile_outcome(to_state, from_confirmed),
        "last_error": reason,
        "updated_at": utcnow(),
    }
    if from_confirmed:
        values.update(confirmed_block=None, confirmed_at=None)
    condition = [Vote.id == vote_id, _state_in(Vote.state, to_state, from_states)]
    if not from_confirmed:
        condition.append(Vote.tx_hash.is_(None))
    return await _update(session, condition, values) == 1


async def confirm_by_reconcile(session: AsyncSession, confirmation: Confirmation) -> bool:
    """sent -> confirmed: the reconcile pass found the transaction mined with success."""
    changed = await _update(
        session,
        [Vote.id == confirmation.vote_id, _state_in(Vote.state, S.CONFIRMED, [S.SENT])],
        {
            "state": S.CONFIRMED,
            "outcome": VoteOutcome.CONFIRMED_BY_RECONCILE,
            "tx_hash": confirmation.tx_hash,
            "confirmed_at": utcnow(),
            "confirmed_block": confirmation.block_number,
            "gas_used": confirmation.gas_used,
            "fee_wei": None if confirmation.fee_wei is None else str(confirmation.fee_wei),
            "lease_owner": None,
            "lease_expires_at": None,
        },
    )
    if changed != 1:
        return False
    await session.execute(
        update(VoteTransaction)
        .where(
            VoteTransaction.vote_id == confirmation.vote_id, VoteTransaction.tx_hash == confirmation.tx_hash
        )
        .values(outcome="mined")
    )
    return True

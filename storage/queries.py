"""Read-only queries behind the HTTP API and `dloop status`. Portable SQL through SQLAlchemy Core.

Every function opens one short read session; results are plain frozen dataclasses, never ORM rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, event, func, select, text
from sqlalchemy.engine import Connection, ExecutionContext
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.expression import UpdateBase

from dloop.errors import StorageError
from storage.engine import SessionFactory
from storage.models import OPEN_VOTE_STATES, Node, Proposal, Vote, VoteState, VoteTransaction


@dataclass(frozen=True)
class TransactionView:
    tx_hash: str
    nonce: int
    max_fee_per_gas: str
    max_priority_fee_per_gas: str
    gas_limit: int
    created_at: dt.datetime
    outcome: str | None


@dataclass(frozen=True)
class VoteView:
    vote_id: int
    proposal_id: int
    node_name: str
    node_address: str
    state: str
    decision: str | None
    confidence: float | None
    reason: str | None
    tx_hash: str | None
    nonce: int | None
    attempts: int
    last_error: str | None
    queued_at: dt.datetime
    decided_at: dt.datetime | None
    sent_at: dt.datetime | None
    confirmed_at: dt.datetime | None
    confirmed_block: int | None
    gas_used: int | None
    transactions: tuple[TransactionView, ...] = ()


@dataclass(frozen=True)
class ProposalView:
    proposal_id: int
    proposal_type: int
    proposal_type_name: str
    asset_address: str
    asset_symbol: str | None
    asset_decimals: int | None
    amount: str
    amount_units: str | None
    description: str
    proposer: str
    created_at: dt.datetime
    voting_ends_at: dt.datetime
    status: int
    status_name: str
    executed: bool
    yes_votes: str
    no_votes: str
    first_seen_at: dt.datetime
    source: str
    block_number: int | None
    tx_hash: str | None
    read_error: str | None
    votes: tuple[VoteView, ...]


@dataclass(frozen=True)
class NodeVoteStats:
    node_id: int
    name: str
    address: str
    strategy: str
    by_state: dict[str, int]
    last_vote_at: dt.datetime | None

    @property
    def cast(self) -> int:
        return self.by_state.get(VoteState.CONFIRMED, 0)

    @property
    def pending(self) -> int:
        return sum(self.by_state.get(s, 0) for s in OPEN_VOTE_STATES)

    @property
    def failed(self) -> int:
        return self.by_state.get(VoteState.FAILED, 0)


@dataclass(frozen=True)
class VotePage:
    items: tuple[VoteView, ...]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class VoteLatency:
    """Seconds from the proposal event being recorded (vote row queued) to the vote being sent / mined."""

    to_sent: float | None
    to_mined: float | None


@dataclass(frozen=True)
class ContractScope:
    """The chain and contract the service votes on: the API never mixes in rows of another deployment."""

    chain_id: int
    contract: str


async def check_database(sessions: SessionFactory) -> None:
    """A trivial round trip, for /health."""
    try:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StorageError(f"database unreachable: {type(exc).__name__}") from exc


def _vote_select() -> Select[Vote, Node, Proposal]:
    return (
        select(Vote, Node, Proposal)
        .join(Node, Vote.node_id == Node.id)
        .join(Proposal, Vote.proposal_ref == Proposal.id)
    )


def _vote_view(vote: Vote, node: Node, proposal: Proposal, txs: Sequence[VoteTransaction] = ()) -> VoteView:
    return VoteView(
        vote_id=vote.id,
        proposal_id=proposal.proposal_id,
        node_name=node.name,
        node_address=node.address,
        state=vote.state,
        decision=vote.decision,
        confidence=vote.confidence,
        reason=vote.reason,
        tx_hash=vote.tx_hash,
        nonce=vote.nonce,
        attempts=vote.attempts,
        last_error=vote.last_error,
        queued_at=vote.queued_at,
        decided_at=vote.decided_at,
        sent_at=vote.sent_at,
        confirmed_at=vote.confirmed_at,
        confirmed_block=vote.confirmed_block,
        gas_used=vote.gas_used,
        transactions=tuple(
            TransactionView(
                tx_hash=t.tx_hash,
                nonce=t.nonce,
                max_fee_per_gas=t.max_fee_per_gas,
                max_priority_fee_per_gas=t.max_priority_fee_per_gas,
                gas_limit=t.gas_limit,
                created_at=t.created_at,
                outcome=t.outcome,
            )
            for t in txs
        ),
    )


def _proposal_view(row: Proposal, votes: Sequence[VoteView]) -> ProposalView:
    return ProposalView(
        proposal_id=row.proposal_id,
        proposal_type=row.proposal_type,
        proposal_type_name=row.proposal_type_name,
        asset_address=row.asset_address,
        asset_symbol=row.asset_symbol,
        asset_decimals=row.asset_decimals,
        amount=row.amount,
        amount_units=row.amount_units,
        description=row.description,
        proposer=row.proposer,
        created_at=row.created_at,
        voting_ends_at=row.voting_ends_at,
        status=row.status,
        status_name=row.status_name,
        executed=row.executed,
        yes_votes=row.yes_votes,
        no_votes=row.no_votes,
        first_seen_at=row.first_seen_at,
        source=row.source,
        block_number=row.block_number,
        tx_hash=row.tx_hash,
        read_error=row.read_error,
        votes=tuple(votes),
    )


# Columns of /active-proposals, in the order web.present reads them: no ORM objects, no per-row mapping.
ACTIVE_PROPOSAL_COLUMNS = (
    Proposal.id,
    Proposal.proposal_id,
    Proposal.proposer,
    Proposal.description,
    Proposal.proposal_type,
    Proposal.proposal_type_name,
    Proposal.asset_address,
    Proposal.asset_symbol,
    Proposal.amount,
    Proposal.amount_units,
    Proposal.yes_votes,
    Proposal.no_votes,
    Proposal.voting_ends_at,
    Proposal.status,
    Proposal.status_name,
    Proposal.executed,
)
ACTIVE_VOTE_COLUMNS = (
    Vote.proposal_ref,
    Node.name,
    Vote.state,
    Vote.decision,
    Vote.confidence,
    Vote.reason,
    Vote.tx_hash,
)


@dataclass(frozen=True)
class ActiveProposalRows:
    """Plain rows: `proposals` in ACTIVE_PROPOSAL_COLUMNS order (by proposal id), `votes` in
    ACTIVE_VOTE_COLUMNS order (by proposal row id, then node name)."""

    proposals: Sequence[tuple[Any, ...]]
    votes: Sequence[tuple[Any, ...]]


async def active_proposal_rows(
    sessions: SessionFactory, scope: ContractScope, *, ends_at_or_after: dt.datetime
) -> ActiveProposalRows:
    """Proposals with status Active whose voting ends at or after the given chain time, and their votes.

    One read transaction, two column selects (the same filter joined for the votes, no IN list).
    """
    open_in_scope = (
        Proposal.chain_id == scope.chain_id,
        Proposal.contract == scope.contract,
        Proposal.status == 1,
        Proposal.voting_ends_at >= ends_at_or_after,
    )
    try:
        async with sessions() as session:
            proposals = (
                await session.execute(
                    select(*ACTIVE_PROPOSAL_COLUMNS).where(*open_in_scope).order_by(Proposal.proposal_id)
                )
            ).all()
            votes = (
                await session.execute(
                    select(*ACTIVE_VOTE_COLUMNS)
                    .join(Node, Vote.node_id == Node.id)
                    .join(Proposal, Vote.proposal_ref == Proposal.id)
                    .where(*open_in_scope)
                    .order_by(Vote.proposal_ref, Node.name)
                )
            ).all()
    except SQLAlchemyError as exc:
        raise StorageError(f"reading active proposals failed: {type(exc).__name__}") from exc
    return ActiveProposalRows(proposals, votes)


async def proposal_detail(
    sessions: SessionFactory, scope: ContractScope, proposal_id: int
) -> ProposalView | None:
    """One proposal with every node's vote and every transaction signed for it."""
    async with sessions() as session:
        row = (
            await session.execute(
                select(Proposal).where(
                    Proposal.chain_id == scope.chain_id,
                    Proposal.contract == scope.contract,
                    Proposal.proposal_id == proposal_id,
                )
            )
        ).scalar_one_or_none()
        if row is None:
            return None
        vote_rows = (
            await session.execute(_vote_select().where(Vote.proposal_ref == row.id).order_by(Node.name))
        ).all()
        vote_rows_list = list(vote_rows)
        vote_ids = [vote.id for vote, _node, _proposal in vote_rows_list]
        txs: dict[int, list[VoteTransaction]] = {vote_id: [] for vote_id in vote_ids}
        if vote_ids:
            for tx in (
                await session.execute(
                    select(VoteTransaction)
                    .where(VoteTransaction.vote_id.in_(vote_ids))
                    .order_by(VoteTransaction.vote_id, VoteTransaction.id)
                )
            ).scalars():
                txs[tx.vote_id].append(tx)
        views = [_vote_view(vote, node, proposal, txs[vote.id]) for vote, node, proposal in vote_rows_list]
        return _proposal_view(row, views)


async def list_votes(
    sessions: SessionFactory,
    scope: ContractScope,
    *,
    node: str | None = None,
    proposal_id: int | None = None,
    state: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> VotePage:
    """Vote history, newest first, filtered by node name, proposal id and state."""
    conditions = [Proposal.chain_id == scope.chain_id, Proposal.contract == scope.contract]
    if node is not None:
        conditions.append(Node.name == node)
    if proposal_id is not None:
        conditions.append(Proposal.proposal_id == proposal_id)
    if state is not None:
        conditions.append(Vote.state == state)
    async with sessions() as session:
        total = (
            await session.execute(
                select(func.count())
                .select_from(Vote)
                .join(Node, Vote.node_id == Node.id)
                .join(Proposal, Vote.proposal_ref == Proposal.id)
                .where(*conditions)
            )
        ).scalar_one()
        rows = await session.execute(
            _vote_select()
            .where(*conditions)
            .order_by(Proposal.proposal_id.desc(), Node.name)
            .limit(limit)
            .offset(offset)
        )
        items = tuple(_vote_view(vote, n, p) for vote, n, p in rows)
    return VotePage(items, int(total), limit, offset)


async def node_vote_stats(sessions: SessionFactory, scope: ContractScope) -> list[NodeVoteStats]:
    """Every node with its vote counts by state and its last vote time (sent or mined)."""
    async with sessions() as session:
        nodes = (await session.execute(select(Node).order_by(Node.name))).scalars().all()
        counts = await session.execute(
            select(
                Vote.node_id, Vote.state, func.count(), func.max(Vote.sent_at), func.max(Vote.confirmed_at)
            )
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(Proposal.chain_id == scope.chain_id, Proposal.contract == scope.contract)
            .group_by(Vote.node_id, Vote.state)
        )
        by_node: dict[int, dict[str, int]] = {n.id: {} for n in nodes}
        last: dict[int, dt.datetime | None] = {n.id: None for n in nodes}
        for node_id, state, count, sent_at, confirmed_at in counts:
            by_node.setdefault(node_id, {})[state] = int(count)
            for moment in (sent_at, confirmed_at):
                if moment is not None:
                    # Aggregates bypass the column type: make them aware UTC like the ORM values.
                    aware = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment
                    current = last.get(node_id)
                    last[node_id] = aware if current is None or aware > current else current
    return [
        NodeVoteStats(n.id, n.name, n.address, n.strategy, by_node.get(n.id, {}), last.get(n.id))
        for n in nodes
    ]


async def vote_counts(sessions: SessionFactory, scope: ContractScope) -> dict[tuple[str, str], int]:
    """(node name, state) -> number of vote rows."""
    async with sessions() as session:
        rows = await session.execute(
            select(Node.name, Vote.state, func.count())
            .join(Node, Vote.node_id == Node.id)
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(Proposal.chain_id == scope.chain_id, Proposal.contract == scope.contract)
            .group_by(Node.name, Vote.state)
        )
        return {(name, state): int(count) for name, state, count in rows}


async def proposal_counts(
    sessions: SessionFactory, scope: ContractScope, *, now: dt.datetime
) -> dict[str, int]:
    """Known proposals in total and open for voting at `now`."""
    async with sessions() as session:
        base = (
            select(func.count())
            .select_from(Proposal)
            .where(Proposal.chain_id == scope.chain_id, Proposal.contract == scope.contract)
        )
        total = (await session.execute(base)).scalar_one()
        active = (
            await session.execute(base.where(Proposal.status == 1, Proposal.voting_ends_at >= now))
        ).scalar_one()
        highest = (
            await session.execute(
                select(func.max(Proposal.proposal_id)).where(
                    Proposal.chain_id == scope.chain_id, Proposal.contract == scope.contract
                )
            )
        ).scalar_one()
    return {"total": int(total), "active": int(active), "highest_id": int(highest or 0)}


async def vote_latencies(sessions: SessionFactory, scope: ContractScope) -> list[VoteLatency]:
    """Event-to-sent and event-to-mined durations of every vote this service sent."""
    async with sessions() as session:
        rows = await session.execute(
            select(Vote.queued_at, Vote.sent_at, Vote.confirmed_at)
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(
                Proposal.chain_id == scope.chain_id,
                Proposal.contract == scope.contract,
                Vote.sent_at.is_not(None),
            )
        )
        latencies = []
        for queued_at, sent_at, confirmed_at in rows:
            to_sent = (sent_at - queued_at).total_seconds() if sent_at is not None else None
            to_mined = (
                (confirmed_at - queued_at).total_seconds()
                if confirmed_at is not None and sent_at is not None
                else None
            )
            latencies.append(VoteLatency(to_sent, to_mined))
        return latencies


# -- a version of the data the API shows, for caching answers ---------------------------------------------

SHOWN_TABLES = frozenset({Proposal.__tablename__, Vote.__tablename__, Node.__tablename__})
_READ_PREFIXES = ("SELECT", "PRAGMA", "SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "COMMIT")
_DIRTY = "dloop_wrote_shown_tables"


def writes_shown_tables(statement: str, dml: object, tables: frozenset[str] = SHOWN_TABLES) -> bool:
    """Whether an executed statement may change rows of `tables`. A Core/ORM INSERT, UPDATE or DELETE names
    its table; any other statement that is not plainly a read (text SQL, DDL) counts as a write."""
    if isinstance(dml, UpdateBase):
        name = getattr(dml.table, "name", None)
        return name is None or name in tables
    return not statement.lstrip().upper().startswith(_READ_PREFIXES)


class DataVersion:
    """A counter of committed writes to proposals, votes and nodes through one engine, in this process.

    A write marks its pooled connection; the counter moves when that connection goes back to the pool, which
    is after its transaction committed (or rolled back). So a reader that saw version v before reading the
    database either read the write's data or will see v+1 next time: an answer cached under v is never
    stale for this process's writes. Writes by other processes are not seen: callers bound their cache's age.
    """

    def __init__(self) -> None:
        self.value = 0
        self.watching = False
        self._unwatch: Callable[[], None] | None = None

    def watch(self, engine: AsyncEngine) -> None:
        if self._unwatch is not None:
            return
        sync_engine = engine.sync_engine

        def after_execute(
            conn: Connection,
            _cursor: object,
            statement: str,
            _parameters: object,
            context: ExecutionContext | None,
            _executemany: bool,
        ) -> None:
            compiled = context.compiled if context is not None else None
            if writes_shown_tables(statement, getattr(compiled, "statement", None)):
                conn.info[_DIRTY] = True

        def checkin(_dbapi_connection: object, record: ConnectionPoolEntry | None) -> None:
            # No record (a detached or invalidated connection): count it, a spurious bump costs one rebuild.
            if record is None or record.info.pop(_DIRTY, False):
                self.value += 1

        event.listen(sync_engine, "after_cursor_execute", after_execute)
        event.listen(sync_engine.pool, "checkin", checkin)

        def unwatch() -> None:
            event.remove(sync_engine, "after_cursor_execute", after_execute)
            event.remove(sync_engine.pool, "checkin", checkin)

        self._unwatch = unwatch
        self.watching = True

    def unwatch(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.watching = False
        self.value += 1  # answers cached while watching are no longer known to be current


def engine_of(sessions: SessionFactory) -> AsyncEngine | None:
    """The engine a session factory is bound to, if it is bound to one."""
    bind = sessions.kw.get("bind")
    return bind if isinstance(bind, AsyncEngine) else None

"""Read-only queries behind the HTTP API and `dloop status`. Portable SQL through SQLAlchemy Core.

Every function opens one short read session; results are plain frozen dataclasses, never ORM rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    event,
    false,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Connection, ExecutionContext, RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.expression import UpdateBase

from storage.engine import SessionFactory
from storage.models import OPEN_VOTE_STATES, Node, Proposal, Vote, VoteState, VoteTransaction, one_of
from storage.transactions import read

# The columns of /proposals/{id} and /votes, labelled with the field names of web.schemas.VoteOut,
# TransactionOut and ProposalOut: the web layer builds its structs from these rows by name, so each field is
# defined once (tests/test_web_units.py checks the labels against the structs).
VOTE_COLUMNS = (
    Vote.id,
    Proposal.proposal_id,
    Node.name.label("node"),
    Node.address.label("node_address"),
    Vote.state,
    Vote.decision,
    Vote.confidence,
    Vote.reason,
    Vote.price,
    Vote.value,
    Vote.tx_hash,
    Vote.nonce,
    Vote.attempts,
    Vote.last_error,
    Vote.queued_at,
    Vote.decided_at,
    Vote.sent_at,
    Vote.confirmed_at,
    Vote.confirmed_block,
    Vote.gas_used,
    Proposal.chain_id,
)
TRANSACTION_COLUMNS = (
    VoteTransaction.tx_hash,
    VoteTransaction.nonce,
    VoteTransaction.max_fee_per_gas,
    VoteTransaction.max_priority_fee_per_gas,
    VoteTransaction.gas_limit,
    VoteTransaction.created_at,
    VoteTransaction.outcome,
)
PROPOSAL_COLUMNS = (
    Proposal.proposal_id.label("id"),
    Proposal.proposer,
    Proposal.description,
    Proposal.proposal_type,
    Proposal.proposal_type_name,
    Proposal.asset_address,
    Proposal.asset_symbol,
    Proposal.asset_decimals,
    Proposal.amount,
    Proposal.amount_units,
    Proposal.yes_votes.label("votes_for"),
    Proposal.no_votes.label("votes_against"),
    Proposal.created_at,
    Proposal.voting_ends_at.label("end_time_utc"),
    Proposal.status.label("state"),
    Proposal.status_name.label("status"),
    Proposal.executed,
    Proposal.first_seen_at,
    Proposal.source,
    Proposal.block_number,
    Proposal.tx_hash,
    Proposal.read_error,
    Proposal.chain_id,
)

Record = Mapping[str, Any]  # one row by column label


@dataclass(frozen=True)
class VoteRecord:
    vote: Record  # VOTE_COLUMNS
    transactions: Sequence[Record] = ()  # TRANSACTION_COLUMNS, oldest first


@dataclass(frozen=True)
class ProposalRecord:
    proposal: Record  # PROPOSAL_COLUMNS
    votes: Sequence[VoteRecord]  # by node name


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
    items: Sequence[Record]  # VOTE_COLUMNS
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
    """One deployment's chain and contract: the API never mixes in rows of a contract it does not follow."""

    chain_id: int
    contract: str
    name: str = "default"  # the deployment's name, shown with each proposal and vote

    def where(self) -> ColumnElement[bool]:
        return and_(Proposal.chain_id == self.chain_id, Proposal.contract == self.contract)

    def deployment(self) -> ColumnElement[str]:
        return literal(self.name, String()).label("deployment")


@dataclass(frozen=True)
class Scopes:
    """Several deployments at once (the API's default: every deployment the service follows)."""

    members: tuple[ContractScope, ...]

    def where(self) -> ColumnElement[bool]:
        return or_(*(m.where() for m in self.members)) if self.members else false()

    def deployment(self) -> ColumnElement[str]:
        if len(self.members) == 1:
            return self.members[0].deployment()
        if not self.members:  # a deployment not started yet: no rows, but a valid query
            return literal("", String()).label("deployment")
        whens = [(m.where(), literal(m.name, String())) for m in self.members]
        return case(*whens, else_=literal("", String())).label("deployment")


Scope = ContractScope | Scopes


def proposal_columns(scope: Scope) -> tuple[Any, ...]:
    """PROPOSAL_COLUMNS and the deployment's name."""
    return (*PROPOSAL_COLUMNS, scope.deployment())


def vote_columns(scope: Scope) -> tuple[Any, ...]:
    """VOTE_COLUMNS and the deployment's name."""
    return (*VOTE_COLUMNS, scope.deployment())


async def check_database(sessions: SessionFactory) -> None:
    """A trivial round trip, for /health."""

    async def work(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))

    await read(sessions, work, what="database unreachable", brief=True)


def _record(mapping: RowMapping) -> Record:
    # A row's mapping iterates over its column labels, which are strings here.
    return cast(Record, mapping)


def _votes_in(scope: Scope) -> Select[*tuple[Any, ...]]:
    return (
        select(*vote_columns(scope))
        .join(Node, Vote.node_id == Node.id)
        .join(Proposal, Vote.proposal_ref == Proposal.id)
        .where(scope.where())
    )


def columns_labelled(columns: Sequence[Any], labels: Iterable[str]) -> tuple[Any, ...]:
    """The columns with these labels (a response struct's field names), in that order."""
    by_label = {column.key: column for column in columns}
    return tuple(by_label[label] for label in labels)


@dataclass(frozen=True)
class ActiveProposalRows:
    """Plain rows, each a proposal row id followed by the columns of the fields asked for: `proposals` by
    proposal id, `votes` by proposal row id then node name."""

    proposals: Sequence[tuple[Any, ...]]
    votes: Sequence[tuple[Any, ...]]


async def active_proposal_rows(
    sessions: SessionFactory,
    scope: Scope,
    *,
    ends_at_or_after: dt.datetime,
    proposal_fields: Sequence[str],
    vote_fields: Sequence[str],
) -> ActiveProposalRows:
    """Proposals with status Active whose voting ends at or after the given chain time, and their votes;
    the fields are labels of PROPOSAL_COLUMNS and VOTE_COLUMNS.

    One read transaction, two column selects (the same filter joined for the votes, no IN list).
    """
    open_in_scope = (
        scope.where(),
        Proposal.status == 1,
        Proposal.voting_ends_at >= ends_at_or_after,
    )

    async def work(session: AsyncSession) -> ActiveProposalRows:
        proposals = (
            await session.execute(
                select(Proposal.id, *columns_labelled(proposal_columns(scope), proposal_fields))
                .where(*open_in_scope)
                .order_by(Proposal.proposal_id)
            )
        ).all()
        votes = (
            await session.execute(
                select(Vote.proposal_ref, *columns_labelled(vote_columns(scope), vote_fields))
                .join(Node, Vote.node_id == Node.id)
                .join(Proposal, Vote.proposal_ref == Proposal.id)
                .where(*open_in_scope)
                .order_by(Vote.proposal_ref, Node.name)
            )
        ).all()
        return ActiveProposalRows(proposals, votes)

    return await read(sessions, work, what="reading active proposals failed", brief=True)


async def proposal_detail(sessions: SessionFactory, scope: Scope, proposal_id: int) -> ProposalRecord | None:
    """One proposal with every node's vote and every transaction signed for it."""

    async def work(session: AsyncSession) -> ProposalRecord | None:
        proposal = (
            await session.execute(
                select(*proposal_columns(scope))
                .where(scope.where(), Proposal.proposal_id == proposal_id)
                .order_by(Proposal.id)
            )
        ).first()
        if proposal is None:
            return None
        votes = (
            await session.execute(
                _votes_in(scope).where(Proposal.proposal_id == proposal_id).order_by(Node.name)
            )
        ).all()
        txs: dict[int, list[Record]] = {vote.id: [] for vote in votes}
        if txs:
            for tx in await session.execute(
                select(VoteTransaction.vote_id, *TRANSACTION_COLUMNS)
                .where(one_of(VoteTransaction.vote_id, txs))
                .order_by(VoteTransaction.vote_id, VoteTransaction.id)
            ):
                txs[tx.vote_id].append({c.key: tx._mapping[c.key] for c in TRANSACTION_COLUMNS})
        return ProposalRecord(
            _record(proposal._mapping), [VoteRecord(_record(v._mapping), txs[v.id]) for v in votes]
        )

    return await read(sessions, work, what="proposal_detail", brief=True)


async def deployments_with_proposal(sessions: SessionFactory, scope: Scope, proposal_id: int) -> list[str]:
    """The deployments that know a proposal id (one per chain and contract: the same id on two chains is two
    proposals)."""

    async def work(session: AsyncSession) -> list[str]:
        rows = await session.execute(
            select(scope.deployment()).where(scope.where(), Proposal.proposal_id == proposal_id)
        )
        # By name: the order rows were inserted in depends on which chain's listener was first.
        return sorted({str(name) for (name,) in rows})

    return await read(sessions, work, what="deployments_with_proposal", brief=True)


async def list_votes(
    sessions: SessionFactory,
    scope: Scope,
    *,
    node: str | None = None,
    proposal_id: int | None = None,
    state: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> VotePage:
    """Vote history, newest first, filtered by node name, proposal id and state."""
    conditions = [scope.where()]
    if node is not None:
        conditions.append(Node.name == node)
    if proposal_id is not None:
        conditions.append(Proposal.proposal_id == proposal_id)
    if state is not None:
        conditions.append(Vote.state == state)

    async def work(session: AsyncSession) -> VotePage:
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
            _votes_in(scope)
            .where(*conditions)
            .order_by(Proposal.proposal_id.desc(), Node.name)
            .limit(limit)
            .offset(offset)
        )
        items = [_record(row._mapping) for row in rows]
        return VotePage(items, int(total), limit, offset)

    return await read(sessions, work, what="list_votes", brief=True)


async def node_vote_stats(sessions: SessionFactory, scope: Scope) -> list[NodeVoteStats]:
    """Every node with its vote counts by state and its last vote time (sent or mined)."""

    async def work(session: AsyncSession) -> list[NodeVoteStats]:
        nodes = (await session.execute(select(Node).order_by(Node.name))).scalars().all()
        counts = await session.execute(
            select(
                Vote.node_id, Vote.state, func.count(), func.max(Vote.sent_at), func.max(Vote.confirmed_at)
            )
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(scope.where())
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

    return await read(sessions, work, what="node_vote_stats", brief=True)


async def vote_counts(sessions: SessionFactory, scope: Scope) -> dict[tuple[str, str], int]:
    """(node name, state) -> number of vote rows."""

    async def work(session: AsyncSession) -> dict[tuple[str, str], int]:
        rows = await session.execute(
            select(Node.name, Vote.state, func.count())
            .join(Node, Vote.node_id == Node.id)
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(scope.where())
            .group_by(Node.name, Vote.state)
        )
        return {(name, state): int(count) for name, state, count in rows}

    return await read(sessions, work, what="vote_counts", brief=True)


async def proposal_counts(sessions: SessionFactory, scope: Scope, *, now: dt.datetime) -> dict[str, int]:
    """Known proposals in total and open for voting at `now`."""

    async def work(session: AsyncSession) -> dict[str, int]:
        base = select(func.count()).select_from(Proposal).where(scope.where())
        total = (await session.execute(base)).scalar_one()
        active = (
            await session.execute(base.where(Proposal.status == 1, Proposal.voting_ends_at >= now))
        ).scalar_one()
        highest = (
            await session.execute(select(func.max(Proposal.proposal_id)).where(scope.where()))
        ).scalar_one()
        return {"total": int(total), "active": int(active), "highest_id": int(highest or 0)}

    return await read(sessions, work, what="proposal_counts", brief=True)


async def vote_latencies(sessions: SessionFactory, scope: Scope) -> list[VoteLatency]:
    """Event-to-sent and event-to-mined durations of every vote this service sent."""

    async def work(session: AsyncSession) -> list[VoteLatency]:
        rows = await session.execute(
            select(Vote.queued_at, Vote.sent_at, Vote.confirmed_at)
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(
                scope.where(),
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

    return await read(sessions, work, what="vote_latencies", brief=True)


async def recent_vote_times(
    sessions: SessionFactory, scope: Scope, *, since: dt.datetime, limit: int = 20_000
) -> list[tuple[dt.datetime, dt.datetime]]:
    """(queued_at, confirmed_at) of the votes mined since `since`, newest first, at most `limit`: the
    dashboard's charts (votes per hour, time from proposal to vote)."""

    async def work(session: AsyncSession) -> list[tuple[dt.datetime, dt.datetime]]:
        rows = await session.execute(
            select(Vote.queued_at, Vote.confirmed_at)
            .join(Proposal, Vote.proposal_ref == Proposal.id)
            .where(
                scope.where(),
                Vote.confirmed_at >= since,
            )
            .order_by(Vote.confirmed_at.desc())
            .limit(limit)
        )
        return [(queued, confirmed) for queued, confirmed in rows if confirmed is not None]

    return await read(sessions, work, what="recent_vote_times", brief=True)


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

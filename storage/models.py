"""Tables of the vote queue and history. Named for the people who query them with plain SQL.

Amounts and weights are uint256 on chain and do not fit an SQLite INTEGER: they are stored as exact decimal
text. Times are naive UTC datetimes, which `sqlite3` shows as readable `YYYY-MM-DD HH:MM:SS`.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, QueryableAttribute, mapped_column


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database (readable, and portable to PostgreSQL)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class VoteState(enum.StrEnum):
    PENDING = "pending"  # proposal seen, waiting for DLOOP_CONFIRMATIONS
    QUEUED = "queued"  # waiting for the voter
    SENT = "sent"  # signed, hash and nonce persisted, broadcast
    CONFIRMED = "confirmed"  # mined with status 1 (or our VoteCast seen)
    FAILED = "failed"  # mined with status 0, or a terminal error
    ALREADY_VOTED = "already_voted"  # hasVoted was true before we sent anything
    CLOSED = "closed"  # proposal no longer open for voting
    NO_VOTE = "no_vote"  # the strategy declined; the reason says why
    DRY_RUN = "dry_run"  # decided under DLOOP_DRY_RUN: decision and reason recorded, nothing signed


# Vote states that may still change through us (the queue depth; a proposal with one is read again by every
# reconcile pass).
OPEN_VOTE_STATES = (VoteState.PENDING, VoteState.QUEUED, VoteState.SENT)


class VoteOutcome(enum.StrEnum):
    """Why a vote row is in its state, for code to decide on (`last_error` is the text for people).

    Set by every state change (storage/votes.py); NULL on a row never moved since it was inserted.
    """

    SENT = "sent"  # signed and persisted before the broadcast
    CONFIRMED = "confirmed"  # our transaction's receipt, status 1
    CONFIRMED_BY_LOG = "confirmed_by_log"  # a VoteCast log of our node
    CONFIRMED_BY_RECONCILE = "confirmed_by_reconcile"  # the reconcile pass found the receipt
    CONFIRMED_OWN_TX = "confirmed_own_tx"  # queued again, but an earlier transaction of ours is on chain
    REVERTED = "reverted"  # mined with status 0
    REFUSED = "refused"  # the node refused the transaction for good
    REJECTED = "rejected"  # the contract rejects the vote (gas estimate), or the strategy raised
    ALREADY_VOTED = "already_voted"
    CLOSED = "closed"  # found closed (contract status, chain time, a revert)
    CLOSED_BY_EVENT = "closed_by_event"  # a ProposalCanceled/Executed log closed it before it was sent
    NO_VOTE = "no_vote"  # the strategy declined
    DRY_RUN = "dry_run"  # decided under DLOOP_DRY_RUN, never signed
    PROPOSAL_NOT_FOUND = "proposal_not_found"  # ProposalNotFound: a reorg took the proposal away
    REQUEUED = "requeued"  # a transaction that will never land: back in the queue
    DEEP_ENOUGH = "deep_enough"  # pending until DLOOP_CONFIRMATIONS, now queued
    PARKED_BY_REORG = "parked_by_reorg"  # the proposal's block left the chain
    REOPENED_AFTER_REORG = "reopened_after_reorg"  # what closed or failed it left the chain
    CONFIRMATION_REORGED = "confirmation_reorged"  # its confirmed transaction left the chain
    CONTENT_CHANGED = "content_changed"  # a reorg put other content under the proposal id


class ProposalSource(enum.StrEnum):
    SUBSCRIPTION = "subscription"
    BACKFILL = "backfill"
    RECONCILE = "reconcile"


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def one_of(
    column: ColumnElement[Any] | QueryableAttribute[Any], values: Iterable[Any] | Select[Any]
) -> ColumnElement[bool]:
    """`column IN (values)`, the list padded to a power of two by repeating its last value (same rows).

    An IN list renders one placeholder per value, so each length is another SQL text, and sqlite3 keeps up
    to 128 prepared statements per connection (about 100 KB each with 500 placeholders): the lists of every
    length from 1 to 1,000 that a burst brings grew a service by over 10 MB. Padded, a query has at most a
    dozen texts (and SQLAlchemy's and PostgreSQL's caches hit more often too).
    """
    if isinstance(values, Select):
        return column.in_(values)  # a subquery: one text already
    listed = list(values)
    if listed:
        listed += [listed[-1]] * ((1 << (len(listed) - 1).bit_length()) - len(listed))
    return column.in_(listed)


def core_table(model: type[Base]) -> Table:
    """A mapped class's table for Core statements (one executemany for thousands of rows, no ORM work per
    row); `__table__` is typed as any FromClause."""
    return cast(Table, model.__table__)


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(42), unique=True)
    strategy: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Proposal(Base):
    __tablename__ = "proposals"
    __table_args__ = (UniqueConstraint("chain_id", "contract", "proposal_id", name="uq_proposals_chain_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    contract: Mapped[str] = mapped_column(String(42))
    proposal_id: Mapped[int] = mapped_column(BigInteger)
    proposal_type: Mapped[int] = mapped_column(Integer)
    proposal_type_name: Mapped[str] = mapped_column(String(32))
    asset_address: Mapped[str] = mapped_column(String(42))
    asset_symbol: Mapped[str | None] = mapped_column(String(64))
    asset_decimals: Mapped[int | None] = mapped_column(Integer)
    amount: Mapped[str] = mapped_column(String(80))  # raw uint256, exact decimal text
    amount_units: Mapped[str | None] = mapped_column(String(100))  # amount / 10**decimals, exact text
    description: Mapped[str] = mapped_column(Text)
    proposer: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    voting_ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    status: Mapped[int] = mapped_column(Integer)
    status_name: Mapped[str] = mapped_column(String(32))
    executed: Mapped[bool] = mapped_column(Boolean, default=False)
    yes_votes: Mapped[str] = mapped_column(String(80), default="0")
    no_votes: Mapped[str] = mapped_column(String(80), default="0")
    content_hash: Mapped[str] = mapped_column(String(66))  # what a decision was made on (reorg check)
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    source: Mapped[str] = mapped_column(String(16))
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    block_hash: Mapped[str | None] = mapped_column(String(66))
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    log_index: Mapped[int | None] = mapped_column(Integer)
    read_error: Mapped[str | None] = mapped_column(Text)  # why the asset or proposal read was incomplete


class Vote(Base):
    """One row per proposal and node: the queue and the history in one."""

    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("proposal_ref", "node_id", name="uq_votes_proposal_ref"),
        Index("ix_votes_state_lease", "state", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    proposal_ref: Mapped[int] = mapped_column(ForeignKey("proposals.id", ondelete="CASCADE"))
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    state: Mapped[str] = mapped_column(String(16), default=VoteState.QUEUED)
    decision: Mapped[str | None] = mapped_column(String(8))  # for / against / none
    confidence: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    tx_hash: Mapped[str | None] = mapped_column(String(66))  # latest broadcast; history in vote_transactions
    nonce: Mapped[int | None] = mapped_column(BigInteger)
    max_fee_per_gas: Mapped[str | None] = mapped_column(String(40))
    max_priority_fee_per_gas: Mapped[str | None] = mapped_column(String(40))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)  # for people; code decides on `outcome`
    outcome: Mapped[str | None] = mapped_column(String(32))  # a VoteOutcome
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    queued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    confirmed_block: Mapped[int | None] = mapped_column(BigInteger)
    gas_used: Mapped[int | None] = mapped_column(BigInteger)
    fee_wei: Mapped[str | None] = mapped_column(String(40))  # ETH paid for the mined vote, exact wei text
    # The asset price the decision used (the oracle's unit per whole token, exact decimal text) and the
    # proposal's value at that price; NULL when no oracle answered (the thresholds were in token units).
    price: Mapped[str | None] = mapped_column(String(100))
    value: Mapped[str | None] = mapped_column(String(100))


class OperatorControl(Base):
    """Operator switches shared by every instance on this database: one row per scope, `*` for the whole
    service or a node's name. A row with `paused` true stops signing for its scope."""

    __tablename__ = "operator_controls"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    changed_by: Mapped[str | None] = mapped_column(String(64))  # http / cli


class VoteTransaction(Base):
    """Every signed transaction of a vote (first send, replacements), persisted before broadcast."""

    __tablename__ = "vote_transactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vote_id: Mapped[int] = mapped_column(ForeignKey("votes.id", ondelete="CASCADE"), index=True)
    tx_hash: Mapped[str] = mapped_column(String(66), unique=True)
    nonce: Mapped[int] = mapped_column(BigInteger)
    max_fee_per_gas: Mapped[str] = mapped_column(String(40))
    max_priority_fee_per_gas: Mapped[str] = mapped_column(String(40))
    gas_limit: Mapped[int] = mapped_column(BigInteger)
    raw_transaction: Mapped[str] = mapped_column(Text)  # signed bytes, to rebroadcast a dropped tx
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    outcome: Mapped[str | None] = mapped_column(String(16))  # mined / failed / replaced / dropped


class NonceFiller(Base):
    """A no-op transaction (no value, to the node itself) that used a nonce a reorg had left unused: the
    node's later votes wait behind such a gap until something uses it."""

    __tablename__ = "nonce_fillers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    nonce: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66), unique=True)
    reason: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Chain(Base):
    """A chain this database has followed, by its genesis block: a devnet restarted from scratch keeps its
    chain id but not its genesis, and its history here would describe another chain."""

    __tablename__ = "chains"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    genesis_hash: Mapped[str] = mapped_column(String(66))
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LaneLease(Base):
    """Which `dloop run` instance signs for a node (its nonce lane) on a chain: the owner renews its lease;
    `token` grows by one on every change of owner, and a signed vote is recorded only under the owner's
    current token and an unexpired lease (storage/lanes.py)."""

    __tablename__ = "lane_leases"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    address: Mapped[str] = mapped_column(String(42), primary_key=True)  # lower case
    owner: Mapped[str] = mapped_column(String(100))
    token: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    renewed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ChainCursor(Base):
    __tablename__ = "chain_cursor"

    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str | None] = mapped_column(String(66))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class RecentBlock(Base):
    """Hashes of the latest blocks of each log stream (chain and contract), to find the fork point of a
    reorg."""

    __tablename__ = "recent_blocks"

    stream: Mapped[str] = mapped_column(String(80), primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[str] = mapped_column(String(66))
    parent_hash: Mapped[str] = mapped_column(String(66))
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ChainLog(Base):
    """Every contract log processed, so a log seen twice changes nothing and reorged logs are marked."""

    __tablename__ = "chain_logs"
    __table_args__ = (
        UniqueConstraint("block_hash", "log_index", name="uq_chain_logs_block_hash"),
        Index("ix_chain_logs_stream_block", "stream", "block_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The log stream (chain and contract, chain_state.stream_name) it belongs to: block numbers and proposal
    # ids mean something only within one. NULL on rows older than several deployments and not attributable.
    stream: Mapped[str | None] = mapped_column(String(80))
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    block_hash: Mapped[str] = mapped_column(String(66))
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(32))
    proposal_id: Mapped[int | None] = mapped_column(BigInteger)
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Round(Base):
    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # manual / scheduled / startup
    state: Mapped[str] = mapped_column(String(16), default="running")  # running / done / failed
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    proposals_scanned: Mapped[int] = mapped_column(Integer, default=0)
    new_proposals: Mapped[int] = mapped_column(Integer, default=0)
    missing_votes: Mapped[int] = mapped_column(Integer, default=0)
    resolved_transactions: Mapped[int] = mapped_column(Integer, default=0)
    votes_sent: Mapped[int] = mapped_column(Integer, default=0)
    votes_confirmed: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    instance: Mapped[str | None] = mapped_column(String(100))  # the `dloop run` running it (NULL: older)


class AlertRow(Base):
    """An alert of the rules in monitor/rules.py: firing while `resolved_at` is NULL. A condition that holds
    again after it resolved is a new row with the same fingerprint (rule + subject)."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_fingerprint_resolved", "fingerprint", "resolved_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(160))
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_notified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ProposalResult(Base):
    """A proposal's outcome, recorded once its votingEnds passed: the final tally read from the contract, its
    status then, and the majority (`for`, `against`, `tie`, compared as exact integers)."""

    __tablename__ = "proposal_results"

    proposal_ref: Mapped[int] = mapped_column(
        ForeignKey("proposals.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    yes_votes: Mapped[str] = mapped_column(String(80))
    no_votes: Mapped[str] = mapped_column(String(80))
    majority: Mapped[str] = mapped_column(String(8))
    status: Mapped[int] = mapped_column(Integer)
    status_name: Mapped[str] = mapped_column(String(32))
    executed: Mapped[bool] = mapped_column(Boolean, default=False)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

"""Several deployments in one database: recent blocks and contract logs belong to a log stream

A stream is one chain and contract (`logs:<chain id>:<contract>`, the chain_cursor key). Block numbers and
proposal ids mean something only within one: without the stream, a second chain's blocks would look like a
reorg of the first and its proposal ids would meet the first's.

- recent_blocks: keyed by (stream, number). When the database followed one stream, its rows are that
  stream's. Else a run of linked blocks goes to every stream of the chain one of its hashes is known on (a
  block hash names its chain); the rest is dropped (a bounded window the listener refills from its heads).
- chain_logs: a `stream` column: the one stream's name on old rows. With several streams, where the rows
  tell: a ProposalCreated log by its proposal (block hash and log index), a VoteCast log by the vote
  transaction of ours it records, then any log in the same block as one attributed to a stream that is
  alone on its chain. Else NULL: such rows are never read.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 03:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"  # after lane leases (issue #17 landed in two branches)
branch_labels = None
depends_on = None


def _log_streams() -> list[str]:
    streams = op.get_bind().execute(sa.text("SELECT stream FROM chain_cursor")).scalars().all()
    return sorted(s for s in streams if s.startswith("logs:"))


def _single_stream() -> str | None:
    logs = _log_streams()
    return logs[0] if len(logs) == 1 else None


def _chain_of(stream: str) -> int | None:
    """`logs:<chain id>:<contract>` (chain_state.stream_name) -> the chain id."""
    parts = stream.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


_LOGS = sa.table(
    "chain_logs",
    sa.column("stream"),
    sa.column("block_hash"),
    sa.column("log_index"),
    sa.column("tx_hash"),
    sa.column("event"),
)
_PROPOSALS = sa.table(
    "proposals",
    sa.column("id"),
    sa.column("chain_id"),
    sa.column("contract"),
    sa.column("block_hash"),
    sa.column("log_index"),
)
_VOTES = sa.table("votes", sa.column("id"), sa.column("proposal_ref"))
_VOTE_TXS = sa.table("vote_transactions", sa.column("vote_id"), sa.column("tx_hash"))


def _stream_of_proposal() -> sa.ColumnElement[str]:
    """chain_state.stream_name in SQL (inline literals: asyncpg cannot type a bound string in `||`)."""
    return (
        sa.literal_column("'logs:'", sa.String)
        + sa.cast(_PROPOSALS.c.chain_id, sa.String(20))
        + sa.literal_column("':'", sa.String)
        + sa.func.lower(_PROPOSALS.c.contract)
    )


def _attribute_logs(streams: list[str]) -> None:
    """Several streams: give each old log the stream its rows prove, leave the others NULL."""
    bind = op.get_bind()
    unknown = _LOGS.c.stream.is_(None)
    created = (
        sa.select(sa.func.min(_stream_of_proposal()))
        .where(
            _PROPOSALS.c.block_hash == _LOGS.c.block_hash,
            _PROPOSALS.c.log_index == _LOGS.c.log_index,
        )
        .scalar_subquery()
    )
    bind.execute(sa.update(_LOGS).where(unknown, _LOGS.c.event == "ProposalCreated").values(stream=created))
    ours = (
        sa.select(sa.func.min(_stream_of_proposal()))
        .select_from(_VOTE_TXS)
        .join(_VOTES, _VOTES.c.id == _VOTE_TXS.c.vote_id)
        .join(_PROPOSALS, _PROPOSALS.c.id == _VOTES.c.proposal_ref)
        .where(_VOTE_TXS.c.tx_hash == _LOGS.c.tx_hash)
        .scalar_subquery()
    )
    bind.execute(sa.update(_LOGS).where(unknown, _LOGS.c.event == "VoteCast").values(stream=ours))
    # A block hash names one chain: on a chain only one stream followed, its other logs in those blocks.
    chains = [_chain_of(s) for s in streams]
    for stream, chain in zip(streams, chains, strict=True):
        if chain is not None and chains.count(chain) == 1:
            same_block = sa.select(_LOGS.c.block_hash).where(_LOGS.c.stream == stream)
            # PostgreSQL and SQLite both read the subquery before updating (no self-join trouble).
            bind.execute(
                sa.update(_LOGS)
                .where(unknown, _LOGS.c.block_hash.in_(same_block.scalar_subquery()))
                .values(stream=stream)
            )


def _known_block_chains(streams: list[str]) -> dict[str, int]:
    """Block hash -> chain id, from what the old rows tell (cursors, attributed logs, proposals)."""
    bind = op.get_bind()
    known: dict[str, int] = {}
    cursors = bind.execute(sa.text("SELECT stream, block_hash FROM chain_cursor")).all()
    logs = bind.execute(sa.select(_LOGS.c.stream, _LOGS.c.block_hash).where(_LOGS.c.stream.is_not(None)))
    for stream, block_hash in [*cursors, *logs]:
        chain = _chain_of(stream) if stream in streams else None
        if block_hash and chain is not None:
            known[block_hash] = chain
    proposals = sa.select(_PROPOSALS.c.block_hash, _PROPOSALS.c.chain_id).where(
        _PROPOSALS.c.block_hash.is_not(None)
    )
    for block_hash, chain_id in bind.execute(proposals):
        known.setdefault(block_hash, int(chain_id))
    return known


def _window_by_stream(rows: list[dict[str, object]], streams: list[str]) -> list[dict[str, object]]:
    """Several streams: each run of linked blocks (parent hash to hash) whose chain is known, for every
    stream of that chain (a block is the chain's, whichever contract's listener saw it)."""
    known = _known_block_chains(streams)
    by_hash = {str(row["hash"]): row for row in rows}
    group = {h: h for h in by_hash}  # union-find over parent links

    def root(h: str) -> str:
        while group[h] != h:
            group[h] = group[group[h]]
            h = group[h]
        return h

    for h, row in by_hash.items():
        parent = str(row["parent_hash"])
        if parent in by_hash:
            group[root(h)] = root(parent)
    chains: dict[str, set[int]] = {}
    for h in by_hash:
        if h in known:
            chains.setdefault(root(h), set()).add(known[h])
    kept: list[dict[str, object]] = []
    for h, row in by_hash.items():
        found = chains.get(root(h), set())
        if len(found) == 1:
            (chain,) = found
            kept += [{**row, "stream": s} for s in streams if _chain_of(s) == chain]
    return kept


def _recent_blocks(*, with_stream: bool) -> sa.Table:
    columns = [sa.Column("stream", sa.String(length=80), nullable=False)] if with_stream else []
    key = ["stream", "number"] if with_stream else ["number"]
    return op.create_table(
        "recent_blocks",
        *columns,
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=66), nullable=False),
        sa.Column("parent_hash", sa.String(length=66), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint(*key, name=op.f("pk_recent_blocks")),
    )


def _rows(*, with_stream: bool) -> list[dict[str, object]]:
    """The window's rows, typed (SQLite hands datetimes back as text otherwise)."""
    names = ["stream"] if with_stream else []
    old = sa.table(
        "recent_blocks",
        *(sa.column(n) for n in [*names, "number", "hash", "parent_hash"]),
        sa.column("seen_at", sa.DateTime()),
    )
    return [dict(row) for row in op.get_bind().execute(sa.select(old)).mappings()]


def upgrade() -> None:
    streams = _log_streams()
    stream = streams[0] if len(streams) == 1 else None
    bind = op.get_bind()
    op.add_column("chain_logs", sa.Column("stream", sa.String(length=80), nullable=True))
    if stream is not None:
        bind.execute(sa.text("UPDATE chain_logs SET stream = :stream"), {"stream": stream})
    elif streams:
        _attribute_logs(streams)
    op.create_index("ix_chain_logs_stream_block", "chain_logs", ["stream", "block_number"], unique=False)

    # A new key means a new table: copy the small window through Python (portable; no table rename).
    rows = _rows(with_stream=False)
    if stream is not None:
        kept = [{**row, "stream": stream} for row in rows]
    else:
        kept = _window_by_stream(rows, streams) if streams and rows else []
    op.drop_table("recent_blocks")
    table = _recent_blocks(with_stream=True)
    if kept:
        op.bulk_insert(table, kept)


def downgrade() -> None:
    op.drop_index("ix_chain_logs_stream_block", table_name="chain_logs")
    with op.batch_alter_table("chain_logs", schema=None) as batch_op:
        batch_op.drop_column("stream")
    stream = _single_stream()
    rows = _rows(with_stream=True)
    op.drop_table("recent_blocks")
    table = _recent_blocks(with_stream=False)
    kept = [{k: v for k, v in row.items() if k != "stream"} for row in rows if row["stream"] == stream]
    if kept:
        op.bulk_insert(table, kept)

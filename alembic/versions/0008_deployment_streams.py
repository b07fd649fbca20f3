"""Several deployments in one database: recent blocks and contract logs belong to a log stream

A stream is one chain and contract (`logs:<chain id>:<contract>`, the chain_cursor key). Block numbers and
proposal ids mean something only within one: without the stream, a second chain's blocks would look like a
reorg of the first and its proposal ids would meet the first's.

- recent_blocks: keyed by (stream, number). Its rows are kept when the database followed one stream, else
  dropped (a bounded window the listener refills from its next heads).
- chain_logs: a `stream` column (the one stream's name on old rows, else NULL: such rows are never read).

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


def _single_stream() -> str | None:
    streams = op.get_bind().execute(sa.text("SELECT stream FROM chain_cursor")).scalars().all()
    logs = [s for s in streams if s.startswith("logs:")]
    return logs[0] if len(logs) == 1 else None


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
    stream = _single_stream()
    bind = op.get_bind()
    # A new key means a new table: copy the small window through Python (portable; no table rename).
    rows = _rows(with_stream=False)
    op.drop_table("recent_blocks")
    table = _recent_blocks(with_stream=True)
    if stream is not None and rows:
        op.bulk_insert(table, [{**row, "stream": stream} for row in rows])

    op.add_column("chain_logs", sa.Column("stream", sa.String(length=80), nullable=True))
    if stream is not None:
        bind.execute(sa.text("UPDATE chain_logs SET stream = :stream"), {"stream": stream})
    op.create_index("ix_chain_logs_stream_block", "chain_logs", ["stream", "block_number"], unique=False)


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

"""Operator controls: pause switches shared by every instance, and the price a decision was made at

- operator_controls: one row per scope (`*` = the whole service, else a node name), `paused` stops signing.
- votes.price / votes.value: the oracle price the decision used and the proposal's value at that price
  (exact decimal text; NULL when no oracle answered), so a decision can be reproduced from the database.
- vote_history gains `price` and `value`; `dry_run` is a new vote state (a plain string column: no DDL).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The 0004 view, with price and value appended (existing columns unchanged, in their order).
_COLUMNS_0004 = """
    p.proposal_id AS proposal_id,
    p.proposal_type_name AS proposal_type,
    p.asset_symbol AS asset,
    p.amount_units AS amount,
    p.description AS description,
    n.name AS node,
    n.strategy AS strategy,
    v.decision AS decision,
    v.confidence AS confidence,
    v.reason AS reason,
    v.state AS state,
    v.tx_hash AS tx_hash,
    v.nonce AS nonce,
    v.attempts AS attempts,
    v.last_error AS last_error,
    v.queued_at AS queued_at,
    v.sent_at AS sent_at,
    v.confirmed_at AS confirmed_at,
    v.confirmed_block AS confirmed_block,
    v.outcome AS outcome"""
_FROM = """
FROM votes v
JOIN proposals p ON p.id = v.proposal_ref
JOIN nodes n ON n.id = v.node_id
"""
_HEAD = "CREATE VIEW vote_history AS\nSELECT"
VOTE_HISTORY = f"{_HEAD}{_COLUMNS_0004},\n    v.price AS price,\n    v.value AS value{_FROM}"
VOTE_HISTORY_0004 = f"{_HEAD}{_COLUMNS_0004}{_FROM}"


def upgrade() -> None:
    op.create_table(
        "operator_controls",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
        sa.Column("changed_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_operator_controls")),
    )
    op.execute("DROP VIEW IF EXISTS vote_history")
    op.add_column("votes", sa.Column("price", sa.String(length=100), nullable=True))
    op.add_column("votes", sa.Column("value", sa.String(length=100), nullable=True))
    op.execute(VOTE_HISTORY)


def downgrade() -> None:
    # The view first (SQLite refuses to drop a column a view uses); plain DROP COLUMN, no table copy.
    op.execute("DROP VIEW IF EXISTS vote_history")
    op.drop_column("votes", "value")
    op.drop_column("votes", "price")
    op.execute(VOTE_HISTORY_0004)
    op.drop_table("operator_controls")

"""votes.outcome: why a vote row is in its state, a machine-readable code (last_error stays text for people)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 00:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_VOTE_HISTORY_COLUMNS = """
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
    v.confirmed_block AS confirmed_block"""
_VOTE_HISTORY_FROM = """
FROM votes v
JOIN proposals p ON p.id = v.proposal_ref
JOIN nodes n ON n.id = v.node_id
"""
# The 0001 view with `outcome` appended (existing columns unchanged, in their order).
_HEAD = "CREATE VIEW vote_history AS\nSELECT"
VOTE_HISTORY = f"{_HEAD}{_VOTE_HISTORY_COLUMNS},\n    v.outcome AS outcome{_VOTE_HISTORY_FROM}"
VOTE_HISTORY_0001 = f"{_HEAD}{_VOTE_HISTORY_COLUMNS}{_VOTE_HISTORY_FROM}"

# Rows written before this revision: the two codes the service decides on, from the texts it matched then.
BACKFILL = (
    "UPDATE votes SET outcome = 'closed_by_event' "
    "WHERE state = 'closed' AND last_error LIKE 'closed on chain by %'",
    "UPDATE votes SET outcome = 'proposal_not_found' "
    "WHERE state = 'failed' AND last_error = 'reverted on chain: ProposalNotFound'",
)


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS vote_history")
    op.add_column("votes", sa.Column("outcome", sa.String(length=32), nullable=True))
    for statement in BACKFILL:
        op.execute(statement)
    op.execute(VOTE_HISTORY)


def downgrade() -> None:
    # The view goes first: SQLite refuses to drop a column a view uses. A plain DROP COLUMN, not a batch
    # table copy: dropping `votes` would cascade-delete its vote_transactions rows.
    op.execute("DROP VIEW IF EXISTS vote_history")
    op.drop_column("votes", "outcome")
    op.execute(VOTE_HISTORY_0001)

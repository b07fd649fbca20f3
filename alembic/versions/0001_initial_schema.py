"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-30 01:02:38.481539
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _node_votes_aggregate(dialect: str) -> str:
    # The one dialect-specific piece: string aggregation (SQLite group_concat, PostgreSQL string_agg).
    item = "n.name || '=' || COALESCE(v.decision, v.state)"
    if dialect == "postgresql":
        return f"string_agg({item}, ', ' ORDER BY n.name)"
    return f"group_concat({item}, ', ')"


VOTE_HISTORY = """
CREATE VIEW vote_history AS
SELECT
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
    v.confirmed_block AS confirmed_block
FROM votes v
JOIN proposals p ON p.id = v.proposal_ref
JOIN nodes n ON n.id = v.node_id
"""


def proposal_tally(dialect: str) -> str:
    return f"""
CREATE VIEW proposal_tally AS
SELECT
    p.proposal_id AS proposal_id,
    p.description AS description,
    p.asset_symbol AS asset,
    p.amount_units AS amount,
    p.status_name AS status,
    p.voting_ends_at AS voting_ends_at,
    SUM(CASE WHEN v.decision = 'for' THEN 1 ELSE 0 END) AS nodes_for,
    SUM(CASE WHEN v.decision = 'against' THEN 1 ELSE 0 END) AS nodes_against,
    SUM(CASE WHEN v.state = 'confirmed' THEN 1 ELSE 0 END) AS nodes_confirmed,
    SUM(CASE WHEN v.state IN ('pending', 'queued', 'sent') THEN 1 ELSE 0 END) AS nodes_pending,
    {_node_votes_aggregate(dialect)} AS node_votes,
    p.yes_votes AS onchain_yes,
    p.no_votes AS onchain_no
FROM proposals p
LEFT JOIN votes v ON v.proposal_ref = p.id
LEFT JOIN nodes n ON n.id = v.node_id
GROUP BY p.id, p.proposal_id, p.description, p.asset_symbol, p.amount_units, p.status_name,
    p.voting_ends_at, p.yes_votes, p.no_votes
"""


def upgrade() -> None:
    op.create_table(
        "chain_cursor",
        sa.Column("stream", sa.String(length=64), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(length=66), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_chain_cursor")),
    )
    op.create_table(
        "chain_logs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(length=66), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("proposal_id", sa.BigInteger(), nullable=True),
        sa.Column("removed", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_logs")),
        sa.UniqueConstraint("block_hash", "log_index", name="uq_chain_logs_block_hash"),
    )
    with op.batch_alter_table("chain_logs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_chain_logs_block_number"), ["block_number"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("strategy", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("address", name=op.f("uq_nodes_address")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
    )
    op.create_table(
        "proposals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.String(length=42), nullable=False),
        sa.Column("proposal_id", sa.BigInteger(), nullable=False),
        sa.Column("proposal_type", sa.Integer(), nullable=False),
        sa.Column("proposal_type_name", sa.String(length=32), nullable=False),
        sa.Column("asset_address", sa.String(length=42), nullable=False),
        sa.Column("asset_symbol", sa.String(length=64), nullable=True),
        sa.Column("asset_decimals", sa.Integer(), nullable=True),
        sa.Column("amount", sa.String(length=80), nullable=False),
        sa.Column("amount_units", sa.String(length=100), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("proposer", sa.String(length=42), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("voting_ends_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("status_name", sa.String(length=32), nullable=False),
        sa.Column("executed", sa.Boolean(), nullable=False),
        sa.Column("yes_votes", sa.String(length=80), nullable=False),
        sa.Column("no_votes", sa.String(length=80), nullable=False),
        sa.Column("content_hash", sa.String(length=66), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.String(length=66), nullable=True),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("log_index", sa.Integer(), nullable=True),
        sa.Column("read_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proposals")),
        sa.UniqueConstraint("chain_id", "contract", "proposal_id", name="uq_proposals_chain_id"),
    )
    op.create_table(
        "recent_blocks",
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=66), nullable=False),
        sa.Column("parent_hash", sa.String(length=66), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_recent_blocks")),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("proposals_scanned", sa.Integer(), nullable=False),
        sa.Column("new_proposals", sa.Integer(), nullable=False),
        sa.Column("missing_votes", sa.Integer(), nullable=False),
        sa.Column("resolved_transactions", sa.Integer(), nullable=False),
        sa.Column("votes_sent", sa.Integer(), nullable=False),
        sa.Column("votes_confirmed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rounds")),
    )
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("proposal_ref", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("nonce", sa.BigInteger(), nullable=True),
        sa.Column("max_fee_per_gas", sa.String(length=40), nullable=True),
        sa.Column("max_priority_fee_per_gas", sa.String(length=40), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("queued_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("confirmed_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("confirmed_block", sa.BigInteger(), nullable=True),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name=op.f("fk_votes_node_id_nodes")),
        sa.ForeignKeyConstraint(
            ["proposal_ref"],
            ["proposals.id"],
            name=op.f("fk_votes_proposal_ref_proposals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_votes")),
        sa.UniqueConstraint("proposal_ref", "node_id", name="uq_votes_proposal_ref"),
    )
    with op.batch_alter_table("votes", schema=None) as batch_op:
        batch_op.create_index("ix_votes_state_lease", ["state", "lease_expires_at"], unique=False)

    op.create_table(
        "vote_transactions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("vote_id", sa.Integer(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("max_fee_per_gas", sa.String(length=40), nullable=False),
        sa.Column("max_priority_fee_per_gas", sa.String(length=40), nullable=False),
        sa.Column("gas_limit", sa.BigInteger(), nullable=False),
        sa.Column("raw_transaction", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["vote_id"], ["votes.id"], name=op.f("fk_vote_transactions_vote_id_votes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vote_transactions")),
        sa.UniqueConstraint("tx_hash", name=op.f("uq_vote_transactions_tx_hash")),
    )
    with op.batch_alter_table("vote_transactions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_vote_transactions_vote_id"), ["vote_id"], unique=False)

    dialect = op.get_bind().dialect.name
    op.execute(VOTE_HISTORY)
    op.execute(proposal_tally(dialect))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS proposal_tally")
    op.execute("DROP VIEW IF EXISTS vote_history")
    with op.batch_alter_table("vote_transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vote_transactions_vote_id"))

    op.drop_table("vote_transactions")
    with op.batch_alter_table("votes", schema=None) as batch_op:
        batch_op.drop_index("ix_votes_state_lease")

    op.drop_table("votes")
    op.drop_table("rounds")
    op.drop_table("recent_blocks")
    op.drop_table("proposals")
    op.drop_table("nodes")
    with op.batch_alter_table("chain_logs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chain_logs_block_number"))

    op.drop_table("chain_logs")
    op.drop_table("chain_cursor")

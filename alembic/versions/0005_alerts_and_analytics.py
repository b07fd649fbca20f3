"""alerts (the alert rules' history), proposal_results (each proposal's outcome once voting ended),
votes.fee_wei (ETH paid per mined vote), and the views node_performance and proposal_outcomes

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-14 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Portable SQL (SQLite and PostgreSQL). A vote is owed unless its strategy declined (no_vote), the service ran
# in dry run (dry_run: decided, never meant to be cast), or it is still
# on its way on a proposal whose voting has not ended (no result recorded yet); see monitor/analytics.py.
NODE_PERFORMANCE = """
CREATE VIEW node_performance AS
SELECT
    n.name AS node,
    n.strategy AS strategy,
    SUM(CASE WHEN v.state IS NULL OR v.state IN ('no_vote', 'dry_run') THEN 0
             WHEN v.state IN ('pending', 'queued', 'sent') AND r.proposal_ref IS NULL THEN 0
             ELSE 1 END) AS votes_owed,
    SUM(CASE WHEN v.state IN ('confirmed', 'already_voted') THEN 1 ELSE 0 END) AS votes_cast,
    SUM(CASE WHEN v.state = 'failed' THEN 1 ELSE 0 END) AS votes_failed,
    SUM(CASE WHEN v.state = 'confirmed' THEN COALESCE(v.gas_used, 0) ELSE 0 END) AS gas_used,
    SUM(CASE WHEN v.state = 'confirmed' AND v.fee_wei IS NOT NULL
             THEN CAST(v.fee_wei AS NUMERIC) ELSE 0 END) AS eth_spent_wei,
    SUM(CASE WHEN v.state = 'confirmed' AND v.decision IN ('for', 'against')
                  AND r.majority IN ('for', 'against') THEN 1 ELSE 0 END) AS compared_with_majority,
    SUM(CASE WHEN v.state = 'confirmed' AND v.decision = r.majority THEN 1 ELSE 0 END) AS agreed_with_majority
FROM nodes n
LEFT JOIN votes v ON v.node_id = n.id
LEFT JOIN proposal_results r ON r.proposal_ref = v.proposal_ref
GROUP BY n.id, n.name, n.strategy
"""

PROPOSAL_OUTCOMES = """
CREATE VIEW proposal_outcomes AS
SELECT
    p.proposal_id AS proposal_id,
    p.proposal_type_name AS proposal_type,
    p.asset_symbol AS asset,
    p.amount_units AS amount,
    p.description AS description,
    p.created_at AS created_at,
    p.voting_ends_at AS voting_ends_at,
    r.yes_votes AS final_yes,
    r.no_votes AS final_no,
    r.majority AS majority,
    CASE WHEN r.majority = 'for' THEN 1 ELSE 0 END AS approved,
    r.status_name AS status_at_end,
    p.status_name AS status,
    p.executed AS executed,
    r.recorded_at AS recorded_at
FROM proposals p
JOIN proposal_results r ON r.proposal_ref = p.id
"""


def upgrade() -> None:
    op.add_column("votes", sa.Column("fee_wei", sa.String(length=40), nullable=True))
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=200), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=160), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("last_notified_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_fingerprint_resolved", "alerts", ["fingerprint", "resolved_at"])
    op.create_table(
        "proposal_results",
        sa.Column("proposal_ref", sa.Integer(), nullable=False),
        sa.Column("yes_votes", sa.String(length=80), nullable=False),
        sa.Column("no_votes", sa.String(length=80), nullable=False),
        sa.Column("majority", sa.String(length=8), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("status_name", sa.String(length=32), nullable=False),
        sa.Column("executed", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["proposal_ref"],
            ["proposals.id"],
            name=op.f("fk_proposal_results_proposal_ref_proposals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("proposal_ref", name=op.f("pk_proposal_results")),
    )
    op.execute(NODE_PERFORMANCE)
    op.execute(PROPOSAL_OUTCOMES)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS proposal_outcomes")
    op.execute("DROP VIEW IF EXISTS node_performance")
    op.drop_table("proposal_results")
    op.drop_index("ix_alerts_fingerprint_resolved", table_name="alerts")
    op.drop_table("alerts")
    op.drop_column("votes", "fee_wei")

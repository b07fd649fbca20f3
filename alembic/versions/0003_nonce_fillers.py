"""nonce_fillers: no-op transactions that used a nonce a reorg left unused

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nonce_fillers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.id"], name=op.f("fk_nonce_fillers_node_id_nodes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nonce_fillers")),
        sa.UniqueConstraint("tx_hash", name=op.f("uq_nonce_fillers_tx_hash")),
    )


def downgrade() -> None:
    op.drop_table("nonce_fillers")

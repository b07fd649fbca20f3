"""chains: the genesis block of each chain a database has followed

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chains",
        sa.Column("chain_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("genesis_hash", sa.String(length=66), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name=op.f("pk_chains")),
    )


def downgrade() -> None:
    op.drop_table("chains")

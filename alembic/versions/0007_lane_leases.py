"""lane_leases: which `dloop run` instance signs for each node lane (several instances on one PostgreSQL)

One row per (chain, node address): the owner, its fencing token (+1 on every change of owner) and when its
lease expires. A signed vote is recorded only under the owner's current token (storage/lanes.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 03:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lane_leases",
        sa.Column("chain_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=False),
        sa.Column("renewed_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "address", name=op.f("pk_lane_leases")),
    )


def downgrade() -> None:
    op.drop_table("lane_leases")

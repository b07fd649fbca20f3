"""rounds.instance: which `dloop run` instance runs a round (several instances on one PostgreSQL)

An instance starting up closes the rounds left `running` by a stopped one; with this it can tell a stopped
instance's round from a live other instance's (storage/rounds.py::fail_interrupted_rounds). NULL on old
rows (and on rounds of an older version): closed at start-up as before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("instance", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("instance")

"""Findings get their columns: two findings of one rule on one line are two rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add nullable ``start_column``/``end_column``: existing rows keep NULL (unknown)."""
    # Nullable columns: a plain ALTER TABLE ADD COLUMN on both backends, no table copy.
    with op.batch_alter_table("findings") as batch:
        batch.add_column(sa.Column("start_column", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("end_column", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop the two columns (SQLite copies the table; its constraints are kept)."""
    with op.batch_alter_table("findings") as batch:
        batch.drop_column("end_column")
        batch.drop_column("start_column")

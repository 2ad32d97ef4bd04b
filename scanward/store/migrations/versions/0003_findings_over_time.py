"""Findings over time: match fingerprints, tool suppressions, per-finding lifecycle
(new/existing, first seen), per-scan lifecycle counts, and operator triage.

Every added column is nullable: existing rows are kept as they are, with NULL meaning
"not known" (a scan finished before this revision has no lifecycle and is never the
baseline of a later one; its findings have no match fingerprint).

Revision ID: 0003
Revises: 0002
Create Date: 2026-06-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the columns (plain ALTER TABLE ADD COLUMN on both backends: no table copy),
    their indexes and the triage table."""
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("scanners", sa.Text(), nullable=True))
        batch.add_column(sa.Column("finished_at", _TS, nullable=True))
        batch.add_column(sa.Column("previous_scan_id", sa.String(255), nullable=True))
        batch.add_column(sa.Column("new_count", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("existing_count", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("fixed_count", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("suppressed_count", sa.Integer(), nullable=True))
    op.create_index("ix_scans_tenant_ref_finished_at", "scans",
                    ["tenant", "ref", "finished_at"])

    with op.batch_alter_table("findings") as batch:
        batch.add_column(sa.Column("match_fingerprint", sa.String(64), nullable=True))
        batch.add_column(sa.Column("suppression", sa.Text(), nullable=True))
        batch.add_column(sa.Column("state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("first_seen_scan_id", sa.String(255), nullable=True))
        batch.add_column(sa.Column("first_seen_commit", sa.String(64), nullable=True))
        batch.add_column(sa.Column("first_seen_at", _TS, nullable=True))
    op.create_index("ix_findings_match_fingerprint", "findings", ["match_fingerprint"])

    op.create_table(
        "triage",
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("match_fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("triaged_by", sa.String(255), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "repository", "match_fingerprint",
                                name="pk_triage"),
    )


def downgrade() -> None:
    """Drop what ``upgrade`` added, with ALTER TABLE DROP COLUMN (SQLite 3.35+), never by
    copying a table: SQLite's batch mode drops and recreates it, and dropping ``scans``
    would cascade (ON DELETE CASCADE) to every finding and scanner result."""
    op.drop_table("triage")
    op.drop_index("ix_findings_match_fingerprint", table_name="findings")
    for column in ("first_seen_at", "first_seen_commit", "first_seen_scan_id", "state",
                   "suppression", "match_fingerprint"):
        op.drop_column("findings", column)
    op.drop_index("ix_scans_tenant_ref_finished_at", table_name="scans")
    for column in ("suppressed_count", "fixed_count", "existing_count", "new_count",
                   "previous_scan_id", "finished_at", "scanners"):
        op.drop_column("scans", column)

"""Initial schema: scans, scanner_results, findings.

Revision ID: 0001
Revises:
Create Date: 2026-05-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the three tables and their indexes."""
    op.create_table(
        "scans",
        sa.Column("scan_id", sa.String(255), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("repository", sa.Text(), nullable=False),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("commit", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("finding_count", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("scan_id", name="pk_scans"),
    )
    op.create_index("ix_scans_tenant_created_at", "scans", ["tenant", "created_at"])
    op.create_index("ix_scans_status", "scans", ["status"])

    op.create_table(
        "scanner_results",
        sa.Column("scan_id", sa.String(255), nullable=False),
        sa.Column("scanner", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("finding_count", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("scan_id", "scanner", name="pk_scanner_results"),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.scan_id"], name="fk_scanner_results_scan_id_scans",
            ondelete="CASCADE",
        ),
    )

    op.create_table(
        "findings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("scan_id", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("scanner", sa.String(64), nullable=False),
        sa.Column("rule_id", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("start_line", sa.Integer(), nullable=True),
        sa.Column("end_line", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_findings"),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.scan_id"], name="fk_findings_scan_id_scans", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("scan_id", "fingerprint", name="uq_findings_scan_id_fingerprint"),
    )
    op.create_index("ix_findings_scan_id_severity", "findings", ["scan_id", "severity"])
    op.create_index("ix_findings_scan_id_scanner", "findings", ["scan_id", "scanner"])


def downgrade() -> None:
    """Drop everything ``upgrade`` created."""
    op.drop_table("findings")
    op.drop_table("scanner_results")
    op.drop_index("ix_scans_status", table_name="scans")
    op.drop_index("ix_scans_tenant_created_at", table_name="scans")
    op.drop_table("scans")

"""Table definitions (SQLAlchemy 2 declarative, typed).

The schema itself is created by the Alembic migrations in ``migrations/versions``;
these classes must match them (the tests compare the two).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# BIGINT on PostgreSQL; INTEGER on SQLite so that it is the rowid (autoincrement).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ScanRow(Base):
    """One scan: created by its first recorded scanner result, finalised by ``finish_scan``."""

    __tablename__ = "scans"

    scan_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    repository: Mapped[str] = mapped_column(Text)
    ref: Mapped[str] = mapped_column(String(255))
    commit: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    finding_count: Mapped[int] = mapped_column(Integer)
    summary: Mapped[str | None] = mapped_column(Text)  # ScanSummary.model_dump_json()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Since schema 0003 (findings over time); NULL for scans finished before it.
    scanners: Mapped[str | None] = mapped_column(Text)  # sorted names, comma-separated
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # first final status
    # The lifecycle, once computed: the scan compared with (NULL: none, the first) and
    # the counts (NULL: not computed, e.g. a failed scan or one finished before 0003).
    previous_scan_id: Mapped[str | None] = mapped_column(String(255))
    new_count: Mapped[int | None] = mapped_column(Integer)
    existing_count: Mapped[int | None] = mapped_column(Integer)
    fixed_count: Mapped[int | None] = mapped_column(Integer)
    suppressed_count: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index(None, "tenant", "created_at"),
        Index(None, "status"),
        Index(None, "tenant", "ref", "finished_at"),
    )


class ScannerResultRow(Base):
    """The latest recorded attempt of one scanner in one scan."""

    __tablename__ = "scanner_results"

    scan_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("scans.scan_id", ondelete="CASCADE"), primary_key=True
    )
    scanner: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    finding_count: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FindingRow(Base):
    """One distinct finding of a scan, keyed by its fingerprint."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    scan_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("scans.scan_id", ondelete="CASCADE")
    )
    fingerprint: Mapped[str] = mapped_column(String(64))
    scanner: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    start_line: Mapped[int | None] = mapped_column(Integer)
    end_line: Mapped[int | None] = mapped_column(Integer)
    # Since schema 0002; NULL for findings stored before (and when the tool gives none).
    start_column: Mapped[int | None] = mapped_column(Integer)
    end_column: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text)
    # Since schema 0003; NULL for findings stored before it.
    match_fingerprint: Mapped[str | None] = mapped_column(String(64))
    suppression: Mapped[str | None] = mapped_column(Text)  # the tool's suppression
    # Set when the scan's lifecycle is computed: "new" or "existing", and where the
    # finding was first seen (this scan for a new one, carried along otherwise).
    state: Mapped[str | None] = mapped_column(String(16))
    first_seen_scan_id: Mapped[str | None] = mapped_column(String(255))
    first_seen_commit: Mapped[str | None] = mapped_column(String(64))
    first_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("scan_id", "fingerprint"),
        Index(None, "scan_id", "severity"),
        Index(None, "scan_id", "scanner"),
        Index(None, "match_fingerprint"),
    )


class TriageRow(Base):
    """An operator's decision on a finding, by (tenant, repository, match fingerprint): it
    applies to every scan of the repository, before and after, whatever the line."""

    __tablename__ = "triage"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    repository: Mapped[str] = mapped_column(Text, primary_key=True)
    match_fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # scanward.lifecycle.TriageState
    reason: Mapped[str] = mapped_column(Text)
    triaged_by: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

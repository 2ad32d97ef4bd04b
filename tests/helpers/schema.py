"""Databases at an older schema revision, filled as that schema's code filled them: the
migration tests' common set-up (the rows each revision stored differ per test)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from scanward.store import Store, normalize_url
from scanward.store.store import alembic_config

_WHEN = "2026-01-01 00:00:00"


@contextmanager
def raw_engine(db_url: str) -> Iterator[Engine]:
    """An engine on the database, without the store (no migration), disposed after."""
    engine = create_engine(normalize_url(db_url), poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def database_at(db_url: str, revision: str) -> Iterator[Engine]:
    """The database created at schema ``revision``, and an engine to fill it."""
    with Store.open(db_url, migrate=False):
        command.upgrade(alembic_config(normalize_url(db_url)), revision)
    with raw_engine(db_url) as engine:
        yield engine


def downgrade(db_url: str, revision: str) -> None:
    command.downgrade(alembic_config(normalize_url(db_url)), revision)


def revision_of(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def insert_scan(conn: Connection, scan_id: str, *, repository: str, commit: str | None,
                status: str, finding_count: int) -> None:
    """A scans row as every revision so far stored it."""
    conn.execute(text(
        "INSERT INTO scans (scan_id, tenant, repository, ref, \"commit\", status, "
        "finding_count, summary, created_at, updated_at) VALUES (:s, 'acme', :r, 'main', "
        ":c, :status, :n, NULL, :at, :at)"),
        {"s": scan_id, "r": repository, "c": commit, "status": status, "n": finding_count,
         "at": _WHEN})


def insert_scanner_result(conn: Connection, scan_id: str, *, finding_count: int) -> None:
    """A succeeded bandit scanner_results row as every revision so far stored it."""
    conn.execute(text(
        "INSERT INTO scanner_results (scan_id, scanner, attempt, status, finding_count, "
        "updated_at) VALUES (:s, 'bandit', 1, 'succeeded', :n, :at)"),
        {"s": scan_id, "n": finding_count, "at": _WHEN})

"""Alembic environment of the scanward store.

Run programmatically by :meth:`scanward.store.Store.open`, which hands over its own
connection in ``config.attributes["connection"]``; a developer may also run the alembic
CLI with ``-c scanward/store/alembic.ini -x url=sqlite:////abs/path.db``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from scanward.store.models import Base
from scanward.store.store import SQLITE_IMMEDIATE, make_engine
from scanward.store.urls import normalize_url

# A constant key for pg_advisory_xact_lock: concurrent upgrades of one database
# (several workers starting at once) run one after the other.
MIGRATION_LOCK_KEY = 0x5CA4_3A4D

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    if connection.dialect.name == "sqlite" and not connection.in_transaction():
        # Alembic commits SQLite (no "transactional DDL" to it) after each revision, so
        # another process could apply the next one between two of ours, after we both
        # read the current revision ("duplicate column name"). One BEGIN IMMEDIATE
        # transaction around the whole upgrade (SQLite's DDL is transactional) makes
        # concurrent upgrades run one after the other; alembic sees it as external.
        connection.execution_options(**{SQLITE_IMMEDIATE: True})
        with connection.begin():
            _configure_and_run(connection)
        return
    _configure_and_run(connection)


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Upgrade through the given connection, or through a store opened on the URL."""
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set sqlalchemy.url")
    engine = make_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

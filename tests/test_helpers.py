"""The tests' own helpers, where they meet the kernel and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from psycopg.errors import InsufficientPrivilege
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from tests.helpers.pids import process_alive
from tests.postgres_fixture import drop_database


def test_process_alive_survives_a_process_that_exits_while_it_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen(["sleep", "30"])
    assert process_alive(child.pid)
    with open(f"/proc/{child.pid}/stat") as stat:
        child.kill()
        child.wait()
        # The race a CI run hit: /proc/<pid>/stat opened, the process reaped, then read.
        with pytest.raises(ProcessLookupError):
            stat.read()

    def exits_mid_read(self: Path, *args: object, **kwargs: object) -> str:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(Path, "read_text", exits_mid_read)
    assert process_alive(child.pid) is False


def test_drop_database_waits_for_a_session_its_role_may_not_end(postgres_url: str) -> None:
    """What an autovacuum worker on a new database did to one CI run: a session the
    tests' role may not end (here a superuser's, for 2 s) makes DROP ... WITH (FORCE)
    fail at once; drop_database tries again until it has ended."""
    url = make_url(postgres_url)
    if os.geteuid() != 0 or shutil.which("runuser") is None or url.host != "127.0.0.1":
        pytest.skip("needs root and the local cluster of tools/postgres.sh (as in CI) for "
                    "a superuser session")
    name = f"scanward_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))

        def hold(seconds: float) -> subprocess.Popen[bytes]:
            holder = subprocess.Popen(
                ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p", str(url.port),
                 "-d", name, "-c", f"SELECT pg_sleep({seconds})"], cwd="/")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until its session is there
                with admin.connect() as conn:
                    if conn.execute(text("SELECT count(*) FROM pg_stat_activity "
                                         "WHERE datname = :d"), {"d": name}).scalar():
                        return holder
                time.sleep(0.05)
            raise AssertionError("the superuser session did not start")

        holder = hold(2)
        with pytest.raises(ProgrammingError) as refused:
            drop_database(admin, name, patience=0)  # once, as the fixture did
        assert isinstance(refused.value.orig, InsufficientPrivilege)
        started = time.monotonic()
        drop_database(admin, name)
        assert time.monotonic() - started < 5
        with admin.connect() as conn:
            assert not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"),
                                    {"d": name}).scalar()
        holder.wait(10)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

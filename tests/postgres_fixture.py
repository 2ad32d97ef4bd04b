"""PostgreSQL for the tests: one server per session, one fresh database per test.

``postgres_url`` (session scope) is the URL of a role that may create databases:

* ``$SCANWARD_TEST_POSTGRES_URL`` when set (CI exports it from ``tools/postgres.sh``);
* otherwise a throwaway cluster started from Debian's PostgreSQL binaries
  (``/usr/lib/postgresql/<version>/bin``) in a temporary directory, listening on a free
  loopback port, with password (SCRAM) authentication; as root it runs as ``postgres``.

If neither is possible the tests that need it FAIL (never skip): a missing database
must not pass CI silently.

``postgres_database`` (function scope) creates a uniquely named database on that server,
yields its URL and drops it afterwards, so tests are independent.

Wire it in with ``from tests.postgres_fixture import postgres_database, postgres_url``
(conftest.py or a test module).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.errors import InsufficientPrivilege
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from scanward.devserver import free_port
from tests.helpers.pids import process_alive

ENV_VAR = "SCANWARD_TEST_POSTGRES_URL"
PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
CLUSTER_PREFIX = "scanward-pg-"


def _masked(url: str | URL) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", str(url))


def _sa_url(url: str) -> URL:
    """``url`` with the psycopg (3) driver pinned, as the store does."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    return make_url(url)


def _check_reachable(url: URL, origin: str) -> None:
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    error = ""
    try:
        with engine.connect() as conn:
            may_create = conn.execute(
                text("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
            ).scalar()
    except Exception as exc:
        error = " ".join(str(getattr(exc, "orig", None) or exc).split())
        if url.password:
            error = error.replace(str(url.password), "***")
    finally:
        engine.dispose()
    if error:
        pytest.fail(f"{origin}: cannot connect to {_masked(url)}: {error}", pytrace=False)
    if not may_create:
        pytest.fail(
            f"{origin}: role {url.username!r} on {_masked(url)} lacks CREATEDB "
            "(the tests create one database per test)",
            pytrace=False,
        )


def _bin_dir() -> Path | None:
    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.parent.name))

    found = sorted(PG_ROOT.glob("*/bin/initdb"), key=version)
    for initdb in reversed(found):
        if (initdb.parent / "pg_ctl").exists() and (initdb.parent / "postgres").exists():
            return initdb.parent
    return None


def _reap_stale_clusters(bin_dir: Path) -> None:
    """Stop and remove clusters left behind by test sessions that died (killed, crashed)
    before their teardown ran: their ``owner.pid`` names a process that is gone."""
    for base in Path(tempfile.gettempdir()).glob(f"{CLUSTER_PREFIX}*"):
        try:
            owner = int((base / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if process_alive(owner):
            continue
        data = base / "data"
        if (data / "postmaster.pid").exists():
            cmd = [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
            if os.geteuid() == 0:
                cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
            subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)


class _Cluster:
    """A throwaway PostgreSQL cluster in a temporary directory."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix=CLUSTER_PREFIX))
        (self.base / "owner.pid").write_text(f"{os.getpid()}\n")
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.password = secrets.token_hex(12)
        self.port = 0
        if self.as_root:
            try:
                pg_user = pwd.getpwnam(SUPERUSER)
            except KeyError:
                self.cleanup()
                pytest.fail(
                    "running as root but there is no 'postgres' user to run PostgreSQL as; "
                    f"install Debian's postgresql package or set {ENV_VAR}",
                    pytrace=False,
                )
            os.chown(self.base, pg_user.pw_uid, pg_user.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base
        )

    def _fail(self, what: str, proc: subprocess.CompletedProcess[str]) -> None:
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        out = (proc.stdout + proc.stderr).strip()[-2000:]
        self.cleanup()
        pytest.fail(
            f"{what} failed (exit {proc.returncode}): {out}\n{log}\n"
            f"(set {ENV_VAR} to use an existing server instead)",
            pytrace=False,
        )

    def start(self) -> URL:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            shutil.chown(pwfile, user=SUPERUSER)
        proc = self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
            "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        if proc.returncode != 0:
            self._fail("initdb", proc)
        for _ in range(5):  # the free port may be taken between probing and binding
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200"
            )
            proc = self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                "-o", options, "-w", "-t", "60", "start",
            )
            if proc.returncode == 0:
                break
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if "could not bind" not in log and "Address already in use" not in log:
                self._fail("pg_ctl start", proc)
        else:
            self._fail("pg_ctl start (no free port)", proc)
        return URL.create(
            "postgresql+psycopg",
            username=SUPERUSER,
            password=self.password,
            host="127.0.0.1",
            port=self.port,
            database="postgres",
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop", timeout=60)
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL (``postgresql+psycopg://``) of a PostgreSQL role that may create databases."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        url = _sa_url(env)
        _check_reachable(url, f"{ENV_VAR} is set but")
        yield url.render_as_string(hide_password=False)
        return
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.fail(
            f"no PostgreSQL for the store tests: {ENV_VAR} is not set and no server binaries "
            f"were found under {PG_ROOT}/*/bin; run `tools/postgres.sh` (Debian: installs "
            f"postgresql) and export the {ENV_VAR}=... line it prints",
            pytrace=False,
        )
    _reap_stale_clusters(bin_dir)
    cluster = _Cluster(bin_dir)
    try:
        url = cluster.start()
        _check_reachable(url, "the throwaway PostgreSQL cluster started")
        yield url.render_as_string(hide_password=False)
    finally:
        cluster.stop()


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """URL of a new, empty database, dropped after the test."""
    admin_url = make_url(postgres_url)
    name = f"scanward_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            drop_database(admin, name)
    finally:
        admin.dispose()


def drop_database(admin: Engine, name: str, patience: float = 10.0) -> None:
    """Drop ``name``, ending its sessions (``WITH (FORCE)``). A session our role may not
    end makes that fail at once: an autovacuum worker the server started on the new
    database (a CI run failed on it). Such workers end on their own within moments, so
    the drop is tried again until ``patience`` runs out."""
    deadline = time.monotonic() + patience
    while True:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError as e:
            if not isinstance(e.orig, InsufficientPrivilege) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)

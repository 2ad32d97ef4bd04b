"""The store against a real SQLite file and a real PostgreSQL (see postgres_fixture)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from scanward.contract import (
    Finding,
    ScannerRun,
    ScannerStatus,
    ScanStatus,
    ScanSummary,
    Severity,
)
from scanward.store import Store, StoreError, normalize_url, sqlite_url
from scanward.store.models import Base
from tests.helpers import schema

ROOT = Path(__file__).resolve().parent.parent

# Fixtures postgres_url (session) and postgres_database (fresh database per test).

SCAN = "scan-acme-0123456789abcdef0123"
BACKENDS = ["sqlite", "postgresql"]


def fp(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def finding(
    rule: str = "B101",
    severity: Severity = Severity.MEDIUM,
    path: str = "app/main.py",
    line: int | None = 10,
    scanner: str = "bandit",
) -> Finding:
    return Finding(
        scanner=scanner,
        rule_id=rule,
        severity=severity,
        path=path,
        start_line=line,
        end_line=None if line is None else line + 1,
        message=f"{rule} at {path}:{line}",
        fingerprint=fp(scanner, rule, path, line),
    )


def record(store: Store, findings: list[Finding], *, scanner: str = "bandit", attempt: int = 1,
           scan_id: str = SCAN, repository: str = "https://github.com/acme/app") -> int:
    return store.record_scanner_result(
        scan_id=scan_id, tenant="acme", repository=repository, ref="main",
        commit="0123456789abcdef0123456789abcdef01234567", scanner=scanner, attempt=attempt,
        findings=findings,
    )


def summary(status: ScanStatus = ScanStatus.COMPLETED, *, finding_count: int = 2,
            repository: str = "https://github.com/acme/app",
            commit: str | None = "0123456789abcdef0123456789abcdef01234567") -> ScanSummary:
    return ScanSummary(
        scan_id=SCAN, tenant="acme", repository=repository, ref="main", commit=commit,
        status=status,
        scanners=(
            ScannerRun(scanner="bandit", status=ScannerStatus.SUCCEEDED, attempts=1,
                       finding_count=finding_count),
            ScannerRun(scanner="semgrep", status=ScannerStatus.ABANDONED, attempts=3,
                       reason="oom"),
        ),
        finding_count=finding_count,
        by_severity={Severity.HIGH: 1, Severity.LOW: 1},
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---------------------------------------------------------------------- schema


def test_migrations_create_the_schema(store: Store, db_url: str) -> None:
    assert store.schema_revision() == Store.head_revision() == "0003"
    engine = create_engine(normalize_url(db_url), poolclass=NullPool)
    try:
        insp = inspect(engine)
        assert {"scans", "scanner_results", "findings", "alembic_version"} <= set(
            insp.get_table_names()
        )
        assert insp.get_pk_constraint("scans")["constrained_columns"] == ["scan_id"]
        assert insp.get_pk_constraint("scanner_results")["constrained_columns"] == [
            "scan_id", "scanner"
        ]
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("findings")}
        assert ("scan_id", "fingerprint") in uniques
        indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("findings")}
        assert indexes["ix_findings_scan_id_severity"] == ["scan_id", "severity"]
        assert indexes["ix_findings_scan_id_scanner"] == ["scan_id", "scanner"]
        fks = {fk["referred_table"] for fk in insp.get_foreign_keys("findings")}
        assert fks == {"scans"}
        assert {fk["referred_table"] for fk in insp.get_foreign_keys("scanner_results")} == {
            "scans"
        }
        # The migrations and the ORM models describe the same schema.
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_open_again_keeps_data_and_schema(db_url: str) -> None:
    with Store.open(db_url) as s:
        record(s, [finding()])
    with Store.open(db_url) as s:
        assert s.schema_revision() == Store.head_revision()
        assert len(s.findings(SCAN)) == 1


def test_open_without_migrate_then_migrate(db_url: str) -> None:
    with Store.open(db_url, migrate=False) as s:
        assert s.schema_revision() is None
        s.migrate()
        assert s.schema_revision() == Store.head_revision()


def test_downgrade_and_upgrade_again(store: Store, db_url: str) -> None:
    schema.downgrade(db_url, "base")
    assert store.schema_revision() is None
    store.migrate()
    assert store.schema_revision() == Store.head_revision()
    assert record(store, [finding()]) == 1


def test_migration_0002_keeps_rows_stored_at_0001(db_url: str) -> None:
    """A database created and filled by the previous schema (0001, no columns) is upgraded
    in place: its rows stay, with unknown (NULL) columns, and new rows get columns."""
    with schema.database_at(db_url, "0001") as engine:
        with engine.begin() as conn:
            schema.insert_scan(conn, SCAN, repository="https://github.com/acme/app", commit=None,
                        status="running", finding_count=0)
            schema.insert_scanner_result(conn, SCAN, finding_count=2)
            for old in (finding("B101", line=3), finding("B102", line=4)):
                conn.execute(text(
                    "INSERT INTO findings (scan_id, fingerprint, scanner, rule_id, severity, "
                    "path, start_line, end_line, message) VALUES (:s, :fp, 'bandit', :rule, "
                    "'medium', :path, :line, :end, :msg)"),
                    {"s": SCAN, "fp": old.fingerprint, "rule": old.rule_id, "path": old.path,
                     "line": old.start_line, "end": old.end_line, "msg": old.message})
        with engine.connect() as conn:
            assert schema.revision_of(conn) == "0001"
            assert "start_column" not in {c["name"] for c in inspect(conn).get_columns(
                "findings")}

    with Store.open(db_url) as store:  # upgrades to the newest schema
        assert store.schema_revision() == Store.head_revision()
        kept = store.findings(SCAN)
        assert [(f.rule_id, f.start_line, f.start_column, f.end_column) for f in kept] == [
            ("B101", 3, None, None), ("B102", 4, None, None)]
        assert [r.finding_count for r in store.scanner_results(SCAN)] == [2]
        # A new attempt adds two flaws of one line, told apart by their columns.
        same_line = [finding("B311", line=9).model_copy(update={
            "start_column": col, "end_column": col + 15,
            "fingerprint": fp("B311", 9, col)}) for col in (5, 23)]
        assert record(store, [*kept, *same_line], attempt=2) == 4
        got = store.findings(SCAN)
        assert [(f.rule_id, f.start_line, f.start_column, f.end_column) for f in got] == [
            ("B101", 3, None, None), ("B102", 4, None, None),
            ("B311", 9, 5, 20), ("B311", 9, 23, 38)]

    # And back: the rows survive a downgrade (SQLite copies the table) with its constraints.
    schema.downgrade(db_url, "0001")
    with schema.raw_engine(db_url) as engine, engine.connect() as conn:
        insp = inspect(conn)
        assert "start_column" not in {c["name"] for c in insp.get_columns("findings")}
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("findings")}
        assert ("scan_id", "fingerprint") in uniques
        assert conn.execute(text("SELECT count(*) FROM findings")).scalar_one() == 4


def test_database_newer_than_the_code_is_refused(store: Store, db_url: str) -> None:
    """Alembic only said "Can't locate revision '9999'": the message says what to do."""
    with schema.raw_engine(db_url) as engine, engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match=r"cannot migrate .* to schema 0003: the database is "
                                         r"at schema '9999', newer than this scanward's .*: "
                                         r"upgrade scanward"):
        Store.open(db_url)


def test_concurrent_open_migrates_once(db_url: str) -> None:
    stores: list[Store] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def opener() -> None:
        try:
            barrier.wait()
            stores.append(Store.open(db_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert errors == []
        assert [s.schema_revision() for s in stores] == [Store.head_revision()] * 3
    finally:
        for s in stores:
            s.close()


# ---------------------------------------------------------------------- recording


def test_record_twice_is_idempotent(store: Store) -> None:
    fs = [finding("B101"), finding("B102", Severity.HIGH, line=3)]
    assert record(store, fs) == 2
    assert record(store, fs) == 2  # the activity retried after a crash
    results = store.scanner_results(SCAN)
    assert len(results) == 1
    r = results[0]
    assert (r.scanner, r.attempt, r.status, r.finding_count) == (
        "bandit", 1, ScannerStatus.SUCCEEDED, 2
    )
    assert sorted(f.fingerprint for f in store.findings(SCAN)) == sorted(
        f.fingerprint for f in fs
    )
    scan = store.get_scan(SCAN)
    assert scan is not None
    assert scan.status is ScanStatus.RUNNING
    assert (scan.tenant, scan.ref, scan.summary) == ("acme", "main", None)
    assert scan.created_at.tzinfo is not None
    assert scan.updated_at >= scan.created_at


def test_duplicate_fingerprints_within_one_call_collapse(store: Store) -> None:
    a, b = finding("B101"), finding("B102")
    assert record(store, [a, b, a, a, b]) == 2
    assert len(store.findings(SCAN)) == 2
    assert store.scanner_results(SCAN)[0].finding_count == 2


def test_many_findings_in_one_call(store: Store) -> None:
    fs = [finding("B101", path=f"src/m{i}.py", line=i) for i in range(1234)]
    assert record(store, fs + fs[:100]) == 1234
    assert len(store.findings(SCAN)) == 1234


def test_later_attempt_adds_findings_and_keeps_highest_attempt(store: Store) -> None:
    a, b = finding("B101"), finding("B102")
    assert record(store, [a], attempt=1) == 1
    assert record(store, [a, b], attempt=2) == 2
    assert record(store, [a], attempt=1) == 2  # a stale retry of attempt 1
    [r] = store.scanner_results(SCAN)
    assert (r.attempt, r.finding_count) == (2, 2)


def test_scanners_are_counted_separately(store: Store) -> None:
    assert record(store, [finding("B101"), finding("B102")], scanner="bandit") == 2
    semgrep = [finding("rule.x", scanner="semgrep", line=None)]
    assert record(store, semgrep, scanner="semgrep") == 1
    assert [(r.scanner, r.finding_count) for r in store.scanner_results(SCAN)] == [
        ("bandit", 2), ("semgrep", 1)
    ]
    assert store.findings(SCAN, scanner="semgrep") == semgrep
    assert len(store.findings(SCAN)) == 3
    assert store.findings(SCAN, scanner="trivy") == []


def test_scans_are_separate(store: Store) -> None:
    a = finding("B101")
    other = "scan-acme-ffffffffffffffffffff"
    assert record(store, [a]) == 1
    assert record(store, [a], scan_id=other) == 1  # same fingerprint, another scan
    assert store.findings(other) == [a]
    assert len(store.findings(SCAN)) == 1


def test_empty_findings(store: Store) -> None:
    assert record(store, []) == 0
    [r] = store.scanner_results(SCAN)
    assert r.finding_count == 0
    assert store.findings(SCAN) == []


def test_concurrent_record_of_one_scanner_leaves_one_row(db_url: str) -> None:
    stores = [Store.open(db_url), Store.open(db_url)]
    fs = [finding("B101", path=f"p{i}.py", line=i) for i in range(50)]
    errors: list[BaseException] = []
    counts: list[int] = []
    barrier = threading.Barrier(len(stores))

    def worker(s: Store, attempt: int) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                counts.append(record(s, fs, attempt=attempt))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(s, n), daemon=True)
        for n, s in enumerate(stores, start=1)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        assert counts == [50] * 10
        results = stores[0].scanner_results(SCAN)
        assert len(results) == 1
        assert (results[0].attempt, results[0].finding_count) == (2, 50)
        assert len(stores[0].findings(SCAN)) == 50
    finally:
        for s in stores:
            s.close()


def batches(findings: list[Finding], size: int) -> list[list[Finding]]:
    return [findings[i : i + size] for i in range(0, len(findings), size)]


def begin(store: Store) -> None:
    store.begin_scanner_result(scan_id=SCAN, tenant="acme",
                               repository="https://github.com/acme/app", ref="main",
                               commit="0123456789abcdef0123456789abcdef01234567")


def test_batches_then_complete_store_each_finding_once(store: Store) -> None:
    """persist_results' way: begin, one transaction per batch, then the complete marker.
    A crash after some batches leaves them stored but the scanner not marked complete; the
    retry adds the same batches again and the rest: nothing doubled, nothing lost."""
    fs = [finding("B101", severity=Severity.HIGH if i % 3 == 0 else Severity.LOW,
                  path=f"src/m{i}.py", line=i) for i in range(2500)]
    begin(store)
    for batch in batches(fs, 1000)[:2]:  # the worker dies after two of three batches
        store.add_findings(SCAN, batch)
    assert len(store.findings(SCAN)) == 2000
    assert store.scanner_results(SCAN) == []  # not marked complete

    begin(store)  # the retried attempt, from the start
    for batch in batches(fs, 1000):
        store.add_findings(SCAN, batch)
    done = store.complete_scanner_result(scan_id=SCAN, scanner="bandit", attempt=1)
    assert done.count == 2500
    assert done.by_severity == {Severity.HIGH: 834, Severity.LOW: 1666}
    assert sorted(f.fingerprint for f in store.findings(SCAN)) == sorted(
        f.fingerprint for f in fs)
    [r] = store.scanner_results(SCAN)
    assert (r.status, r.attempt, r.finding_count) == (ScannerStatus.SUCCEEDED, 1, 2500)
    # Completing again (a retry after the marker was written) changes nothing.
    assert store.complete_scanner_result(scan_id=SCAN, scanner="bandit", attempt=1) == done


def test_columns_are_stored_and_order_findings_of_a_line(store: Store) -> None:
    def at(col: int | None) -> Finding:
        return finding("B311", line=4).model_copy(update={
            "start_column": col, "end_column": None if col is None else col + 15,
            "fingerprint": fp("B311", 4, col)})

    fs = [at(23), at(5), at(None)]
    assert record(store, fs) == 3
    assert [f.start_column for f in store.findings(SCAN)] == [None, 5, 23]
    assert set(store.findings(SCAN)) == set(fs)


# ---------------------------------------------------------------------- finishing


def test_finish_scan_twice(store: Store) -> None:
    record(store, [finding("B101", Severity.HIGH), finding("B102", Severity.LOW)])
    s = summary()
    store.finish_scan(s)
    first = store.get_scan(SCAN)
    store.finish_scan(s)
    second = store.get_scan(SCAN)
    assert first is not None and second is not None
    assert second.status is ScanStatus.COMPLETED
    assert second.finding_count == 2
    assert second.summary == s
    assert second.created_at == first.created_at
    assert [(r.scanner, r.status, r.attempt, r.finding_count)
            for r in store.scanner_results(SCAN)] == [
        ("bandit", ScannerStatus.SUCCEEDED, 1, 2),
        ("semgrep", ScannerStatus.ABANDONED, 3, 0),
    ]


def test_finish_without_any_result_creates_the_scan(store: Store) -> None:
    s = summary(ScanStatus.FAILED, finding_count=0, commit=None)
    store.finish_scan(s)
    scan = store.get_scan(SCAN)
    assert scan is not None
    assert (scan.status, scan.commit, scan.finding_count) == (ScanStatus.FAILED, None, 0)
    assert scan.summary == s


def test_late_record_does_not_reopen_a_final_scan(store: Store) -> None:
    record(store, [finding()])
    store.finish_scan(summary(ScanStatus.PARTIAL))
    record(store, [finding()], attempt=2)
    scan = store.get_scan(SCAN)
    assert scan is not None and scan.status is ScanStatus.PARTIAL


def test_record_reopens_a_dead_scan(store: Store) -> None:
    record(store, [finding()])
    store.finish_scan(summary(ScanStatus.DEAD))
    record(store, [finding("B102")], scanner="semgrep", attempt=4)  # operator retried
    scan = store.get_scan(SCAN)
    assert scan is not None and scan.status is ScanStatus.RUNNING


def test_credentials_are_never_stored(store: Store, db_url: str) -> None:
    token = "ghp_SECRETTOKEN123"
    record(store, [finding()], repository=f"https://{token}@github.com/acme/app")
    store.finish_scan(summary(repository=f"https://x-access-token:{token}@github.com/acme/app"))
    scan = store.get_scan(SCAN)
    assert scan is not None and scan.summary is not None
    assert scan.repository == "https://github.com/acme/app"
    assert scan.summary.repository == "https://github.com/acme/app"
    engine = create_engine(normalize_url(db_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            for table in ("scans", "scanner_results", "findings"):
                for row in conn.execute(text(f"SELECT * FROM {table}")):  # noqa: S608
                    assert token not in repr(tuple(row))
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- reading


def test_findings_are_ordered_by_severity_path_line(store: Store) -> None:
    fs = [
        finding("R1", Severity.LOW, "a.py", 1),
        finding("R2", Severity.CRITICAL, "z.py", 9),
        finding("R3", Severity.INFO, "a.py", 1),
        finding("R4", Severity.HIGH, "b.py", 20),
        finding("R5", Severity.HIGH, "b.py", 3),
        finding("R6", Severity.HIGH, "a.py", None),
        finding("R7", Severity.MEDIUM, "a.py", 100),
        finding("R8", Severity.CRITICAL, "a.py", 50),
        finding("R9", Severity.HIGH, "a.py", 2),
    ]
    record(store, fs)
    got = store.findings(SCAN)
    assert [f.rule_id for f in got] == ["R8", "R2", "R6", "R9", "R5", "R4", "R7", "R1", "R3"]
    assert set(got) == set(fs)  # stored and read back unchanged


def test_unknown_scan(store: Store) -> None:
    assert store.get_scan("scan-nope-00000000000000000000") is None
    assert store.scanner_results("scan-nope-00000000000000000000") == []
    assert store.findings("scan-nope-00000000000000000000") == []


def test_ping_and_close(store: Store) -> None:
    store.ping()
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.ping()


# ---------------------------------------------------------------------- URLs and errors


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "database URL is empty"),
        ("not a url", "malformed database URL 'not a url'"),
        ("mysql://scanward:hunter2@db/scanward",
         "unsupported database URL scheme 'mysql' in 'mysql://scanward:***@db/scanward'"),
        ("postgresql+psycopg2://scanward:hunter2@db/scanward",
         "unsupported database URL scheme 'postgresql+psycopg2'"),
        ("postgresql://scanward:hunter2@db:notaport/scanward", "malformed database URL"),
        ("postgresql://scanward:hunter2@/scanward", "names no host"),
        ("postgres://scanward:hunter2@db", "names no database"),
        ("sqlite:///relative/scanward.db", "relative path 'relative/scanward.db'"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
        ("sqlite:////proc/no-such-dir/scanward.db", "cannot create the directory"),
    ],
)
def test_bad_urls(url: str, expected: str) -> None:
    with pytest.raises(StoreError) as info:
        Store.open(url)
    msg = str(info.value)
    assert expected in msg
    assert "hunter2" not in msg
    assert "\n" not in msg


def test_unreachable_postgres_is_reported_with_masked_password() -> None:
    port = closed_port()
    with pytest.raises(StoreError) as info:
        Store.open(f"postgresql://scanward:hunter2@127.0.0.1:{port}/scanward")
    msg = str(info.value)
    assert msg.startswith(
        f"cannot connect to database postgresql+psycopg://scanward:***@127.0.0.1:{port}/scanward: "
    )
    assert "refused" in msg.lower()
    assert "hunter2" not in msg
    assert "\n" not in msg


def test_wrong_postgres_password_is_masked(postgres_database: str) -> None:
    wrong = make_url(postgres_database).set(password="Wr0ng-Passw0rd")
    with pytest.raises(StoreError) as info:
        Store.open(wrong.render_as_string(hide_password=False))
    msg = str(info.value)
    assert "password authentication failed" in msg
    assert "Wr0ng-Passw0rd" not in msg
    assert ":***@" in msg


def test_a_short_password_is_masked_without_garbling_the_message() -> None:
    """The password ``p`` was replaced inside every word: "***ort 9 failed ...
    acce***ting TCP/IP connections"."""
    with pytest.raises(StoreError) as info:
        Store.open("postgresql://u:p@127.0.0.1:9/db")
    msg = str(info.value)
    assert "port 9 failed" in msg and "accepting TCP/IP connections" in msg, msg
    assert "u:p@" not in msg and "u:***@" in msg, msg


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgres_url_forms(postgres_database: str, scheme: str) -> None:
    url = make_url(postgres_database).set(drivername="postgresql+psycopg")
    rest = url.render_as_string(hide_password=False).split("://", 1)[1]
    with Store.open(f"{scheme}://{rest}") as s:
        assert s.dialect == "postgresql"
        assert s.url.startswith("postgresql+psycopg://")
        assert str(url.password) not in s.url
        s.ping()


def test_normalize_url() -> None:
    assert normalize_url("postgres://u:p@h:5433/d").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql://u:p@h/d").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:////var/lib/x.db").database == "/var/lib/x.db"
    assert sqlite_url("/tmp/a/../b.db") == "sqlite:////tmp/b.db"


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    with Store.open(sqlite_url(tmp_path / "s.db")) as s, s._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


# ------------------------------------------------------- migrations: concurrent and newer

_OPEN = """
import sys, time
from sqlalchemy.engine import base
from scanward.store import Store
url, start = sys.argv[1], float(sys.argv[2])
# A worker paused (CPU-starved, GC) just after each COMMIT: another process may write then.
commit = base.Transaction.commit
def paused_commit(self):
    commit(self)
    time.sleep(0.3)
base.Transaction.commit = paused_commit
time.sleep(max(0.0, start - time.time()))
with Store.open(url) as store:
    print(store.schema_revision())
"""


def test_workers_starting_at_once_on_an_empty_database_all_migrate(
        db_url: str, tmp_path: Path) -> None:
    """Separate processes (workers starting together), not threads: one process
    serialises its own migrations. Each round uses a fresh database. Before the fix,
    SQLite took its write lock per migration step, so two processes that both read
    "no schema" ran the same step twice ("duplicate column name: scanners")."""
    rounds = 2
    for n in range(rounds):
        url = (sqlite_url(tmp_path / f"race-{n}.db") if db_url.startswith("sqlite")
               else db_url)
        if n and not db_url.startswith("sqlite"):
            _drop_schema(url)
        start = time.time() + 2.5  # every process imports first, then opens in turn
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN, url, str(start + i * 0.1)],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(4)]
        results = [p.communicate(timeout=120) for p in procs]
        errors = [err.strip().splitlines()[-1] for (_, err), p in zip(results, procs,
                                                                      strict=True)
                  if p.returncode != 0]
        assert errors == [], f"round {n}: {errors}"
        assert [out.strip() for out, _ in results] == [Store.head_revision()] * 4


def _drop_schema(url: str) -> None:
    with schema.raw_engine(url) as engine, engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))

"""The :class:`Store`: scans, per-scanner results and findings in SQLite or PostgreSQL."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from scanward.contract import (
    Finding,
    ScanLifecycle,
    ScannerStatus,
    ScanStatus,
    ScanSummary,
    Severity,
)
from scanward.lifecycle import NEW_FINDINGS_CAP, TriageState
from scanward.store import tracking
from scanward.store.errors import StoreError
from scanward.store.models import FindingRow, ScannerResultRow, ScanRow, TriageRow
from scanward.store.tracking import FindingRecord, HistoryEntry, TriageRecord
from scanward.store.urls import SQLITE, mask_url, normalize_url, scrub
from scanward.volumes import volume_free

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
# Scans in these states are over: a late (retried) scanner result does not reopen them.
FINAL_STATUSES: frozenset[ScanStatus] = frozenset(
    {ScanStatus.COMPLETED, ScanStatus.PARTIAL, ScanStatus.FAILED, ScanStatus.CANCELLED}
)
SEVERITY_RANK: dict[Severity, int] = {
    Severity.CRITICAL: 0,
    Severity.HIGH: 1,
    Severity.MEDIUM: 2,
    Severity.LOW: 3,
    Severity.INFO: 4,
}
# Execution option that makes a SQLite transaction take the write lock up front.
SQLITE_IMMEDIATE = "scanward_sqlite_immediate"
_MIGRATION_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ScanRecord:
    """A stored scan. ``summary`` is set once :meth:`Store.finish_scan` has run."""

    scan_id: str
    tenant: str
    repository: str
    ref: str
    commit: str | None
    status: ScanStatus
    finding_count: int
    summary: ScanSummary | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StoredFindings:
    """How many findings of one scanner a scan holds, in all and by severity (those the
    tool reported suppressed are stored but counted apart, in ``suppressed``)."""

    count: int
    by_severity: dict[Severity, int]
    suppressed: int = 0


@dataclass(frozen=True, slots=True)
class ScannerResultRecord:
    """The latest recorded attempt of one scanner in one scan."""

    scan_id: str
    scanner: str
    attempt: int
    status: ScannerStatus
    finding_count: int
    updated_at: datetime


def scrub_repository(repository: str) -> str:
    """``repository`` without credentials: a password, or an HTTP(S) user (often a
    token), is dropped from the URL. The store never persists secrets."""
    if "://" not in repository:
        return repository
    try:
        parts = urlsplit(repository)
        has_secret = parts.password is not None or (
            parts.scheme.lower() in ("http", "https") and parts.username is not None
        )
        if not has_secret:
            return repository
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:  # unparsable: keep nothing that could be a secret
        return repository.split("://", 1)[0] + "://<redacted>"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def make_engine(url: URL) -> Engine:
    """An engine for a URL returned by :func:`normalize_url`.

    SQLite: creates the file's directory; every connection runs in WAL mode with foreign
    keys on and a busy timeout, and write transactions start with ``BEGIN IMMEDIATE``.
    """
    masked = mask_url(url)
    if url.get_backend_name() == SQLITE:
        try:
            Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory of SQLite database {masked!r}: "
                f"{exc.strerror or exc}"
            ) from None
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "scanward"},
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event, not the sqlite3 module, start transactions.
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _sqlite_enable_wal(cur)
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA synchronous = NORMAL")
    finally:
        cur.close()


def _sqlite_enable_wal(cur: Any) -> None:
    # WAL is persistent, so usually this is a read. Switching a new database to WAL takes
    # an exclusive lock and SQLite may report "database is locked" at once instead of
    # waiting on the busy handler when several connections race to do it: retry.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.01
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _sqlite_on_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(SQLITE_IMMEDIATE):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def alembic_config(url: URL) -> Config:
    """An Alembic configuration built in code (no alembic.ini) for ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal '%' in the URL (password) must be doubled.
    cfg.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return cfg


@functools.cache
def _known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config(URL.create("sqlite")))
    return frozenset(rev.revision for rev in script.walk_revisions())


def _now() -> datetime:
    return datetime.now(UTC)


class _Statements:
    """The upserts every scan runs, built once per store: SQLAlchemy then finds their
    compiled form by a memoized key instead of building and hashing the expression on
    each call (measured: about a third of ``persist_results``' CPU)."""

    def __init__(self, insert: Callable[[Any], Any]) -> None:
        scans = ScanRow.__table__
        ins = insert(ScanRow)
        # A scan that is already final keeps its status; the first commit stays.
        self.upsert_scan = ins.on_conflict_do_update(
            index_elements=[scans.c.scan_id],
            set_={
                "status": case(
                    (scans.c.status.in_([s.value for s in FINAL_STATUSES]), scans.c.status),
                    else_=ScanStatus.RUNNING.value),
                "commit": func.coalesce(scans.c.commit, ins.excluded.commit),
                "updated_at": ins.excluded.updated_at,
            })
        ins = insert(ScanRow)
        self.finish_scan = ins.on_conflict_do_update(
            index_elements=[scans.c.scan_id],
            set_={
                "status": ins.excluded.status,
                "finding_count": ins.excluded.finding_count,
                "summary": ins.excluded.summary,
                "commit": func.coalesce(ins.excluded.commit, scans.c.commit),
                "updated_at": ins.excluded.updated_at,
                "scanners": ins.excluded.scanners,
                "finished_at": func.coalesce(scans.c.finished_at, ins.excluded.finished_at),
            })
        results = ScannerResultRow.__table__
        ins = insert(ScannerResultRow)
        update: dict[str, Any] = {
            "attempt": case((ins.excluded.attempt > results.c.attempt, ins.excluded.attempt),
                            else_=results.c.attempt),
            "status": ins.excluded.status,
            "updated_at": ins.excluded.updated_at,
        }
        key = [results.c.scan_id, results.c.scanner]
        self.upsert_result = ins.on_conflict_do_update(index_elements=key, set_=update)
        self.upsert_result_count = ins.on_conflict_do_update(
            index_elements=key, set_=update | {"finding_count": ins.excluded.finding_count})
        self.insert_findings = insert(FindingRow).on_conflict_do_nothing(
            index_elements=["scan_id", "fingerprint"])
        suppressed = FindingRow.suppression.is_not(None)
        self.count_findings = (
            select(FindingRow.severity, suppressed, func.count())
            .where(FindingRow.scan_id == bindparam("scan_id"),
                   FindingRow.scanner == bindparam("scanner"))
            .group_by(FindingRow.severity, suppressed))


class Store:
    """Durable storage of scans, scanner results and findings.

    Open it with :meth:`open`; it is safe to share between threads (each call checks a
    connection out of the engine's pool). Every write is one transaction and idempotent,
    so an activity retried after a crash can simply call it again.
    """

    def __init__(self, engine: Engine, url: URL) -> None:
        """Wrap an engine made by :func:`make_engine`; use :meth:`open` instead."""
        self._engine = engine
        self._url = url
        self._masked = mask_url(url)
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Open the database at ``url`` and, when ``migrate``, upgrade it to the newest
        schema. Raises :class:`StoreError` if the URL is malformed or unsupported or the
        database cannot be reached."""
        parsed = normalize_url(url)
        store = cls(make_engine(parsed), parsed)
        try:
            store._check_connection()
            if migrate:
                store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._masked

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Release every pooled connection. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision (concurrent callers serialise)."""
        cfg = alembic_config(self._url)
        # alembic.context is process-global: one migration at a time per process; other
        # processes are serialised by the database (advisory lock / BEGIN IMMEDIATE).
        with _MIGRATION_LOCK, self._guard("migrating"), self._engine.connect() as conn:
            conn.execution_options(**{SQLITE_IMMEDIATE: True})
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, "head")
            except CommandError as exc:  # e.g. the database is newer than this code
                current = MigrationContext.configure(conn).get_current_revision()
                if current is not None and current not in _known_revisions():
                    # Alembic only says "Can't locate revision": say what to do.
                    raise StoreError(
                        f"cannot migrate {self._masked} to schema {self.head_revision()}: "
                        f"the database is at schema {current!r}, newer than this "
                        "scanward's (a newer scanward migrated it): upgrade scanward; a "
                        "store is never downgraded on open"
                    ) from exc
                raise StoreError(
                    f"cannot migrate {self._masked} to schema {self.head_revision()}: "
                    f"{scrub(str(exc), self._url)}"
                ) from exc

    def schema_revision(self) -> str | None:
        """The schema revision the database is at (``None`` before any migration)."""
        with self._guard("reading the schema revision"), self._engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @staticmethod
    def head_revision() -> str:
        """The newest schema revision this code ships."""
        script = ScriptDirectory.from_config(alembic_config(URL.create("sqlite")))
        return script.get_current_head() or ""

    def ping(self) -> None:
        """Run ``SELECT 1``; raises :class:`StoreError` if the database is unreachable."""
        with self._guard("pinging"), self._engine.connect() as conn:
            conn.execute(text("SELECT 1")).one()

    # ------------------------------------------------------------------ writes

    def record_scanner_result(
        self,
        *,
        scan_id: str,
        tenant: str,
        repository: str,
        ref: str,
        commit: str,
        scanner: str,
        attempt: int,
        findings: Sequence[Finding],
    ) -> int:
        """Store one scanner's findings for a scan, in one transaction: what
        :meth:`begin_scanner_result`, :meth:`add_findings` and
        :meth:`complete_scanner_result` do one after the other. Calling it again with the
        same arguments changes nothing. Returns the number of distinct findings stored
        for ``(scan_id, scanner)``."""
        return self.record_findings(scan_id=scan_id, tenant=tenant, repository=repository,
                                    ref=ref, commit=commit, scanner=scanner, attempt=attempt,
                                    findings=findings).count

    def record_findings(self, *, scan_id: str, tenant: str, repository: str, ref: str,
                        commit: str, scanner: str, attempt: int,
                        findings: Sequence[Finding]) -> StoredFindings:
        """:meth:`record_scanner_result`, returning the stored counts by severity too:
        one transaction for a scanner whose findings fit in one batch."""
        now = _now()
        with self._write("recording scanner result") as conn:
            self._upsert_scan(conn, scan_id=scan_id, tenant=tenant, repository=repository,
                              ref=ref, commit=commit, now=now)
            self._insert_findings(conn, scan_id, findings)
            return self._complete(conn, scan_id, scanner, attempt, now)

    def begin_scanner_result(self, *, scan_id: str, tenant: str, repository: str, ref: str,
                             commit: str) -> None:
        """Before a scanner's findings are added in batches: create the scan (status
        ``running``) or touch it (it becomes ``running`` again unless already final)."""
        with self._write("recording scan") as conn:
            self._upsert_scan(conn, scan_id=scan_id, tenant=tenant, repository=repository,
                              ref=ref, commit=commit, now=_now())

    def add_findings(self, scan_id: str, findings: Sequence[Finding]) -> None:
        """Insert a batch of findings of a scan begun with :meth:`begin_scanner_result`,
        in one short transaction, each once per ``(scan_id, fingerprint)``: a batch
        added again (a retried activity) changes nothing."""
        with self._write("storing findings") as conn:
            self._insert_findings(conn, scan_id, findings)

    def complete_scanner_result(self, *, scan_id: str, scanner: str,
                                attempt: int) -> StoredFindings:
        """The last step: record the scanner as ``succeeded`` at the highest attempt seen,
        with the number of its findings stored for the scan (the marker that its findings
        are complete). Returns that count, by severity too. Idempotent."""
        with self._write("completing scanner result") as conn:
            return self._complete(conn, scan_id, scanner, attempt, _now())

    def _upsert_scan(self, conn: Connection, *, scan_id: str, tenant: str, repository: str,
                     ref: str, commit: str, now: datetime) -> None:
        conn.execute(self._statements.upsert_scan, {
            "scan_id": scan_id, "tenant": tenant, "repository": scrub_repository(repository),
            "ref": ref, "commit": commit, "status": ScanStatus.RUNNING.value,
            "finding_count": 0, "summary": None, "created_at": now, "updated_at": now})

    def _insert_findings(self, conn: Connection, scan_id: str,
                         findings: Sequence[Finding]) -> None:
        unique: dict[str, Finding] = {}
        for f in findings:
            unique.setdefault(f.fingerprint, f)
        rows = [
            {
                "scan_id": scan_id,
                "fingerprint": f.fingerprint,
                "scanner": f.scanner,
                "rule_id": f.rule_id,
                "severity": f.severity.value,
                "path": f.path,
                "start_line": f.start_line,
                "end_line": f.end_line,
                "start_column": f.start_column,
                "end_column": f.end_column,
                "message": f.message,
                "match_fingerprint": f.match_fingerprint,
                "suppression": f.suppression,
            }
            for f in unique.values()
        ]
        if rows:
            # executemany of one cached statement: a multi-row VALUES built per batch
            # costs more to compile than to run.
            conn.execute(self._statements.insert_findings, rows)

    def _complete(self, conn: Connection, scan_id: str, scanner: str, attempt: int,
                  now: datetime) -> StoredFindings:
        by_severity: dict[Severity, int] = {}
        suppressed = 0
        for severity, is_suppressed, n in conn.execute(
                self._statements.count_findings, {"scan_id": scan_id, "scanner": scanner}):
            if is_suppressed:
                suppressed += int(n)
            else:
                by_severity[Severity(severity)] = int(n)
        count = sum(by_severity.values())
        self._upsert_scanner_result(conn, scan_id, scanner, attempt,
                                    ScannerStatus.SUCCEEDED.value, count, now,
                                    replace_count=True)
        return StoredFindings(count=count, by_severity=by_severity, suppressed=suppressed)

    def finish_scan(self, summary: ScanSummary) -> None:
        """Record the scan's final state: status, finding count and the summary (as
        JSON); the scan row is created if no scanner result was recorded (e.g. the clone
        failed). Each scanner of ``summary.scanners`` gets a ``scanner_results`` row with
        its final status; a stored finding count is kept. The first final status sets
        ``finished_at`` (the order scans of a ref are compared in). Idempotent."""
        with self._write("finishing scan") as conn:
            self._finish(conn, summary)

    def finish_and_track(self, summary: ScanSummary, *, cap: int = NEW_FINDINGS_CAP,
                         progress: Callable[[str, int], None] | None = None
                         ) -> ScanLifecycle | None:
        """:meth:`finish_scan` then :meth:`compute_lifecycle`, in one transaction (the
        lifecycle of a completed scan is recorded with its final status, never
        without). Idempotent like both."""
        with self._write("finishing scan") as conn:
            # The ref's lock before the finish time is chosen and written: scans of a ref
            # then get their finish times in the order they are compared in, and each
            # sees the one that finished before it (else two finishing at once could
            # both be compared with the scan before them).
            tracking.lock_ref(conn, summary.tenant, scrub_repository(summary.repository),
                              summary.ref)
            self._finish(conn, summary)
            return tracking.compute(conn, summary.scan_id, cap=cap, progress=progress)

    def _finish(self, conn: Connection, summary: ScanSummary) -> None:
        now = _now()
        summary = summary.model_copy(update={"repository": scrub_repository(summary.repository)})
        final = summary.status in FINAL_STATUSES
        conn.execute(self._statements.finish_scan, {
            "scanners": ",".join(sorted(r.scanner for r in summary.scanners)),
            "finished_at": now if final else None, "scan_id": summary.scan_id,
            "tenant": summary.tenant, "repository": summary.repository, "ref": summary.ref,
            "commit": summary.commit, "status": summary.status.value,
            "finding_count": summary.finding_count, "summary": summary.model_dump_json(),
            "created_at": now, "updated_at": now})
        for run in summary.scanners:
            # The stored finding count is kept: persist_results counted the rows.
            self._upsert_scanner_result(conn, summary.scan_id, run.scanner, run.attempts,
                                        run.status.value, run.finding_count or 0, now,
                                        replace_count=False)

    def _upsert_scanner_result(self, conn: Connection, scan_id: str, scanner: str,
                               attempt: int, status: str, finding_count: int, now: datetime,
                               *, replace_count: bool) -> None:
        """One ``scanner_results`` row per (scan, scanner), keeping the highest attempt
        seen (a stale retry of an earlier attempt does not overwrite a later one)."""
        stmt = (self._statements.upsert_result_count if replace_count
                else self._statements.upsert_result)
        conn.execute(stmt, {"scan_id": scan_id, "scanner": scanner, "attempt": attempt,
                            "status": status, "finding_count": finding_count,
                            "updated_at": now})

    @functools.cached_property
    def _statements(self) -> _Statements:
        return _Statements(self._insert)

    # ------------------------------------------------------------------ reads

    def get_scan(self, scan_id: str) -> ScanRecord | None:
        """The stored scan, or ``None`` if nothing was recorded for ``scan_id``."""
        with self._read("reading scan") as session:
            row = session.get(ScanRow, scan_id)
            if row is None:
                return None
            return ScanRecord(
                scan_id=row.scan_id,
                tenant=row.tenant,
                repository=row.repository,
                ref=row.ref,
                commit=row.commit,
                status=ScanStatus(row.status),
                finding_count=row.finding_count,
                summary=(
                    ScanSummary.model_validate_json(row.summary)
                    if row.summary is not None
                    else None
                ),
                created_at=row.created_at,
                updated_at=row.updated_at,
            )

    def scanner_results(self, scan_id: str) -> list[ScannerResultRecord]:
        """The scan's scanner results, ordered by scanner name."""
        with self._read("reading scanner results") as session:
            rows = session.scalars(
                select(ScannerResultRow)
                .where(ScannerResultRow.scan_id == scan_id)
                .order_by(ScannerResultRow.scanner)
            ).all()
            return [
                ScannerResultRecord(
                    scan_id=r.scan_id,
                    scanner=r.scanner,
                    attempt=r.attempt,
                    status=ScannerStatus(r.status),
                    finding_count=r.finding_count,
                    updated_at=r.updated_at,
                )
                for r in rows
            ]

    def findings(self, scan_id: str, *, scanner: str | None = None) -> list[Finding]:
        """The scan's findings (of one scanner, if given): most severe first, then by
        path and line."""
        rank = case(
            {sev.value: r for sev, r in SEVERITY_RANK.items()},
            value=FindingRow.severity,
            else_=len(SEVERITY_RANK),
        )
        stmt = select(FindingRow).where(FindingRow.scan_id == scan_id)
        if scanner is not None:
            stmt = stmt.where(FindingRow.scanner == scanner)
        stmt = stmt.order_by(
            rank,
            FindingRow.path,
            FindingRow.start_line.asc().nulls_first(),
            FindingRow.start_column.asc().nulls_first(),
            FindingRow.end_line.asc().nulls_first(),
            FindingRow.rule_id,
            FindingRow.fingerprint,
        )
        with self._read("reading findings") as session:
            return [
                Finding(
                    scanner=r.scanner,
                    rule_id=r.rule_id,
                    severity=Severity(r.severity),
                    path=r.path,
                    start_line=r.start_line,
                    end_line=r.end_line,
                    start_column=r.start_column,
                    end_column=r.end_column,
                    message=r.message,
                    fingerprint=r.fingerprint,
                    match_fingerprint=r.match_fingerprint,
                    suppression=r.suppression,
                )
                for r in session.scalars(stmt)
            ]

    # ------------------------------------------------------------ findings over time

    def compute_lifecycle(self, scan_id: str, *, cap: int = NEW_FINDINGS_CAP,
                          progress: Callable[[str, int], None] | None = None
                          ) -> ScanLifecycle | None:
        """Compare a finished scan with the previous completed scan of the same tenant,
        repository, ref and scanners, and record each finding as new or existing (with
        where it was first seen) and the counts, in one transaction. Idempotent: a
        repeated call reads what the first recorded. None unless the scan is completed
        or partial. The summary carries at most ``cap`` new findings. ``progress`` is
        called between steps (heartbeats)."""
        with self._write("computing the lifecycle") as conn:
            return tracking.compute(conn, scan_id, cap=cap, progress=progress)

    def lifecycle(self, scan_id: str, *, cap: int = NEW_FINDINGS_CAP) -> ScanLifecycle | None:
        """The recorded lifecycle of a scan (None if none was computed)."""
        with self._connect("reading the lifecycle") as conn:
            return tracking.read_lifecycle(conn, scan_id, cap=cap)

    def scan_findings(self, scan_id: str) -> list[FindingRecord]:
        """The scan's findings with their lifecycle state, first sighting and triage."""
        with self._connect("reading findings") as conn:
            return tracking.scan_findings(conn, scan_id)

    def fixed_findings(self, scan_id: str) -> list[FindingRecord]:
        """The previous scan's findings that this one no longer has."""
        with self._connect("reading fixed findings") as conn:
            return tracking.fixed_findings(conn, scan_id)

    @contextmanager
    def findings_reader(self, scan_id: str) -> Iterator[tracking.FindingsReader]:
        """The scan's findings as streams (:class:`~scanward.store.tracking.FindingsReader`),
        read in one transaction that sees one snapshot (REPEATABLE READ on PostgreSQL;
        SQLite's read transaction is one in WAL mode): reading them twice, e.g. a SARIF
        run's rules then its results, gives the same findings both times. Errors while
        reading are :class:`StoreError`, as everywhere."""
        with self._guard("reading findings"), self._engine.connect() as conn:
            if conn.dialect.name != SQLITE:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield tracking.FindingsReader(conn, scan_id)

    def set_triage(self, fingerprint: str, state: TriageState, *, reason: str, by: str,
                   tenant: str | None = None,
                   repository: str | None = None) -> TriageRecord:
        """Triage the finding with this match fingerprint (or unique prefix) in its
        repository, for every scan of it, past and future. Raises
        :class:`~scanward.store.errors.UnknownFingerprint` if no stored finding has it."""
        repo = scrub_repository(repository) if repository is not None else None
        with self._write("triaging") as conn:
            return tracking.set_triage(conn, fingerprint, state, reason, by, _now(),
                                       tenant=tenant, repository=repo,
                                       insert=lambda model: self._insert(model))

    def history(self, repository: str, *, ref: str | None = None, tenant: str | None = None,
                limit: int = 50) -> list[HistoryEntry]:
        """The repository's scans, latest first, with their lifecycle counts."""
        with self._connect("reading history") as conn:
            return tracking.history(conn, scrub_repository(repository), ref=ref,
                                    tenant=tenant, limit=limit)

    # ------------------------------------------------------------------ helpers

    def _insert(self, model: type[ScanRow | ScannerResultRow | FindingRow | TriageRow]
                ) -> Any:
        """A dialect-specific INSERT supporting ``on_conflict_*``."""
        stmt: sqlite.Insert | pg.Insert
        if self._engine.dialect.name == SQLITE:
            stmt = sqlite.insert(model)
        else:
            stmt = pg.insert(model)
        return stmt

    def _check_connection(self) -> None:
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1")).one()
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot connect to database {self._masked}: {self._detail(exc)}"
            ) from exc

    def _detail(self, exc: SQLAlchemyError) -> str:
        orig = getattr(exc, "orig", None)
        detail = str(orig) if orig is not None else str(exc)
        return scrub(detail, self._url) or type(exc).__name__

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        if self._closed:
            raise StoreError(f"{action} failed: the store on {self._masked} is closed")
        try:
            yield
        except SQLAlchemyError as exc:
            raise StoreError(
                f"{action} failed on {self._masked}: {self._detail(exc)}"
            ) from exc

    @contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        try:
            with self._guard(action), self._engine.connect() as conn:
                conn.execution_options(**{SQLITE_IMMEDIATE: True})
                with conn.begin():
                    yield conn
        except StoreError as exc:
            room = self._room_note(exc.__cause__)
            if not room:
                raise
            raise StoreError(f"{exc}{room}") from exc.__cause__

    def _room_note(self, exc: BaseException | None) -> str:
        """For a write SQLite refused because its volume is full: how much room that
        volume has, as the workspace and results volumes' errors say (else "")."""
        orig = getattr(exc, "orig", None)
        if not (isinstance(orig, sqlite3.Error)
                and getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL):
            return ""
        directory = Path(self._url.database or "").parent
        return f" (the volume of {directory}: {volume_free(directory)})"

    @contextmanager
    def _connect(self, action: str) -> Iterator[Connection]:
        with self._guard(action), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _read(self, action: str) -> Iterator[Session]:
        with self._guard(action), Session(self._engine, expire_on_commit=False) as session:
            yield session


__all__ = [
    "FINAL_STATUSES",
    "FindingRecord",
    "HistoryEntry",
    "ScanRecord",
    "ScannerResultRecord",
    "Store",
    "StoredFindings",
    "TriageRecord",
    "alembic_config",
    "make_engine",
    "scrub_repository",
]

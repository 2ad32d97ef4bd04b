"""Findings over time in the database: each finished scan's lifecycle (new / existing /
fixed against the previous completed scan of the same tenant, repository, ref and
scanners), operator triage, and the history of a repository's scans.

Functions of a :class:`~sqlalchemy.Connection` inside the caller's transaction; the
:class:`~scanward.store.Store` wraps them. The decisions themselves are the pure
functions of :mod:`scanward.lifecycle`.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, func, select, text, update
from sqlalchemy.sql.elements import ColumnElement

from scanward import lifecycle as lc
from scanward.contract import Finding, ScanLifecycle, ScannerStatus, ScanStatus, Severity
from scanward.lifecycle import FindingState, Tracked, Triage, TriageState
from scanward.store.errors import UnknownFingerprint
from scanward.store.models import FindingRow, ScannerResultRow, ScanRow, TriageRow

__all__ = [
    "FindingRecord",
    "FindingsReader",
    "HistoryEntry",
    "TriageRecord",
    "compute",
    "fixed_findings",
    "history",
    "lock_ref",
    "read_lifecycle",
    "resolve_fingerprint",
    "scan_findings",
    "select_records",
    "set_triage",
    "shown_by",
    "triage_of",
]

# Scans a lifecycle is computed for; only completed ones are a later scan's baseline (a
# partial scan lacks an abandoned scanner's findings: they would all look fixed).
TRACKED_STATUSES = (ScanStatus.COMPLETED.value, ScanStatus.PARTIAL.value)
_F = FindingRow.__table__
_S = ScanRow.__table__
_FINDING_COLUMNS = (_F.c.id, _F.c.scanner, _F.c.rule_id, _F.c.severity, _F.c.path,
                    _F.c.start_line, _F.c.end_line, _F.c.start_column, _F.c.end_column,
                    _F.c.message, _F.c.fingerprint, _F.c.match_fingerprint, _F.c.suppression,
                    _F.c.state, _F.c.first_seen_scan_id, _F.c.first_seen_commit,
                    _F.c.first_seen_at)


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """A stored finding with its lifecycle and triage."""

    finding: Finding
    state: FindingState | None  # None: the scan has no lifecycle (not finished, failed)
    first_seen_scan_id: str | None
    first_seen_commit: str | None
    first_seen_at: datetime | None
    triage: Triage | None

    @property
    def key(self) -> str:
        """The match fingerprint (the exact one for findings stored before schema 0003)."""
        return self.finding.match_fingerprint or self.finding.fingerprint

    @property
    def suppressed(self) -> bool:
        return lc.suppressed(self.finding.suppression, self.triage)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One scan of a repository, with its lifecycle counts (None: not computed)."""

    scan_id: str
    tenant: str
    ref: str
    commit: str | None
    status: ScanStatus
    scanners: str | None
    created_at: datetime
    finished_at: datetime | None
    finding_count: int
    previous_scan_id: str | None
    new: int | None
    existing: int | None
    fixed: int | None
    suppressed: int | None


@dataclass(frozen=True, slots=True)
class TriageRecord:
    tenant: str
    repository: str
    match_fingerprint: str
    triage: Triage
    findings: int  # stored findings with this match fingerprint in the repository


# --------------------------------------------------------------------- lifecycle


Progress = Callable[[str, int], None]
# Ids per "id IN (...)" statement: well under SQLite's oldest limit on bound parameters.
_IDS_PER_STATEMENT = 900


def _no_progress(stage: str, count: int) -> None:
    pass


# The statements every finished scan runs, built once: SQLAlchemy then finds their
# compiled form by a memoized key instead of building and hashing each expression again
# (measured with the store's upserts: about half of a short statement's CPU).
_SR = ScannerResultRow.__table__
_SCAN = select(_S).where(_S.c.scan_id == bindparam("scan_id"))
_SUCCEEDED = select(_SR.c.scanner).where(
    _SR.c.scan_id == bindparam("scan_id"),
    _SR.c.status == ScannerStatus.SUCCEEDED.value)
_PREVIOUS = (
    select(_S.c.scan_id, _S.c.commit, _S.c.finished_at).where(
        _S.c.tenant == bindparam("tenant"), _S.c.repository == bindparam("repository"),
        _S.c.ref == bindparam("ref"), _S.c.scanners == bindparam("scanners"),
        _S.c.status == ScanStatus.COMPLETED.value, _S.c.new_count.is_not(None),
        _S.c.scan_id != bindparam("scan_id"), _S.c.finished_at < bindparam("finished_at"))
    .order_by(_S.c.finished_at.desc(), _S.c.scan_id.desc()).limit(1))
_TRACKED_COLUMNS = (_F.c.id, _F.c.match_fingerprint, _F.c.fingerprint, _F.c.scanner,
                    _F.c.suppression.is_not(None).label("suppressed"),
                    _F.c.first_seen_scan_id, _F.c.first_seen_commit, _F.c.first_seen_at)
_POSITION = (_F.c.path, _F.c.start_line, _F.c.start_column, _F.c.id)
_TRACKED = (select(*_TRACKED_COLUMNS).where(_F.c.scan_id == bindparam("scan_id"))
            .order_by(*_POSITION))
_TRACKED_OF = (select(*_TRACKED_COLUMNS).where(
    _F.c.scan_id == bindparam("scan_id"),
    _F.c.scanner.in_(bindparam("scanners", expanding=True))).order_by(*_POSITION))
# Bound names differ from the columns they set (SQLAlchemy reserves those for SET).
_FIRST_SEEN: dict[str, Any] = {"first_seen_scan_id": bindparam("b_scan"),
               "first_seen_commit": bindparam("b_commit"),
               "first_seen_at": bindparam("b_at")}
_MARK_EXISTING = (update(FindingRow).where(_F.c.id.in_(bindparam("ids", expanding=True)))
                  .values(state=FindingState.EXISTING.value, **_FIRST_SEEN))
_MARK_NEW = (update(FindingRow).where(
    _F.c.scan_id == bindparam("b_of"),
    _F.c.scanner.in_(bindparam("scanners", expanding=True)), _F.c.state.is_(None))
    .values(state=FindingState.NEW.value, **_FIRST_SEEN))
_COUNTS = update(ScanRow).where(_S.c.scan_id == bindparam("b_of")).values(
    previous_scan_id=bindparam("b_previous"), new_count=bindparam("b_new"),
    existing_count=bindparam("b_existing"), fixed_count=bindparam("b_fixed"),
    suppressed_count=bindparam("b_suppressed"))
_TRIAGE = select(TriageRow.__table__).where(TriageRow.tenant == bindparam("tenant"),
                                            TriageRow.repository == bindparam("repository"))
_TRIAGED = select(TriageRow.match_fingerprint).where(
    TriageRow.tenant == bindparam("tenant"), TriageRow.repository == bindparam("repository"),
    TriageRow.state != TriageState.OPEN.value)
_OPEN = and_(_F.c.scan_id == bindparam("scan_id"), _F.c.state.is_not(None),
             _F.c.suppression.is_(None),
             func.coalesce(_F.c.match_fingerprint, _F.c.fingerprint).not_in(_TRIAGED))
_OPEN_COUNTS = (select(_F.c.severity, _F.c.state, func.count()).where(_OPEN)
                .group_by(_F.c.severity, _F.c.state))
_RANK = case({s.value: i for i, s in enumerate(lc.SEVERITY_ORDER)}, value=_F.c.severity,
             else_=len(lc.SEVERITY_ORDER))
_FIRST_NEW = (select(*_FINDING_COLUMNS).where(_OPEN, _F.c.state == FindingState.NEW.value)
              .order_by(_RANK, _F.c.path, _F.c.start_line, _F.c.start_column, _F.c.rule_id,
                        _F.c.fingerprint).limit(bindparam("cap")))
_COMMIT = select(_S.c.commit).where(_S.c.scan_id == bindparam("scan_id"))


@dataclass(frozen=True, slots=True)
class _Counts:
    """What :func:`_record` wrote on the scan's row."""

    previous_scan_id: str | None
    previous_commit: str | None
    new: int
    existing: int
    fixed: int
    suppressed: int


def compute(conn: Connection, scan_id: str, *, cap: int,
            progress: Progress | None = None) -> ScanLifecycle | None:
    """Compute and record the scan's lifecycle, once (a repeated call reads what the
    first one recorded); None for a scan that is not completed or partial. ``progress``
    is called between steps (for heartbeats)."""
    scan = conn.execute(_SCAN, {"scan_id": scan_id}).one_or_none()
    if scan is None or scan.status not in TRACKED_STATUSES:
        return None
    if scan.new_count is not None:  # recorded by an earlier call
        return _recorded(conn, scan, cap)
    lock_ref(conn, scan.tenant, scan.repository, scan.ref)
    counts = _record(conn, scan, progress or _no_progress)
    return _lifecycle(conn, scan, counts, cap)


def _record(conn: Connection, scan: Any, progress: Progress) -> _Counts:
    ran = _succeeded(conn, scan.scan_id)
    previous = _previous(conn, scan)
    current = _tracked(conn, scan.scan_id, ran)
    before = _tracked(conn, previous.scan_id, None) if previous is not None else None
    progress("compared", len(current))
    result = lc.compare(current, before, ran)
    # Each row is written once: existing ones carry where they were first seen (a
    # previous row without it was itself first seen in the previous scan), grouped by
    # that origin into "id IN (...)" batches (set-based: one statement per batch, not
    # per row); then the rest of the compared rows are new, first seen now.
    origins: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    if previous is not None:
        for cur, prev in result.existing:
            origins[(prev.first_seen_scan_id or previous.scan_id,
                     prev.first_seen_commit or previous.commit,
                     prev.first_seen_at or previous.finished_at)].append(cur.id)
    carried = 0
    for (first_scan, first_commit, first_at), ids in origins.items():
        for i in range(0, len(ids), _IDS_PER_STATEMENT):
            batch = ids[i:i + _IDS_PER_STATEMENT]
            conn.execute(_MARK_EXISTING, {"ids": batch, "b_scan": first_scan,
                                          "b_commit": first_commit, "b_at": first_at})
            carried += len(batch)
            progress("carried", carried)
    if ran:
        conn.execute(_MARK_NEW, {"b_of": scan.scan_id, "scanners": ran,
                                 "b_scan": scan.scan_id, "b_commit": scan.commit,
                                 "b_at": scan.finished_at or scan.updated_at})
    triaged = _triaged_keys(conn, scan.tenant, scan.repository)

    def counted(row: Any) -> bool:
        return not row.suppressed and _key(row) not in triaged

    new = sum(map(counted, result.new))
    existing = sum(counted(cur) for cur, _ in result.existing)
    counts = _Counts(
        previous_scan_id=previous.scan_id if previous is not None else None,
        previous_commit=previous.commit if previous is not None else None,
        new=new, existing=existing, fixed=sum(map(counted, result.fixed)),
        suppressed=len(current) - new - existing)
    conn.execute(_COUNTS, {"b_of": scan.scan_id, "b_previous": counts.previous_scan_id,
                           "b_new": counts.new, "b_existing": counts.existing,
                           "b_fixed": counts.fixed, "b_suppressed": counts.suppressed})
    return counts


def read_lifecycle(conn: Connection, scan_id: str, *, cap: int) -> ScanLifecycle | None:
    """The recorded lifecycle of a scan, its severity counts and new findings with
    today's triage applied; None if none was computed."""
    return _recorded(conn, conn.execute(_SCAN, {"scan_id": scan_id}).one_or_none(), cap)


def _recorded(conn: Connection, scan: Any, cap: int) -> ScanLifecycle | None:
    """The lifecycle recorded on the scan's row (None if none was computed)."""
    if scan is None or scan.new_count is None:
        return None
    previous_commit = None
    if scan.previous_scan_id is not None:
        previous_commit = conn.execute(
            _COMMIT, {"scan_id": scan.previous_scan_id}).scalar_one_or_none()
    counts = _Counts(previous_scan_id=scan.previous_scan_id, previous_commit=previous_commit,
                     new=scan.new_count, existing=scan.existing_count or 0,
                     fixed=scan.fixed_count or 0, suppressed=scan.suppressed_count or 0)
    return _lifecycle(conn, scan, counts, cap)


def _lifecycle(conn: Connection, scan: Any, counts: _Counts, cap: int) -> ScanLifecycle:
    """The lifecycle from the recorded counts: severity counts and the first new findings
    of the scan's open findings (today's triage applied)."""
    params = {"scan_id": scan.scan_id, "tenant": scan.tenant,
              "repository": scan.repository}
    by_severity: dict[Severity, int] = {}
    new_by_severity: dict[Severity, int] = {}
    for severity, state, n in conn.execute(_OPEN_COUNTS, params):
        sev = Severity(severity)
        by_severity[sev] = by_severity.get(sev, 0) + int(n)
        if state == FindingState.NEW.value:
            new_by_severity[sev] = int(n)
    first_new = conn.execute(_FIRST_NEW, params | {"cap": cap})
    kept, _ = lc.cap_new([_finding_of(r) for r in first_new], cap)
    return ScanLifecycle(
        previous_scan_id=counts.previous_scan_id, previous_commit=counts.previous_commit,
        new=counts.new, existing=counts.existing, fixed=counts.fixed,
        suppressed=counts.suppressed, by_severity=by_severity,
        new_by_severity=new_by_severity, new_findings=kept,
        truncated=sum(new_by_severity.values()) > len(kept))


def _succeeded(conn: Connection, scan_id: str) -> list[str]:
    return sorted(conn.execute(_SUCCEEDED, {"scan_id": scan_id}).scalars())


def _previous(conn: Connection, scan: Any) -> Any | None:
    """The latest completed scan of the same tenant, repository, ref and scanners that
    finished before ``scan`` and has a lifecycle."""
    if scan.scanners is None or scan.finished_at is None:
        return None
    return conn.execute(_PREVIOUS, {
        "tenant": scan.tenant, "repository": scan.repository, "ref": scan.ref,
        "scanners": scan.scanners, "scan_id": scan.scan_id,
        "finished_at": scan.finished_at}).one_or_none()


def _tracked(conn: Connection, scan_id: str, scanners: Sequence[str] | None
             ) -> list[Tracked[Any]]:
    """The scan's findings (of ``scanners``) for :func:`lifecycle.compare`, in position
    order so that repeated keys pair stably; each ref is its row."""
    if scanners is None:
        rows = conn.execute(_TRACKED, {"scan_id": scan_id})
    else:
        rows = conn.execute(_TRACKED_OF, {"scan_id": scan_id, "scanners": list(scanners)})
    return [Tracked(ref=r, key=_key(r), scanner=r.scanner) for r in rows]


def _key(row: Any) -> str:
    """The match fingerprint (the exact one for findings stored before schema 0003)."""
    key: str = row.match_fingerprint or row.fingerprint
    return key


def _triaged_keys(conn: Connection, tenant: str, repository: str) -> set[str]:
    return {k for k, t in triage_of(conn, tenant, repository).items()
            if t.state is not TriageState.OPEN}


def lock_ref(conn: Connection, tenant: str, repository: str, ref: str) -> None:
    """Until the transaction ends, be the only one finishing or comparing a scan of
    (tenant, repository, ref) on PostgreSQL: scans of one ref finishing at once are
    compared one after the other (SQLite writers are serialised anyway). Re-entrant."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                     {"k": _lock_key(tenant, repository, ref)})


def _lock_key(*parts: str) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# ---------------------------------------------------------------------- findings


def scan_findings(conn: Connection, scan_id: str) -> list[FindingRecord]:
    """Every stored finding of the scan, most severe first, with lifecycle and triage."""
    return list(FindingsReader(conn, scan_id).records())


def fixed_findings(conn: Connection, scan_id: str) -> list[FindingRecord]:
    """The previous scan's findings that this scan no longer has (the same comparison
    :func:`compute` made), with today's triage; empty without a previous scan."""
    return list(FindingsReader(conn, scan_id).records(fixed=True))


# Rows fetched at a time while streaming (a server-side cursor on PostgreSQL).
_YIELD_PER = 1_000


class FindingsReader:
    """A scan's findings read as a stream, in the order :func:`lifecycle.most_severe_first`
    gives (the database sorts them), so that an export's memory does not grow with the
    number of findings. Read twice (e.g. a SARIF export's rules, then its results) only
    inside one transaction that sees one snapshot (:meth:`Store.findings_reader`)."""

    def __init__(self, conn: Connection, scan_id: str) -> None:
        self._conn = conn
        self._scan_id = scan_id
        self._scan: Any = None
        self._triage: dict[str, Triage] | None = None
        self._fixed: tuple[str, set[int]] | None = None  # (previous scan, fixed row ids)

    def records(self, *, fixed: bool = False, by_scanner: bool = False
                ) -> Iterator[FindingRecord]:
        """The scan's findings (with ``fixed``: the previous scan's findings it no longer
        has), most severe first; with ``by_scanner`` grouped by scanner name first."""
        scan = self._scan_row()
        if scan is None:
            return
        if fixed:
            previous, ids = self._fixed_ids(scan)
            if not ids:
                return
            source, state = previous, FindingState.FIXED
        else:
            source, ids, state = self._scan_id, set(), None
        triage = self._triage_of(scan)
        stmt = (select(*_FINDING_COLUMNS).where(_F.c.scan_id == source)
                .order_by(*_export_order(self._conn, by_scanner=by_scanner)))
        result = self._conn.execute(stmt, execution_options={"yield_per": _YIELD_PER})
        try:
            for r in result:
                if not fixed or r.id in ids:
                    yield _record_of(r, triage, state=state)
        finally:  # a reader that stops early frees its cursor
            result.close()

    def _scan_row(self) -> Any:
        if self._scan is None:
            self._scan = self._conn.execute(_SCAN, {"scan_id": self._scan_id}).one_or_none()
        return self._scan

    def _triage_of(self, scan: Any) -> dict[str, Triage]:
        if self._triage is None:
            self._triage = triage_of(self._conn, scan.tenant, scan.repository)
        return self._triage

    def _fixed_ids(self, scan: Any) -> tuple[str, set[int]]:
        """The ids of the previous scan's rows this scan no longer has (the comparison
        keeps only narrow rows; the findings themselves are streamed after)."""
        if self._fixed is None:
            if scan.new_count is None or scan.previous_scan_id is None:
                self._fixed = ("", set())
            else:
                ran = _succeeded(self._conn, scan.scan_id)
                result = lc.compare(_tracked(self._conn, scan.scan_id, ran),
                                    _tracked(self._conn, scan.previous_scan_id, None), ran)
                self._fixed = (scan.previous_scan_id, {row.id for row in result.fixed})
        return self._fixed


def _export_order(conn: Connection, *, by_scanner: bool) -> list[ColumnElement[Any]]:
    """The ORDER BY of :func:`lifecycle.most_severe_first` (severity rank, path, line or
    0, column or 0, rule, fingerprint: unique within a scan, so a total order), by
    scanner first with ``by_scanner``. Text compares as Python compares str, by code
    point: SQLite's BINARY collation does (UTF-8 bytes sort as code points); PostgreSQL
    needs "C", its default collation may be a locale's."""

    def text_(column: ColumnElement[Any]) -> ColumnElement[Any]:
        return column.collate("C") if conn.dialect.name == "postgresql" else column

    order = [_RANK, text_(_F.c.path), func.coalesce(_F.c.start_line, 0),
             func.coalesce(_F.c.start_column, 0), text_(_F.c.rule_id),
             text_(_F.c.fingerprint)]
    return [text_(_F.c.scanner), *order] if by_scanner else order


def _record_of(r: Any, triage: dict[str, Triage], *,
               state: FindingState | None = None) -> FindingRecord:
    return FindingRecord(
        finding=_finding_of(r),
        state=state or (FindingState(r.state) if r.state is not None else None),
        first_seen_scan_id=r.first_seen_scan_id, first_seen_commit=r.first_seen_commit,
        first_seen_at=r.first_seen_at,
        triage=triage.get(r.match_fingerprint or r.fingerprint))


def _finding_of(r: Any) -> Finding:
    return Finding(
        scanner=r.scanner, rule_id=r.rule_id, severity=Severity(r.severity), path=r.path,
        start_line=r.start_line, end_line=r.end_line, start_column=r.start_column,
        end_column=r.end_column, message=r.message, fingerprint=r.fingerprint,
        match_fingerprint=r.match_fingerprint, suppression=r.suppression)


# ------------------------------------------------------------------------ triage


def triage_of(conn: Connection, tenant: str, repository: str) -> dict[str, Triage]:
    """Every triage decision of (tenant, repository), by match fingerprint."""
    rows = conn.execute(_TRIAGE, {"tenant": tenant, "repository": repository})
    return {r.match_fingerprint: Triage(state=TriageState(r.state), reason=r.reason,
                                        by=r.triaged_by, at=r.updated_at)
            for r in rows}


def resolve_fingerprint(conn: Connection, fingerprint: str, *, tenant: str | None,
                        repository: str | None) -> tuple[str, str, str, int]:
    """(tenant, repository, full match fingerprint, stored findings with it) for a match
    fingerprint or a unique prefix of one (at least 8 hex digits, like a short commit)."""
    fp = fingerprint.strip().lower()
    if not (8 <= len(fp) <= 64) or any(c not in "0123456789abcdef" for c in fp):
        raise UnknownFingerprint(f"{fingerprint!r} is not a fingerprint (8 to 64 hex "
                                 "digits, as `scanward findings` shows them)")
    found = _matching(conn, _F.c.match_fingerprint, fp, tenant=tenant,
                      repository=repository)
    if not found:
        # A finding stored before schema 0003 has no match fingerprint: `findings` shows
        # it, and the lifecycle and views look its triage up, by its exact one.
        found = _matching(conn, _F.c.fingerprint, fp, tenant=tenant, repository=repository,
                          legacy=True)
    if not found:
        where = "".join([f" in tenant {tenant}" if tenant else "",
                         f" of {repository}" if repository else ""])
        raise UnknownFingerprint(f"no stored finding has the fingerprint {fingerprint}{where}")
    if len(found) > 1:
        listed = "; ".join(f"{t} {r} {k[:12]}" for t, r, k, _ in found[:5])
        raise UnknownFingerprint(f"fingerprint {fingerprint} is ambiguous ({len(found)} "
                                 f"matches: {listed}): give more digits, --tenant or "
                                 "--repository")
    tenant_, repo_, key, count = found[0]
    return str(tenant_), str(repo_), str(key), int(count)


def _matching(conn: Connection, column: Any, fp: str, *, tenant: str | None,
              repository: str | None, legacy: bool = False
              ) -> list[tuple[Any, ...]]:
    """(tenant, repository, key, stored findings) of the findings whose ``column``
    (the match fingerprint, or with ``legacy`` the exact one of findings without a match
    fingerprint) is ``fp`` or starts with it."""
    match = column == fp if len(fp) == 64 else column.like(fp + "%")
    stmt = (select(_S.c.tenant, _S.c.repository, column, func.count())
            .join(_S, _S.c.scan_id == _F.c.scan_id).where(match)
            .group_by(_S.c.tenant, _S.c.repository, column))
    if legacy:
        stmt = stmt.where(_F.c.match_fingerprint.is_(None))
    if tenant is not None:
        stmt = stmt.where(_S.c.tenant == tenant)
    if repository is not None:
        stmt = stmt.where(_S.c.repository == repository)
    return [tuple(r) for r in conn.execute(stmt)]


def set_triage(conn: Connection, fingerprint: str, state: TriageState, reason: str, by: str,
               now: datetime, *, tenant: str | None, repository: str | None,
               insert: Any) -> TriageRecord:
    """Record an operator's decision for the finding(s) with this match fingerprint."""
    tenant_, repo_, key, count = resolve_fingerprint(conn, fingerprint, tenant=tenant,
                                                     repository=repository)
    values = {"tenant": tenant_, "repository": repo_, "match_fingerprint": key,
              "state": state.value, "reason": reason, "triaged_by": by, "updated_at": now}
    ins = insert(TriageRow).values(**values)
    conn.execute(ins.on_conflict_do_update(
        index_elements=["tenant", "repository", "match_fingerprint"],
        set_={k: ins.excluded[k] for k in ("state", "reason", "triaged_by", "updated_at")}))
    return TriageRecord(tenant=tenant_, repository=repo_, match_fingerprint=key,
                        triage=Triage(state=state, reason=reason, by=by, at=now),
                        findings=count)


# ----------------------------------------------------------------------- history


def history(conn: Connection, repository: str, *, ref: str | None, tenant: str | None,
            limit: int) -> list[HistoryEntry]:
    """The repository's scans, latest first."""
    stmt = select(_S).where(_S.c.repository == repository)
    if ref is not None:
        stmt = stmt.where(_S.c.ref == ref)
    if tenant is not None:
        stmt = stmt.where(_S.c.tenant == tenant)
    when = func.coalesce(_S.c.finished_at, _S.c.created_at)
    stmt = stmt.order_by(when.desc(), _S.c.scan_id.desc()).limit(limit)
    return [HistoryEntry(
        scan_id=r.scan_id, tenant=r.tenant, ref=r.ref, commit=r.commit,
        status=ScanStatus(r.status), scanners=r.scanners,
        created_at=r.created_at, finished_at=r.finished_at,
        finding_count=r.finding_count, previous_scan_id=r.previous_scan_id, new=r.new_count,
        existing=r.existing_count, fixed=r.fixed_count, suppressed=r.suppressed_count)
        for r in conn.execute(stmt)]


def shown_by(*, new_only: bool = False, include_suppressed: bool = False,
             severities: Iterable[Severity] = ()) -> Callable[[FindingRecord], bool]:
    """Whether a ``findings`` view shows a record: open ones (and suppressed ones with
    ``include_suppressed``), only new ones with ``new_only``, of ``severities`` if given."""
    wanted = frozenset(severities)

    def shown(r: FindingRecord) -> bool:
        return ((include_suppressed or not r.suppressed)
                and (not new_only or r.state is FindingState.NEW)
                and (not wanted or r.finding.severity in wanted))

    return shown


def select_records(records: Sequence[FindingRecord], *, new_only: bool = False,
                   include_suppressed: bool = False,
                   severities: Iterable[Severity] = ()) -> list[FindingRecord]:
    """The records a ``findings`` view shows (see :func:`shown_by`)."""
    shown = shown_by(new_only=new_only, include_suppressed=include_suppressed,
                     severities=severities)
    return [r for r in records if shown(r)]

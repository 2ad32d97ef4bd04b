"""Findings over time in the store, on a real SQLite file and the real PostgreSQL: the
lifecycle of finished scans, triage, history, and migration 0003 of a database filled by
the previous schema."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from scanward.contract import (
    Finding,
    ScannerRun,
    ScannerStatus,
    ScanStatus,
    ScanSummary,
    Severity,
)
from scanward.example import git
from scanward.lifecycle import NEW_FINDINGS_CAP, FindingState, TriageState
from scanward.sarif import load_findings
from scanward.sarif_export import to_sarif
from scanward.store import Store, UnknownFingerprint, normalize_url
from tests.helpers import schema
from tests.helpers.processes import scanward
from tests.test_lifecycle import check_sarif
from tests.test_sarif import APP, MULTI, O_FUNCTION, STORED_BANDIT, run_bandit

REPO = "https://github.com/acme/app"
COMMITS = [f"{i:040x}" for i in range(1, 10)]


def h(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def finding(rule: str, line: int, *, key: str | None = None, scanner: str = "bandit",
            severity: Severity = Severity.HIGH, suppression: str | None = None,
            path: str = "app.py") -> Finding:
    """A finding at ``line`` whose match fingerprint is ``key`` (default: the rule), so
    that moving it keeps its identity across scans, as the SARIF reader makes it."""
    return Finding(scanner=scanner, rule_id=rule, severity=severity, path=path,
                   start_line=line, end_line=line, message=f"{rule} found",
                   fingerprint=h(scanner, rule, path, line),
                   match_fingerprint=h("match", scanner, key or rule, path),
                   suppression=suppression)


class Scans:
    """Records finished scans of one (tenant, repository, ref) as the activities do."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.n = 0

    def run(self, findings: dict[str, list[Finding]], *, status: ScanStatus = ScanStatus.COMPLETED,
            abandoned: tuple[str, ...] = (), ref: str = "main", repository: str = REPO,
            commit: str | None = None, tenant: str = "acme") -> str:
        self.n += 1
        scan_id = f"scan-{tenant}-{self.n:020x}"
        commit = commit or COMMITS[self.n - 1]
        runs = []
        for scanner, found in sorted(findings.items()):
            if scanner in abandoned:
                runs.append(ScannerRun(scanner=scanner, status=ScannerStatus.ABANDONED,
                                       attempts=3, reason="oom"))
                continue
            count = self.store.record_scanner_result(
                scan_id=scan_id, tenant=tenant, repository=repository, ref=ref,
                commit=commit, scanner=scanner, attempt=1, findings=found)
            runs.append(ScannerRun(scanner=scanner, status=ScannerStatus.SUCCEEDED,
                                   attempts=1, finding_count=count))
        self.store.finish_scan(ScanSummary(
            scan_id=scan_id, tenant=tenant, repository=repository, ref=ref, commit=commit,
            status=status, scanners=tuple(runs)))
        return scan_id


@pytest.fixture
def scans(store: Store) -> Scans:
    return Scans(store)


def states(store: Store, scan_id: str) -> dict[str, tuple[str | None, int | None, str | None]]:
    """rule -> (state, line, first seen commit)."""
    return {r.finding.rule_id: (r.state.value if r.state else None, r.finding.start_line,
                                r.first_seen_commit)
            for r in store.scan_findings(scan_id)}


def test_new_existing_fixed_and_first_seen(store: Store, scans: Scans) -> None:
    # Commit 1: flaws A and B. Commit 2 fixes A, moves B down 5 lines, adds C.
    s1 = scans.run({"bandit": [finding("A", 3), finding("B", 10)]})
    first = store.compute_lifecycle(s1)
    assert first is not None
    assert (first.previous_scan_id, first.new, first.existing, first.fixed) == (None, 2, 0, 0)
    assert states(store, s1) == {"A": ("new", 3, COMMITS[0]), "B": ("new", 10, COMMITS[0])}

    s2 = scans.run({"bandit": [finding("B", 15), finding("C", 20, severity=Severity.LOW)]})
    second = store.compute_lifecycle(s2)
    assert second is not None
    assert (second.previous_scan_id, second.previous_commit) == (s1, COMMITS[0])
    assert (second.new, second.existing, second.fixed, second.suppressed) == (1, 1, 1, 0)
    assert [f.rule_id for f in second.new_findings] == ["C"]
    assert second.new_by_severity == {Severity.LOW: 1}
    assert second.by_severity == {Severity.HIGH: 1, Severity.LOW: 1}
    assert not second.truncated
    # B moved and is the same finding, first seen at commit 1 (and when).
    assert states(store, s2) == {"B": ("existing", 15, COMMITS[0]),
                                 "C": ("new", 20, COMMITS[1])}
    b1, b2 = (next(r for r in store.scan_findings(s) if r.finding.rule_id == "B")
              for s in (s1, s2))
    assert b2.first_seen_scan_id == s1 and b2.first_seen_at == b1.first_seen_at
    assert [(r.finding.rule_id, r.state) for r in store.fixed_findings(s2)] == [
        ("A", FindingState.FIXED)]

    # Third: B still there, first seen still commit 1.
    s3 = scans.run({"bandit": [finding("B", 40), finding("C", 20, severity=Severity.LOW)]})
    third = store.compute_lifecycle(s3)
    assert third is not None and (third.new, third.existing, third.fixed) == (0, 2, 0)
    assert states(store, s3)["B"] == ("existing", 40, COMMITS[0])
    assert store.fixed_findings(s3) == []


def test_compute_is_idempotent(store: Store, scans: Scans) -> None:
    s1 = scans.run({"bandit": [finding("A", 3)]})
    store.compute_lifecycle(s1)
    s2 = scans.run({"bandit": [finding("B", 3)]})
    once = store.compute_lifecycle(s2)
    # A retried finalize_scan (finish again, compute again) changes nothing.
    scans.store.finish_scan(ScanSummary(
        scan_id=s2, tenant="acme", repository=REPO, ref="main", commit=COMMITS[1],
        status=ScanStatus.COMPLETED,
        scanners=(ScannerRun(scanner="bandit", status=ScannerStatus.SUCCEEDED, attempts=1),)))
    assert store.compute_lifecycle(s2) == once
    assert once is not None and (once.new, once.fixed) == (1, 1)
    assert states(store, s2) == {"B": ("new", 3, COMMITS[1])}


def test_only_completed_scans_of_the_same_ref_and_scanners_are_compared(
        store: Store, scans: Scans) -> None:
    base = scans.run({"bandit": [finding("A", 1)], "semgrep": [finding("S", 1,
                                                                        scanner="semgrep")]})
    assert store.compute_lifecycle(base) is not None
    # Another ref, another scanner set: each is its own first scan.
    other_ref = scans.run({"bandit": [finding("A", 1)], "semgrep": []}, ref="feature")
    other_set = scans.run({"bandit": [finding("A", 1)]})
    for scan_id in (other_ref, other_set):
        lifecycle = store.compute_lifecycle(scan_id)
        assert lifecycle is not None and lifecycle.previous_scan_id is None, scan_id
    # A failed scan has no lifecycle and is never a baseline.
    failed = scans.run({}, status=ScanStatus.FAILED)
    assert store.compute_lifecycle(failed) is None
    # A partial scan (semgrep abandoned): compared, but semgrep's findings are not fixed.
    partial = scans.run({"bandit": [finding("A", 1)], "semgrep": []},
                        status=ScanStatus.PARTIAL, abandoned=("semgrep",))
    lifecycle = store.compute_lifecycle(partial)
    assert lifecycle is not None
    assert (lifecycle.previous_scan_id, lifecycle.existing, lifecycle.fixed) == (base, 1, 0)
    # ... and is not the baseline of the next complete scan: that compares with base.
    nxt = scans.run({"bandit": [], "semgrep": [finding("S", 1, scanner="semgrep")]})
    lifecycle = store.compute_lifecycle(nxt)
    assert lifecycle is not None
    assert (lifecycle.previous_scan_id, lifecycle.existing, lifecycle.fixed) == (base, 1, 1)


def test_triage_sticks_and_suppressed_findings_are_not_counted(store: Store,
                                                                 scans: Scans) -> None:
    s1 = scans.run({"bandit": [finding("A", 3), finding("B", 10),
                               finding("N", 12, severity=Severity.LOW, suppression="inSource")]})
    first = store.compute_lifecycle(s1)
    assert first is not None
    # The tool's suppression: stored and visible, but neither new nor counted.
    assert (first.new, first.suppressed) == (2, 1)
    assert first.by_severity == {Severity.HIGH: 2}
    n = next(r for r in store.scan_findings(s1) if r.finding.rule_id == "N")
    assert n.suppressed and n.finding.suppression == "inSource"

    a = next(r for r in store.scan_findings(s1) if r.finding.rule_id == "A")
    done = store.set_triage(a.key[:10], TriageState.FALSE_POSITIVE, reason="test fixture",
                            by="ana")
    assert (done.tenant, done.repository, done.match_fingerprint, done.findings) == (
        "acme", REPO, a.key, 1)
    # Scan 2: A moved; its triage follows it, and a new flaw D appears.
    s2 = scans.run({"bandit": [finding("A", 30), finding("B", 10), finding("D", 5),
                               finding("N", 12, severity=Severity.LOW, suppression="inSource")]})
    second = store.compute_lifecycle(s2)
    assert second is not None
    assert (second.new, second.existing, second.suppressed, second.fixed) == (1, 1, 2, 0)
    assert second.by_severity == {Severity.HIGH: 2}  # B and D
    a2 = next(r for r in store.scan_findings(s2) if r.finding.rule_id == "A")
    assert a2.suppressed and a2.triage is not None
    assert (a2.triage.state, a2.triage.reason, a2.triage.by) == (
        TriageState.FALSE_POSITIVE, "test fixture", "ana")
    assert a2.state is FindingState.EXISTING

    # A triaged finding that disappears is not counted as fixed either (still listed).
    s3 = scans.run({"bandit": [finding("B", 10), finding("D", 5)]})
    third = store.compute_lifecycle(s3)
    assert third is not None and (third.fixed, third.existing) == (0, 2)
    assert {r.finding.rule_id for r in store.fixed_findings(s3)} == {"A", "N"}
    # Reopening counts it again, in every scan.
    store.set_triage(a.key, TriageState.OPEN, reason="was real", by="bo")
    assert not next(r for r in store.scan_findings(s2) if r.finding.rule_id == "A").suppressed
    lifecycle = store.lifecycle(s2)
    assert lifecycle is not None and lifecycle.by_severity == {Severity.HIGH: 3}


def test_triage_of_an_unknown_or_ambiguous_fingerprint_is_refused(store: Store,
                                                                  scans: Scans) -> None:
    with pytest.raises(UnknownFingerprint, match="no stored finding has the fingerprint"):
        store.set_triage("deadbeefdeadbeef", TriageState.ACCEPTED_RISK, reason="x", by="y")
    with pytest.raises(UnknownFingerprint, match="is not a fingerprint"):
        store.set_triage("B602", TriageState.ACCEPTED_RISK, reason="x", by="y")
    # The same code in two repositories (a fork): the repository says which one.
    scans.run({"bandit": [finding("A", 3)]})
    scans.run({"bandit": [finding("A", 3)]}, repository="https://github.com/fork/app")
    key = h("match", "bandit", "A", "app.py")
    with pytest.raises(UnknownFingerprint, match="ambiguous"):
        store.set_triage(key, TriageState.ACCEPTED_RISK, reason="x", by="y")
    done = store.set_triage(key, TriageState.ACCEPTED_RISK, reason="x", by="y",
                            repository="https://github.com/fork/app")
    assert done.repository == "https://github.com/fork/app"


def test_new_findings_in_the_summary_are_capped(store: Store, scans: Scans) -> None:
    many = [finding(f"R{i:03d}", i + 1, severity=Severity.CRITICAL if i == 70 else
                    Severity.MEDIUM) for i in range(NEW_FINDINGS_CAP + 30)]
    scan_id = scans.run({"bandit": many})
    lifecycle = store.compute_lifecycle(scan_id)
    assert lifecycle is not None
    assert lifecycle.new == NEW_FINDINGS_CAP + 30
    assert lifecycle.truncated and len(lifecycle.new_findings) == NEW_FINDINGS_CAP
    assert lifecycle.new_findings[0].rule_id == "R070"  # most severe first


def test_history_lists_scans_with_counts(store: Store, scans: Scans) -> None:
    s1 = scans.run({"bandit": [finding("A", 3), finding("B", 4)]})
    store.compute_lifecycle(s1)
    s2 = scans.run({"bandit": [finding("B", 9), finding("C", 1)]})
    store.compute_lifecycle(s2)
    scans.run({"bandit": []}, ref="feature")
    entries = store.history(REPO, ref="main")
    assert [(e.scan_id, e.new, e.existing, e.fixed, e.previous_scan_id) for e in entries] == [
        (s2, 1, 1, 1, s1), (s1, 2, 0, 0, None)]
    assert entries[0].commit == COMMITS[1] and entries[0].scanners == "bandit"
    assert len(store.history(REPO)) == 3
    assert store.history(REPO, tenant="other") == []
    # Credentials in the URL asked for are dropped, as when storing.
    assert len(store.history("https://token@github.com/acme/app", ref="main")) == 2


async def test_history_of_several_tenants_names_each_rows_tenant(
        store: Store, scans: Scans, db_url: str) -> None:
    """Each tenant's scans are compared among themselves: `history` without --tenant
    interleaved two tenants' rows with no tenant column, so a row's "new" and "fixed"
    read as if compared with the row below it, another tenant's scan."""
    acme = scans.run({"bandit": [finding("A", 3)]})
    store.compute_lifecycle(acme)
    globex = scans.run({"bandit": [finding("B", 4)]}, tenant="globex")
    store.compute_lifecycle(globex)
    code, out, err = await scanward("history", REPO, env={"SCANWARD_DATABASE_URL": db_url})
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in out.splitlines() if line.startswith("│ scan-")}
    assert rows == {acme: "acme", globex: "globex"}, out
    code, out, err = await scanward("history", REPO, "--tenant", "acme",
                                    env={"SCANWARD_DATABASE_URL": db_url})
    assert code == 0 and acme in out and globex not in out and "tenant" not in out, out


def test_migration_0003_keeps_rows_stored_at_0002(db_url: str) -> None:
    """A database created and filled by the previous schema (0002) is upgraded in place:
    its scans and findings stay (no lifecycle: never a baseline), and the next scan of
    the ref is its own first one."""
    old_scan = "scan-acme-00000000000000000old"
    with schema.database_at(db_url, "0002") as engine:
        with engine.begin() as conn:
            schema.insert_scan(conn, old_scan, repository=REPO, commit=COMMITS[0],
                        status="completed", finding_count=2)
            schema.insert_scanner_result(conn, old_scan, finding_count=2)
            for rule, line in (("A", 3), ("B", 4)):
                old = finding(rule, line)
                conn.execute(text(
                    "INSERT INTO findings (scan_id, fingerprint, scanner, rule_id, severity, "
                    "path, start_line, end_line, start_column, end_column, message) VALUES "
                    "(:s, :fp, 'bandit', :rule, 'high', 'app.py', :line, :line, 5, 9, :msg)"),
                    {"s": old_scan, "fp": old.fingerprint, "rule": rule, "line": line,
                     "msg": old.message})
        with engine.connect() as conn:
            assert schema.revision_of(conn) == "0002"

    with Store.open(db_url) as store:  # upgrades to 0003
        assert store.schema_revision() == "0003"
        kept = store.findings(old_scan)
        assert [(f.rule_id, f.start_line, f.start_column, f.match_fingerprint,
                 f.suppression) for f in kept] == [("A", 3, 5, None, None),
                                                   ("B", 4, 5, None, None)]
        record = store.get_scan(old_scan)
        assert record is not None and record.status is ScanStatus.COMPLETED
        assert [r.state for r in store.scan_findings(old_scan)] == [None, None]
        assert store.lifecycle(old_scan) is None
        (entry,) = store.history(REPO)
        assert (entry.scan_id, entry.finding_count, entry.new) == (old_scan, 2, None)
        # The first scan after the upgrade is a first scan: the old one has no lifecycle.
        s1 = Scans(store).run({"bandit": [finding("A", 3)]}, commit=COMMITS[1])
        lifecycle = store.compute_lifecycle(s1)
        assert lifecycle is not None
        assert (lifecycle.previous_scan_id, lifecycle.new) == (None, 1)

    # And back to 0002 (ALTER TABLE DROP COLUMN, no table copy): every row is kept.
    schema.downgrade(db_url, "0002")
    with schema.raw_engine(db_url) as engine, engine.connect() as conn:
        insp = inspect(conn)
        assert "match_fingerprint" not in {c["name"] for c in insp.get_columns("findings")}
        assert "triage" not in insp.get_table_names()
        assert conn.execute(text("SELECT count(*) FROM findings")).scalar_one() == 3
        assert conn.execute(text("SELECT count(*) FROM scans")).scalar_one() == 2
    with Store.open(db_url) as store:  # and up again
        assert len(store.findings(old_scan)) == 2


def test_finished_at_is_the_first_final_status(store: Store, scans: Scans) -> None:
    s1 = scans.run({"bandit": [finding("A", 3)]})
    before = store.history(REPO)[0].finished_at
    assert before is not None and before <= datetime.now(UTC)
    scans.store.finish_scan(ScanSummary(
        scan_id=s1, tenant="acme", repository=REPO, ref="main", commit=COMMITS[0],
        status=ScanStatus.COMPLETED, scanners=()))
    assert store.history(REPO)[0].finished_at == before


# ---------------------------------------- real bandit on a git repository, through the store


def bandit_scan(repo: Path, files: dict[str, str], message: str) -> tuple[str, list[Finding]]:
    """Commit ``files`` to the git repository ``repo``, run the real bandit on it and
    read its SARIF as persist_results does (the checkout given): (commit, findings)."""
    repo.mkdir(exist_ok=True)
    for name, code in files.items():
        (repo / name).write_text(code)
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", message)
    out = repo.parent / f"{message}.sarif"
    run_bandit(repo, out)
    return (git(repo, "rev-parse", "HEAD"),
            load_findings(out, scanner="bandit", source_root=repo, checkout=repo))


def test_multi_line_calls_keep_identity_and_triage_when_code_follows(
        store: Store, scans: Scans, tmp_path: Path) -> None:
    """bandit 1.9 quotes another line for a call over several lines; the match basis is
    the checkout's lines instead, so code appended after n() leaves n() existing (not
    new and fixed), its triage stays on n(), and the appended o() is new."""
    repo = tmp_path / "edge"
    c1, found1 = bandit_scan(repo, {"multi.py": MULTI}, "m and n")
    s1 = scans.run({"bandit": found1}, commit=c1)
    assert store.compute_lifecycle(s1) is not None
    n = next(r for r in store.scan_findings(s1) if r.finding.start_line == 8)
    store.set_triage(n.key, TriageState.FALSE_POSITIVE, reason="cmd is constant", by="ana")

    c2, found2 = bandit_scan(repo, {"multi.py": MULTI + O_FUNCTION}, "o")
    s2 = scans.run({"bandit": found2}, commit=c2)
    second = store.compute_lifecycle(s2)
    assert second is not None
    assert (second.new, second.existing, second.fixed) == (1, 2, 0)  # o new; n triaged
    by_line = {r.finding.start_line: r for r in store.scan_findings(s2)
               if r.finding.rule_id == "B602"}
    assert by_line[8].state is FindingState.EXISTING and by_line[8].key == n.key
    assert by_line[8].triage is not None and by_line[8].suppressed
    assert by_line[13].state is FindingState.NEW and by_line[13].triage is None
    assert [f.rule_id for f in second.new_findings] == ["B602"]  # o, the gate's only one
    assert not store.fixed_findings(s2)

    c3, found3 = bandit_scan(repo, {"multi.py": MULTI + O_FUNCTION + "X = 1\n"}, "X")
    s3 = scans.run({"bandit": found3}, commit=c3)
    third = store.compute_lifecycle(s3)
    assert third is not None
    assert (third.new, third.existing, third.fixed) == (0, 3, 0)
    assert third.new_by_severity == {}  # --fail-on-new high passes


def test_findings_stored_before_the_snippet_check_still_match(
        store: Store, scans: Scans, tmp_path: Path) -> None:
    """A database filled before this version: its rows carry the fingerprints the
    previous algorithm gave (pinned in tests/test_sarif.py, STORED_BANDIT). The first
    scan after the upgrade, of the same code, finds every one existing, none new or
    fixed, and the triage made before stays."""
    repo = tmp_path / "app"
    commit, found = bandit_scan(repo, {"app.py": APP}, "app")
    stored = {(rule, line): (match, exact) for rule, _, line, match, exact in STORED_BANDIT}
    before = []
    for f in found:
        match, exact = stored[(f.rule_id, f.start_line or 0)]
        before.append(f.model_copy(update={"match_fingerprint": match, "fingerprint": exact}))
    s1 = scans.run({"bandit": before}, commit=commit)
    assert store.compute_lifecycle(s1) is not None
    store.set_triage(stored[("B602", 14)][0], TriageState.ACCEPTED_RISK, reason="internal",
                     by="security-team")

    commit2, found2 = bandit_scan(repo, {"app.py": APP + "\n\nX = 1\n"}, "after upgrade")
    s2 = scans.run({"bandit": found2}, commit=commit2)
    after = store.compute_lifecycle(s2)
    assert after is not None
    assert (after.new, after.existing, after.fixed, after.suppressed) == (0, 3, 0, 1)
    triaged = [r for r in store.scan_findings(s2) if r.triage is not None]
    assert [(r.finding.rule_id, r.finding.start_line, r.first_seen_commit)
            for r in triaged] == [("B602", 14, commit)]


# ------------------------------------------------------------------ triage


def test_a_finding_stored_before_0003_can_be_triaged_by_the_fingerprint_shown(
        db_url: str) -> None:
    """`findings` shows a pre-0003 finding under its exact fingerprint (it has no match
    fingerprint) and the lifecycle reads triage by that key; `triage` refused it."""
    with schema.database_at(db_url, "0002") as engine, engine.begin() as conn:
        schema.insert_scan(conn, "scan-old", repository=REPO, commit=COMMITS[0],
                           status="completed", finding_count=1)
        conn.execute(text(
            "INSERT INTO findings (scan_id, fingerprint, scanner, rule_id, severity, path, "
            "start_line, end_line, message) VALUES ('scan-old', :fp, 'bandit', 'B602', "
            "'high', 'app.py', 3, 3, 'shell=True')"), {"fp": "ab" * 32})
    with Store.open(db_url) as store:
        (record,) = store.scan_findings("scan-old")
        shown = record.key[:12]
        assert shown == "abababababab"
        done = store.set_triage(shown, TriageState.FALSE_POSITIVE, reason="test", by="ana")
        assert (done.tenant, done.repository, done.match_fingerprint, done.findings) == (
            "acme", REPO, "ab" * 32, 1)
        (record,) = store.scan_findings("scan-old")
        assert record.suppressed
        assert record.triage is not None
        assert record.triage.state is TriageState.FALSE_POSITIVE


# ------------------------------------------------------------------ lifecycle


def _summary(scan_id: str, commit: str, count: int) -> ScanSummary:
    return ScanSummary(scan_id=scan_id, tenant="acme", repository=REPO, ref="main",
                       commit=commit, status=ScanStatus.COMPLETED,
                       scanners=(ScannerRun(scanner="bandit", status=ScannerStatus.SUCCEEDED,
                                            attempts=1, finding_count=count),))


def test_scans_of_a_ref_finishing_at_once_are_compared_in_finish_order(
        postgres_database: str) -> None:
    """Two pushes scanned at once, finalized by two workers on one PostgreSQL. Scan A
    takes its finish time, then is slow to write it (here: a row lock held elsewhere);
    scan B finishes later meanwhile. Before the fix B was compared with the scan before
    A (the lock that orders scans of a ref was taken after the finish time was chosen
    and written), so a finding A introduced was "new" again in B, first seen at B's
    commit, and `history` listed A before B with B "since" the scan before A."""
    url = postgres_database
    with Store.open(url) as store, Store.open(url) as other:
        scans = Scans(store)
        base = scans.run({"bandit": [finding("A", 1)]})
        assert store.compute_lifecycle(base) is not None
        found = [finding("A", 1), finding("X", 5)]  # X: introduced by commit 1
        for scan_id, commit in (("scan-a", COMMITS[1]), ("scan-b", COMMITS[2])):
            store.record_scanner_result(scan_id=scan_id, tenant="acme", repository=REPO,
                                        ref="main", commit=commit, scanner="bandit",
                                        attempt=1, findings=found)
        locker = create_engine(normalize_url(url), poolclass=NullPool)
        errors: list[BaseException] = []

        def finish(s: Store, scan_id: str, commit: str) -> None:
            try:
                s.finish_and_track(_summary(scan_id, commit, 2))
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        try:
            with locker.connect() as conn:
                tx = conn.begin()
                conn.execute(text("SELECT 1 FROM scans WHERE scan_id = 'scan-a' FOR UPDATE"))
                a = threading.Thread(target=finish, args=(store, "scan-a", COMMITS[1]))
                a.start()
                _wait_for_lock_waiters(conn, 1)
                b = threading.Thread(target=finish, args=(other, "scan-b", COMMITS[2]))
                b.start()
                time.sleep(1.0)  # B runs to its end, or waits behind A
                tx.rollback()
            a.join(60)
            b.join(60)
        finally:
            locker.dispose()
        assert errors == []
        history = store.history(REPO, ref="main")
        order = [h.scan_id for h in reversed(history)]
        assert order[0] == base
        first, second = order[1], order[2]
        by_id = {h.scan_id: h for h in history}
        # Whichever finished second is compared with the one that finished first.
        assert by_id[second].previous_scan_id == first
        assert (by_id[second].new, by_id[second].existing) == (0, 2)
        x = next(r for r in store.scan_findings(second) if r.finding.rule_id == "X")
        assert x.state is FindingState.EXISTING
        assert x.first_seen_scan_id == first


def _wait_for_lock_waiters(conn: Connection, n: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        waiting = conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")).scalar_one()
        if waiting >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the finalize never waited on the row lock")


# ------------------------------------------------------------------ SARIF


def test_sarif_has_a_run_for_every_scanner_that_ran_even_without_findings() -> None:
    """bandit ran and found nothing (its flaws were fixed), semgrep found one. Without a
    bandit run a code-scanning upload never updates bandit's category, so bandit's old
    alerts stay open; a scan with no findings at all gave `"runs": []`."""
    semgrep = finding("S", 2, scanner="semgrep")
    doc = to_sarif([(semgrep, FindingState.NEW, None)], repository=REPO,
                   commit=COMMITS[1], ref="main", scanners=("bandit", "semgrep"))
    check_sarif(doc)
    assert [(r["tool"]["driver"]["name"], len(r["results"])) for r in doc["runs"]] == [
        ("bandit", 0), ("semgrep", 1)]
    assert doc["runs"][0]["automationDetails"] == {"id": "scanward/bandit/"}
    clean = to_sarif([], repository=REPO, commit=COMMITS[1], ref="main",
                     scanners=("bandit",))
    check_sarif(clean)
    assert [r["results"] for r in clean["runs"]] == [[]]
    # Callers that pass no scanners get what they got before.
    assert to_sarif([], repository=REPO, commit=None, ref=None)["runs"] == []


# ------------------------------------------------------------ streamed exports


def _varied(scan: int, k: int) -> Finding:
    """Findings whose paths and rules sort differently by code point than in a locale's
    collation (case, '_', '-', ' ', 'é'), without lines or columns too."""
    paths = ("a.py", "B.py", "a_b.py", "aB.py", "é.py", "z.py", "A b.py", "a-b.py")
    rules = ("R1", "r2", "R_3", "Rb", "R-4")
    line = None if k % 7 == 0 else k % 5 + 1
    return Finding(scanner=("bandit", "semgrep")[k % 2], rule_id=rules[k % 5],
                   severity=tuple(Severity)[k // 2 % 5], path=paths[k % 8],
                   start_line=line, end_line=line, start_column=None if k % 3 else k % 4,
                   message=f"flaw {k} ü \"quoted\"", fingerprint=h("varied", scan, k),
                   match_fingerprint=h("varied-match", k),
                   suppression="inSource" if k % 11 == 0 else None)


def test_streamed_json_and_sarif_are_the_documents_built_whole(
        store: Store, scans: Scans, db_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`findings --format json|sarif` stream (the database sorts, the CLI writes a finding
    at a time): the output is byte for byte what the whole list gave, json.dumps of
    every record / of to_sarif, in most_severe_first order (on PostgreSQL too, whatever
    its collation), in every view."""
    from scanward.cli import findings_view
    from scanward.cli.findings_view import FindingsFormat, FindingsView, print_findings
    from scanward.lifecycle import most_severe_first
    from scanward.store.tracking import select_records

    s1 = scans.run({"bandit": [_varied(1, k) for k in range(0, 80, 2)],
                    "semgrep": [_varied(1, k) for k in range(1, 80, 2)]})
    store.compute_lifecycle(s1)
    kept = [k for k in range(100) if k % 3 and k != 40]
    s2 = scans.run({"bandit": [_varied(2, k) for k in kept if k % 2 == 0],
                    "semgrep": [_varied(2, k) for k in kept if k % 2]})
    store.compute_lifecycle(s2)
    triaged = next(r for r in store.scan_findings(s2) if r.finding.suppression is None)
    store.set_triage(triaged.key, TriageState.FALSE_POSITIVE, reason="test", by="me")
    monkeypatch.setattr(findings_view, "open_store", lambda: Store.open(db_url))

    current, fixed = store.scan_findings(s2), store.fixed_findings(s2)
    assert len(current) == len(kept) and fixed and any(r.triage for r in current)
    for records in (current, fixed):  # the database's order is most_severe_first's
        assert [r.finding for r in records] == most_severe_first(r.finding for r in records)
    cases = [(FindingsView.open, ()), (FindingsView.new, ()), (FindingsView.fixed, ()),
             (FindingsView.all, ()), (FindingsView.all, (Severity.HIGH, Severity.LOW))]
    for view, severities in cases:
        shown = select_records(fixed if view is FindingsView.fixed else current,
                               new_only=view is FindingsView.new,
                               include_suppressed=view in (FindingsView.all,
                                                           FindingsView.fixed),
                               severities=severities)
        assert shown or view is FindingsView.new
        print_findings(s2, FindingsFormat.json, view, severities)
        assert capsys.readouterr().out == json.dumps(
            [findings_view._record_json(r) for r in shown], indent=2) + "\n", view
        print_findings(s2, FindingsFormat.sarif, view, severities)
        sarif = capsys.readouterr().out
        assert sarif == json.dumps(to_sarif(
            [(r.finding, r.state, r.triage) for r in shown], repository=REPO,
            commit=COMMITS[1], ref="main", scanners=("bandit", "semgrep")),
            indent=2) + "\n", view
        check_sarif(json.loads(sarif))


EXPORT_FINDINGS = 100_000
# Address space (RLIMIT_AS) an export of EXPORT_FINDINGS may take. Measured for the
# SARIF export: the whole-list one failed at 900 MiB (MemoryError); the streaming one
# ran at 300 MiB.
EXPORT_ADDRESS_SPACE = 600 << 20


def test_export_of_100k_findings_streams_in_bounded_memory(tmp_path: Path) -> None:
    """A big monorepo's scan: the store read every finding into a list, and the CLI
    built the whole document, then one string of it (2.2 GB RSS for 200,000 findings).
    Under an address-space limit that a streaming export keeps, both formats succeed
    and give every finding."""
    import resource
    import subprocess
    import sys

    from scanward.store import sqlite_url

    url = sqlite_url(tmp_path / "state" / "scanward.db")
    half = EXPORT_FINDINGS // 2
    with Store.open(url) as store:
        scan_id = Scans(store).run({scanner: [
            Finding(scanner=scanner, rule_id=f"R{k % 40}", severity=tuple(Severity)[k % 5],
                    path=f"pkg/m{k % 300}.py", start_line=k % 900 + 1,
                    message=f"finding {k}", fingerprint=h(scanner, k),
                    match_fingerprint=h("match", scanner, k))
            for k in range(half)] for scanner in ("bandit", "semgrep")})
        store.compute_lifecycle(scan_id)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (EXPORT_ADDRESS_SPACE, EXPORT_ADDRESS_SPACE))

    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "SCANWARD_HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent.parent),
           "SCANWARD_DATABASE_URL": url}
    for fmt in ("sarif", "json"):
        target = tmp_path / f"out.{fmt}"
        with target.open("wb") as sink:
            done = subprocess.run(
                [sys.executable, "-m", "starter", "findings", scan_id, "--all", "--format",
                 fmt], cwd=Path(__file__).parent.parent, env=env, stdout=sink,
                stderr=subprocess.PIPE, preexec_fn=limit, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        with target.open("rb") as f:
            doc = json.load(f)
        target.unlink()
        if fmt == "json":
            assert len(doc) == EXPORT_FINDINGS
            assert doc[0]["severity"] == "critical" and doc[-1]["severity"] == "info"
            continue
        check_sarif(doc)
        assert [(run["tool"]["driver"]["name"], len(run["results"]))
                for run in doc["runs"]] == [("bandit", half), ("semgrep", half)]

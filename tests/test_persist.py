"""persist_results for real: the activity code under Temporal's ActivityEnvironment with
a real SQLite store and real scanner output (bandit, the fake scanner as a subprocess),
and a worker process SIGKILLed in the middle of a persist."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.results import BATCH, ResultActivities
from scanward.contract import PersistInput, ScannerStatus, ScanStatus
from scanward.settings import Settings
from scanward.store import Store, sqlite_url
from scanward.synthetic_scanner import sarif_document
from tests.conftest import FAKE_SCANNER, eventually, scan_request, start
from tests.helpers.processes import spawn_worker, worker_env
from tests.test_sarif import run_bandit

# Same-line pairs bandit reports twice with one start line and one snippet: scanward
# used to keep one of each pair (the fingerprint ignored the column).
SAME_LINE = """\
import random
import subprocess

x = random.random() + random.random()
y = random.randint(1, 6); z = random.choice([1, 2])
subprocess.call("ls", shell=True); subprocess.call("id", shell=True)
assert x; assert y
h = eval("1") + eval("2")
w = eval(
    "3") + eval("4")
"""


class Persist:
    """A scan's layout on a worker (workspace, results volume, SQLite store) and the real
    persist_results activity run in a Temporal activity context."""

    def __init__(self, root: Path) -> None:
        self.scan_id = f"scan-acme-{uuid.uuid4().hex[:20]}"
        self.workspace = root / "workspace"
        self.results = root / "results"
        self.checkout = self.workspace / self.scan_id / "src"
        self.checkout.mkdir(parents=True)
        self.store = Store.open(sqlite_url(root / "scanward.db"))
        self.heartbeats: list[tuple[Any, ...]] = []

    def sarif(self, scanner: str, attempt: int = 1) -> Path:
        path = self.results / self.scan_id / scanner / f"attempt-{attempt}" / "results.sarif"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, scanner: str, attempt: int = 1) -> Any:
        env = ActivityEnvironment()
        env.on_heartbeat = lambda *details: self.heartbeats.append(details)
        activities = ResultActivities(self.store, self.workspace, self.results)
        subpath = self.sarif(scanner, attempt).relative_to(self.results)
        return env.run(activities.persist_results, PersistInput(
            scan_id=self.scan_id, tenant="acme", repository="https://example.com/r.git",
            ref="main", commit="0" * 40, scanner=scanner, attempt=attempt,
            sarif_subpath=str(subpath)))


@pytest.fixture
def persist(tmp_path: Path) -> Any:
    p = Persist(tmp_path)
    yield p
    p.store.close()


def sarif_rules(path: Path) -> Counter[str]:
    """Results per rule, straight from the SARIF JSON."""
    doc = json.loads(path.read_text())
    return Counter(r["ruleId"] for run in doc["runs"] for r in run["results"])


def test_real_bandit_same_line_findings_are_all_stored(persist: Persist) -> None:
    (persist.checkout / "m.py").write_text(SAME_LINE)
    sarif = persist.sarif("bandit")
    run_bandit(persist.checkout, sarif)
    expected = sarif_rules(sarif)
    assert expected["B311"] == 4 and expected["B307"] == 4  # two per line

    result = persist.run("bandit")

    stored = persist.store.findings(persist.scan_id)
    assert Counter(f.rule_id for f in stored) == expected
    assert result.finding_count == sum(expected.values()) == len(stored)
    assert {(f.start_line, f.start_column) for f in stored if f.rule_id == "B311"} == {
        (4, 5), (4, 23), (5, 5), (5, 31)}
    assert all(f.path == "m.py" for f in stored)  # file:// URIs, relative to the checkout
    # Persisting the same attempt again (a retry) stores nothing more.
    assert persist.run("bandit").finding_count == len(stored)
    assert len(persist.store.findings(persist.scan_id)) == len(stored)


def test_persist_streams_in_batches_with_a_heartbeat_each(persist: Persist,
                                                          tmp_path: Path) -> None:
    (persist.checkout / "a.py").write_text("x = 1\n")
    (persist.checkout / "b.py").write_text("y = 2\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "count").write_text("2500")
    sarif = persist.sarif("many")
    subprocess.run([sys.executable, str(FAKE_SCANNER), "many", str(persist.checkout),
                    str(sarif), str(state)], check=True, capture_output=True, timeout=120)

    result = persist.run("many")

    assert result.finding_count == 2500
    assert sum(result.by_severity.values()) == 2500
    stored = [d for d in persist.heartbeats if d[0] == "stored"]
    assert stored == [("stored", BATCH), ("stored", 2 * BATCH), ("stored", 2500)]
    # The file is checked (pass 1 and 2) with heartbeats too: no silence while reading.
    assert ("scanned", 1000) in persist.heartbeats and ("checked", 2000) in persist.heartbeats
    [row] = persist.store.scanner_results(persist.scan_id)
    assert (row.status, row.finding_count) == (ScannerStatus.SUCCEEDED, 2500)


def test_broken_sarif_is_non_retryable_and_stores_nothing(persist: Persist) -> None:
    (persist.checkout / "a.py").write_text("x = 1\n")
    results: list[dict[str, Any]]
    results = [{"ruleId": "R", "message": {"text": f"m{i}"},
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": "a.py"},
                                                    "region": {"startLine": i + 1}}}]}
               for i in range(3000)]
    results[2999]["locations"][0]["physicalLocation"]["region"]["startLine"] = "x"
    persist.sarif("fake").write_text(json.dumps(
        {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "t"}}, "results": results}]}))
    with pytest.raises(ApplicationError) as info:
        persist.run("fake")
    assert info.value.type == "broken_sarif" and info.value.non_retryable
    assert "runs[0].results[2999]" in info.value.message
    # The last result is broken: refused before the first batch was written.
    assert persist.store.findings(persist.scan_id) == []


def test_locations_outside_the_checkout_are_stored_marked_and_logged(
        persist: Persist, caplog: pytest.LogCaptureFixture) -> None:
    (persist.checkout / "pct%41.py").write_text("x = 1\n")
    uris = ["pct%41.py", "pctA.py", "../../etc/passwd", "%2E%2E/%2E%2E/etc/shadow",
            "file:///etc/passwd"]
    results = [{"ruleId": "R", "message": {"text": "m"}, "locations": [{"physicalLocation": {
        "artifactLocation": {"uri": uri}, "region": {"startLine": 1}}}]} for uri in uris]
    persist.sarif("fake").write_text(json.dumps(
        {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "t"}}, "results": results}]}))
    with caplog.at_level("WARNING"):
        result = persist.run("fake")
    assert result.finding_count == len(uris)  # none dropped
    paths = sorted(f.path for f in persist.store.findings(persist.scan_id))
    assert paths[0] == "pct%41.py"
    assert [p.split("/")[2] for p in paths[1:]] == ["not-in-checkout"] + [
        "outside-checkout"] * 3
    assert ("fake: 4 of 5 findings have a location that is not a file of the checkout, "
            "stored with an unresolved:// path (1 not-in-checkout, 3 outside-checkout)"
            ) in caplog.text


def test_a_worker_without_the_checkout_fails_retryably(persist: Persist) -> None:
    persist.sarif("fake").write_text('{"version": "2.1.0", "runs": [{"results": []}]}')
    persist.checkout.rmdir()
    with pytest.raises(ApplicationError) as info:
        persist.run("fake")
    assert info.value.type == "CheckoutMissing" and not info.value.non_retryable
    assert persist.store.scanner_results(persist.scan_id) == []


# ------------------------------------------------------------- a worker killed mid-persist


def stored_count(settings: Settings, scan_id: str) -> int:
    """Findings committed so far (a plain count: the worker is writing meanwhile)."""
    database = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database, timeout=30) as db:
        (n,) = db.execute("SELECT count(*) FROM findings WHERE scan_id = ?",
                          (scan_id,)).fetchone()
    return int(n)


async def persist_attempt(client: Client, scan_id: str) -> tuple[int, bool] | None:
    """(attempt, running) of the pending persist_results activity, if there is one."""
    desc = await client.get_workflow_handle(scan_id).describe()
    for pending in desc.raw_description.pending_activities:
        if pending.activity_type.name == "persist_results":
            running = pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            return pending.attempt, running
    return None


async def test_worker_killed_during_persist_then_persist_reruns_and_stores_exactly(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path, tmp_path: Path) -> None:
    count = 100_000
    (state_dir / "count").write_text(str(count))
    env = worker_env(temporal_env, settings)
    first = spawn_worker(env, tmp_path / "worker1.log")
    store = Store.open(settings.database_url)
    try:
        handle = await start(client, settings, scan_request(flawed_repo, "many"))

        async def persisting() -> bool:
            state = await persist_attempt(client, handle.id)
            return state is not None and state[1]

        await eventually(persisting, timeout=120, what="persist_results started")

        async def batches_committed() -> int:
            return stored_count(settings, handle.id)

        # Kill it once some batches are committed, so the retry meets them.
        await eventually(batches_committed, timeout=60, what="a first batch stored")
        first.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        first.wait(10)
        partial = stored_count(settings, handle.id)
        assert 0 < partial < count, partial  # really in the middle of the persist
        assert store.scanner_results(handle.id) == []  # not marked complete
    finally:
        if first.poll() is None:
            first.kill()

    second = spawn_worker(env, tmp_path / "worker2.log")
    try:
        async def rerunning() -> bool:
            state = await persist_attempt(client, handle.id)
            return state is not None and state[0] >= 2 and state[1]

        await eventually(rerunning, timeout=60, what="persist_results running again")
        rerun_after = time.monotonic() - killed
        print(f"\npersist_results ran again {rerun_after:.1f} s after the SIGKILL "
              f"({partial:,} of {count:,} findings were stored before it)")
        assert rerun_after < 60
        summary = await handle.result()
    finally:
        second.terminate()
        second.wait(30)

    try:
        assert summary.status is ScanStatus.COMPLETED
        (run,) = summary.scanners
        assert run.finding_count == count
        stored = store.findings(handle.id)
        assert len(stored) == count  # none lost, none twice
        assert len({f.fingerprint for f in stored}) == count
        [row] = store.scanner_results(handle.id)
        assert (row.status, row.finding_count) == (ScannerStatus.SUCCEEDED, count)
    finally:
        store.close()
    started = [e.activity_task_started_event_attributes.attempt
               async for e in handle.fetch_history_events()
               if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    assert max(started) >= 2  # the persist that completed was a retry


# ------------------------------------------------------------- the store's volume full


def full_after(store: Store, database: Path, extra_pages: int) -> Callable[[], None]:
    """Make SQLite answer SQLITE_FULL ("database or disk is full", what a full volume
    gives) once the database grows ``extra_pages`` past its size now: SQLite's own
    ``max_page_count`` on every new connection of the store. Returns the undo."""
    engine = store._engine
    engine.dispose()  # pooled connections were opened without the cap
    with sqlite3.connect(database) as db:
        (pages,) = db.execute("PRAGMA page_count").fetchone()

    def cap(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {int(pages) + extra_pages}")

    event.listen(engine, "connect", cap)

    def undo() -> None:
        event.remove(engine, "connect", cap)
        engine.dispose()

    return undo


def test_a_full_store_fails_persist_briefly_and_clearly_then_it_resumes(
        persist: Persist, tmp_path: Path) -> None:
    """A store on a full volume: the activity's failure names the store, says it is full
    and how much room its volume has, is retryable, and is small (a Temporal server
    shows a pending activity's last failure only up to 4 KiB: the SQL and 1,000 rows of
    parameters SQLAlchemy puts in its message made it "Failure exceeds size limit.",
    and carried finding data into Temporal); no scanner is marked done half-way; once
    there is room the retry stores every finding exactly once."""
    count = 2_500
    (persist.checkout / "app.py").write_text("".join(f"v{i} = {i}\n" for i in range(count)))
    persist.sarif("synthetic").write_text(json.dumps(sarif_document(count, "app.py")))
    undo = full_after(persist.store, tmp_path / "scanward.db", extra_pages=40)
    try:
        with pytest.raises(ApplicationError) as info:
            persist.run("synthetic")
    finally:
        undo()
    error = info.value
    assert error.type == "StoreError" and not error.non_retryable
    assert "database or disk is full" in error.message
    assert str(tmp_path / "scanward.db") in error.message
    assert "KiB free of" in error.message  # the volume's room, as for the other volumes
    assert error.__cause__ is None  # SQLAlchemy's statement and parameters stay here
    failure = Failure()
    DataConverter.default.failure_converter.to_failure(
        error, DataConverter.default.payload_converter, failure)
    encoded = failure.SerializeToString()
    assert len(encoded) < 4096, len(encoded)
    assert b"INSERT" not in encoded and b"synthetic finding" not in encoded
    # Nothing half-written: whatever batches were committed, the scanner is not done.
    assert persist.store.scanner_results(persist.scan_id) == []

    result = persist.run("synthetic")

    assert result.finding_count == count
    stored = persist.store.findings(persist.scan_id)
    assert len(stored) == len({f.fingerprint for f in stored}) == count
    [row] = persist.store.scanner_results(persist.scan_id)
    assert (row.status, row.finding_count) == (ScannerStatus.SUCCEEDED, count)

"""The whole ScanWorkflow against the real dev server, real git, real bandit, a real
SQLite store and a real local HTTP receiver."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

import worker as scan_worker
from scanward import client as api
from scanward import search_attributes as sa
from scanward.contract import (
    AbandonSignal,
    NotifyTarget,
    RetrySignal,
    ScannerStatus,
    ScanStatus,
    ScanSummary,
)
from scanward.settings import Settings
from scanward.store import Store
from scanward.webhook_receiver import WebhookReceiver
from tests.conftest import eventually, scan_request, start
from tests.helpers.pids import process_alive
from tests.helpers.processes import cli_env, scanward
from tests.helpers.workflows import current_details

pytestmark = pytest.mark.usefixtures("scan_worker_task")


async def dead_scanners(client: Client, scan_id: str) -> list[str]:
    summary = await api.progress(client, scan_id)
    return [r.scanner for r in summary.scanners if r.status is ScannerStatus.DEAD]


async def search_attribute_status(client: Client, scan_id: str) -> str | None:
    desc = await client.get_workflow_handle(scan_id).describe()
    return desc.typed_search_attributes.get(sa.SCAN_STATUS)


async def test_bandit_scan_end_to_end(client: Client, settings: Settings, flawed_repo: Path,
                                      receiver: WebhookReceiver) -> None:
    request = scan_request(flawed_repo, "bandit",
                           notify=(NotifyTarget(url=receiver.url, secret_ref="hook"),))
    handle = await start(client, settings, request)
    summary: ScanSummary = await handle.result()

    assert summary.status is ScanStatus.COMPLETED
    assert summary.commit and len(summary.commit) == 40
    assert summary.checkout_bytes and summary.checkout_bytes > 0
    (run,) = summary.scanners
    assert (run.scanner, run.status, run.attempts) == ("bandit", ScannerStatus.SUCCEEDED, 1)

    store = Store.open(settings.database_url)
    try:
        findings = store.findings(handle.id)
        rules = {f.rule_id for f in findings}
        # The bundled app's deliberate flaws, as bandit names them.
        assert {"B602", "B301", "B105", "B506", "B324"} <= rules, rules
        assert all(f.path == "app.py" for f in findings)
        assert len({f.fingerprint for f in findings}) == len(findings)
        assert run.finding_count == len(findings) == summary.finding_count
        assert store.get_scan(handle.id).status == ScanStatus.COMPLETED  # type: ignore[union-attr]
    finally:
        store.close()

    # Exactly one signed delivery, and the workspace is gone.
    assert [d.verified for d in receiver.deliveries] == [True]
    assert receiver.deliveries[0].body["scan"]["scan_id"] == handle.id
    assert not (settings.workspace_root / handle.id).exists()
    assert await search_attribute_status(client, handle.id) == "completed"


async def test_dead_scanner_is_visible_then_retried_by_signal(
        client: Client, settings: Settings, flawed_repo: Path, state_dir: Path) -> None:
    handle = await start(client, settings, scan_request(flawed_repo, "flaky", "fake"))
    await eventually(lambda: _equals(dead_scanners(client, handle.id), ["flaky"]),
                     what="flaky to be dead")
    # Operators find it through the search attribute, as the Web UI does.
    await eventually(lambda: _equals(search_attribute_status(client, handle.id), "dead"),
                     what="ScanStatus=dead")
    progress = await api.progress(client, handle.id)
    flaky = next(r for r in progress.scanners if r.scanner == "flaky")
    assert flaky.attempts == 2 and flaky.failure_class == "crashed"
    assert "exited 3" in (flaky.reason or "")
    assert "simulated crash" in (flaky.reason or "")  # last log lines travel with it
    fake = next(r for r in progress.scanners if r.scanner == "fake")
    assert fake.status is ScannerStatus.SUCCEEDED  # the rest of the scan is not lost

    (state_dir / "fixed").touch()
    await api.retry(client, handle.id, RetrySignal(memory_mib=1024))
    summary = await handle.result()
    assert summary.status is ScanStatus.COMPLETED
    flaky = next(r for r in summary.scanners if r.scanner == "flaky")
    assert flaky.status is ScannerStatus.SUCCEEDED and flaky.attempts == 3
    assert flaky.resources is not None and flaky.resources.memory_mib == 1024


async def test_abandon_ends_partial(client: Client, settings: Settings,
                                    flawed_repo: Path) -> None:
    handle = await start(client, settings, scan_request(flawed_repo, "flaky", "bandit"))
    await eventually(lambda: _equals(dead_scanners(client, handle.id), ["flaky"]),
                     what="flaky to be dead")
    await api.abandon(client, handle.id, AbandonSignal(reason="known broken"))
    summary = await handle.result()
    assert summary.status is ScanStatus.PARTIAL
    by_name = {r.scanner: r for r in summary.scanners}
    assert by_name["flaky"].status is ScannerStatus.ABANDONED
    assert "known broken" in (by_name["flaky"].reason or "")
    assert by_name["bandit"].status is ScannerStatus.SUCCEEDED
    assert (by_name["bandit"].finding_count or 0) > 0


async def test_bad_input_and_broken_sarif_are_dead_without_retry(
        client: Client, settings: Settings, flawed_repo: Path) -> None:
    handle = await start(client, settings, scan_request(flawed_repo, "badinput", "broken"))
    await eventually(lambda: _equals(dead_scanners(client, handle.id), ["badinput", "broken"]),
                     what="both dead")
    progress = {r.scanner: r for r in (await api.progress(client, handle.id)).scanners}
    assert progress["badinput"].attempts == 1 and progress["badinput"].failure_class == "bad_input"
    assert progress["broken"].attempts == 1
    assert progress["broken"].failure_class == "broken_sarif"
    assert "not JSON" in (progress["broken"].reason or "")
    await api.abandon(client, handle.id)
    assert (await handle.result()).status is ScanStatus.PARTIAL


async def test_cancel_kills_the_running_scanner(client: Client, settings: Settings,
                                                flawed_repo: Path, state_dir: Path) -> None:
    handle = await start(client, settings, scan_request(flawed_repo, "sleepy"))
    pid_file = state_dir / "pid"
    await eventually(lambda: pid_file.exists(), what="the scanner to start")
    pid = int(pid_file.read_text())
    assert process_alive(pid)
    await api.cancel(client, handle.id)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    assert not process_alive(pid), "the scanner process survived the cancellation"
    assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
    (run,) = (await api.progress(client, handle.id)).scanners
    assert (run.status, run.attempts) == (ScannerStatus.CANCELLED, 1)  # not retried
    store = Store.open(settings.database_url)
    try:
        assert store.get_scan(handle.id).status == ScanStatus.CANCELLED  # type: ignore[union-attr]
    finally:
        store.close()
    assert not (settings.workspace_root / handle.id).exists()


async def test_duplicate_start_joins_then_returns_the_finished_scan(
        client: Client, settings: Settings, flawed_repo: Path) -> None:
    request = scan_request(flawed_repo, "fake")
    first = await start(client, settings, request)
    second = await start(client, settings, request)
    assert second.id == first.id
    assert (await second.describe()).run_id == (await first.describe()).run_id
    summary = await first.result()
    # Started again once finished: the same scan, its result, not an error.
    third = await start(client, settings, request)
    assert third.id == first.id and await third.result() == summary
    runs = [w async for w in client.list_workflows(f'WorkflowId = "{first.id}"')]
    assert len(runs) == 1


async def test_retry_all_dead_is_one_batch(client: Client, settings: Settings,
                                           flawed_repo: Path, state_dir: Path) -> None:
    tenant = f"batch-{settings.task_queue[-8:]}"
    handles = [await start(client, settings, scan_request(flawed_repo, "flaky", tenant=tenant))
               for _ in range(2)]
    for h in handles:
        async def flaky_dead(scan_id: str = h.id) -> bool:
            return await _equals(dead_scanners(client, scan_id), ["flaky"])

        await eventually(flaky_dead, what="flaky dead")

    async def both_visible() -> bool:
        found = [s async for s in api.list_scans(client, ScanStatus.DEAD, tenant)]
        return len(found) == 2

    await eventually(both_visible, what="both dead scans in visibility")
    (state_dir / "fixed").touch()
    job_id = await api.retry_all_dead(client, tenant=tenant)
    assert job_id.startswith("scanward-retry-")
    for h in handles:
        assert (await h.result()).status is ScanStatus.COMPLETED


async def test_clone_of_missing_ref_fails_with_reason(client: Client, settings: Settings,
                                                      flawed_repo: Path) -> None:
    # Started as another SDK or Temporal's CLI would, without our client's ResolveRef
    # (which refuses an unknown ref before anything starts: tests/test_rescan.py).
    request = scan_request(flawed_repo, "fake").model_copy(update={"ref": "no-such-branch"})
    handle = await client.start_workflow("ScanWorkflow", request, id=request.scan_id(),
                                         task_queue=settings.task_queue,
                                         result_type=ScanSummary)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert "clone failed" in str(failure.value.cause)
    assert "no-such-branch" in str(failure.value.cause)
    assert not (settings.workspace_root / handle.id / "src").exists()


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected




async def test_bandit_and_semgrep_into_postgres(client: Client, settings: Settings,
                                                flawed_repo: Path,
                                                postgres_database: str) -> None:
    """Two real scanners against one checkout, stored in a real PostgreSQL."""
    pg = dataclasses.replace(settings, database_url=postgres_database,
                             task_queue=f"pg-{uuid.uuid4().hex[:8]}")
    async with scan_worker.running(pg, client):
        handle = await start(client, pg, scan_request(flawed_repo, "bandit", "semgrep"))
        summary = await handle.result()
    assert summary.status is ScanStatus.COMPLETED
    store = Store.open(postgres_database)
    try:
        findings = store.findings(handle.id)
        by_scanner = {s: {f.rule_id for f in findings if f.scanner == s}
                      for s in ("bandit", "semgrep")}
        assert "B602" in by_scanner["bandit"]
        assert "scanward.python.subprocess-shell-true" in by_scanner["semgrep"]
        assert "scanward.python.pickle-loads" in by_scanner["semgrep"]
        assert sorted(r.scanner for r in store.scanner_results(handle.id)) == ["bandit",
                                                                             "semgrep"]
        assert store.get_scan(handle.id).status == ScanStatus.COMPLETED  # type: ignore[union-attr]
    finally:
        store.close()


async def test_scans_are_routed_to_their_clusters_workers(client: Client, settings: Settings,
                                                          flawed_repo: Path) -> None:
    """A worker serves one cluster on its own task queue; the request picks the cluster."""
    east = dataclasses.replace(settings, task_queue=f"{settings.task_queue}-east",
                               database_url=settings.database_url.replace(".db", "-east.db"))
    async with scan_worker.running(east, client):
        routed = await start(client, settings, scan_request(flawed_repo, "fake", cluster="east"))
        default = await start(client, settings, scan_request(flawed_repo, "fake"))
        await routed.result()
        await default.result()
    queues = {}
    for handle in (routed, default):
        queues[handle.id] = {
            e.activity_task_scheduled_event_attributes.task_queue.name
            async for e in handle.fetch_history_events()
            if e.HasField("activity_task_scheduled_event_attributes")}
    assert queues[routed.id] == {east.task_queue}
    assert queues[default.id] == {settings.task_queue}
    for url, scan_id in ((east.database_url, routed.id), (settings.database_url, default.id)):
        store = Store.open(url)
        try:
            assert store.get_scan(scan_id) is not None  # stored by that cluster's worker
        finally:
            store.close()


async def test_a_scan_started_again_is_news_to_its_webhook(
        client: Client, settings: Settings, flawed_repo: Path, state_dir: Path,
        receiver: WebhookReceiver) -> None:
    """The same id started again after a cancel (allowed: a failed or cancelled run can
    be started again) is a new run: its webhook carries a new Idempotency-Key. With one
    key per scan id, the receiver answered the completed run with 409 (a duplicate of the
    cancelled one) and never processed the result."""
    hook = NotifyTarget(url=receiver.url, secret_ref="hook")
    sleepy = scan_request(flawed_repo, "sleepy", notify=(hook,))
    handle = await start(client, settings, sleepy)
    await eventually(lambda: (state_dir / "pid").exists(), what="the scanner to start")
    await api.cancel(client, handle.id)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    (state_dir / "pid").unlink()
    # Started again: a different sleep this time, so the run completes.
    (state_dir / "seconds").write_text("0")
    again = await start(client, settings, sleepy)
    assert again.id == handle.id
    summary: ScanSummary = await again.result()
    assert summary.status is ScanStatus.COMPLETED
    accepted = [(d.body["scan"]["status"], d.key) for d in receiver.accepted]
    assert [status for status, _ in accepted] == ["cancelled", "completed"], receiver.statuses
    assert accepted[0][1] != accepted[1][1]


async def test_a_file_bandit_cannot_parse_is_named_in_the_summary(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    """bandit skips a file it cannot parse, says so only in its SARIF's notifications,
    and exits as usual: the scan succeeded, but it must not look clean where it is blind."""
    from scanward.example import git

    (flawed_repo / "legacy.py").write_text('print "python 2"\nimport os\nos.system(cmd)\n')
    git(flawed_repo, "add", "legacy.py")
    git(flawed_repo, "commit", "-q", "-m", "python 2 file")
    handle = await start(client, settings, scan_request(flawed_repo, "bandit"))
    summary: ScanSummary = await handle.result()
    (run,) = summary.scanners
    assert run.status is ScannerStatus.SUCCEEDED and run.finding_count
    assert run.warning == ("1 error(s) the tool reported (not scanned, or not fully): "
                           "syntax error while parsing AST from file: legacy.py"), run.warning
    # Where operators look: `scanward status`, and the Web UI's scan page.
    code, out, err = await scanward("status", handle.id, env=cli_env(temporal_env, settings))
    assert code == 0, err
    assert "bandit (succeeded, with errors of its own):" in out and "legacy.py" in out, out
    assert "syntax error while parsing AST from file: legacy.py" in await current_details(
        handle)

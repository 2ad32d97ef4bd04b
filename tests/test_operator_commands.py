"""Operator commands do what they say or exit non-zero with the reason: the real CLI as
a process, against the dev server and a real worker (the ``scan_worker_task`` fixture)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from scanward import client as api
from scanward.cli.app import CliError
from scanward.cli.progress import watch
from scanward.contract import AbandonSignal, ScannerStatus, ScanStatus
from scanward.example import git
from scanward.settings import Settings
from tests.conftest import eventually, scan_request, start
from tests.helpers.processes import cli_env, finish, scanward, spawn

pytestmark = pytest.mark.usefixtures("scan_worker_task")

UNKNOWN = "scan-default-00000000000000000000"


async def scanner_status(client: Client, scan_id: str, scanner: str) -> ScannerStatus:
    summary = await api.progress(client, scan_id)
    return next(r.status for r in summary.scanners if r.scanner == scanner)


async def dead(client: Client, scan_id: str, scanner: str) -> bool:
    return await scanner_status(client, scan_id, scanner) is ScannerStatus.DEAD


async def read_until(stream: asyncio.StreamReader | None, text: str,
                     timeout: float = 60) -> str:
    """Lines of ``stream`` up to and including the first that contains ``text``."""
    assert stream is not None
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while not seen or text not in seen[-1]:
            line = await stream.readline()
            assert line, f"stream ended without {text!r}: {''.join(seen)}"
            seen.append(line.decode())
    return "".join(seen)


async def test_retry_and_abandon_go_through_validating_updates(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path) -> None:
    env = cli_env(temporal_env, settings)
    handle = await start(client, settings, scan_request(flawed_repo, "flaky", "fake"))
    await eventually(lambda: dead(client, handle.id, "flaky"), what="flaky dead")
    await eventually(lambda: _is(scanner_status(client, handle.id, "fake"),
                                 ScannerStatus.SUCCEEDED), what="fake succeeded")

    # Each refusal is the workflow validator's, shown with a non-zero exit.
    for args, reason in [
        (("retry", handle.id, "--scanner", "fake"), "scanner 'fake' is not dead (it is "
                                                   "succeeded)"),
        (("retry", handle.id, "--scanner", "nosuch"), "scanner 'nosuch' is not part of this "
                                                     "scan (its scanners: fake, flaky)"),
        (("abandon", handle.id, "--scanner", "fake"), "scanner 'fake' is not dead"),
        (("retry", handle.id, "--memory-mib", "100000"), "memory_mib 100000 is above flaky's "
                                                        "cap"),
    ]:
        code, out, err = await scanward(*args, env=env)
        assert code == 1, (args, out, err)
        assert err.startswith(f"scanward: error: {args[0]} rejected by {handle.id}: "), err
        assert reason in err, (args, err)
    with pytest.raises(api.Rejected, match="'fake' is not dead"):
        await api.abandon(client, handle.id, AbandonSignal(scanner="fake"))
    assert await dead(client, handle.id, "flaky")  # nothing above changed the scan

    (state_dir / "fixed").touch()
    code, out, err = await scanward("retry", handle.id, env=env)
    assert (code, out.strip()) == (0, f"{handle.id}: retrying flaky"), err
    summary = await handle.result()
    assert summary.status is ScanStatus.COMPLETED
    accepted = [e async for e in handle.fetch_history_events()
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
    assert len(accepted) == 1  # the retry was an update (rejected ones leave no event)

    for command in ("retry", "abandon"):
        code, _, err = await scanward(command, handle.id, env=env)
        assert code == 1 and f"scan {handle.id} is not running: it ended completed" in err, err
    code, _, err = await scanward("retry", UNKNOWN, env=env)
    assert code == 1 and f"no such scan: {UNKNOWN}" in err, err


async def test_scan_wait_announces_a_dead_scanner_and_names_the_abandoned(
        temporal_env: WorkflowEnvironment, settings: Settings, flawed_repo: Path) -> None:
    env = cli_env(temporal_env, settings)
    # badinput is dead at its first attempt (bad input is not retried), even on the
    # CLI's production retry tuning.
    scan = ("scan", str(flawed_repo), "--ref", "main", "-s", "badinput", "-s", "fake",
            "--key", uuid.uuid4().hex, "--wait")
    code, out, err = await scanward(*scan, "--no-wait-dead", env=env, timeout=90)
    assert code == 3, out + err
    scan_id = out.split()[1]
    assert "scanward: badinput is dead: bad_input: badinput exited 2" in err, err
    assert "cannot parse input" in err  # the reason in full, log lines included
    assert (f"retry with `scanward retry {scan_id}` or abandon with "
            f"`scanward abandon {scan_id}`") in err
    assert f"scanward: error: scan {scan_id} is waiting for an operator: badinput dead" in err

    # Without --no-wait-dead it says so, then keeps waiting (this joins the same scan).
    waiting = await spawn(*scan, env=env)
    try:
        await read_until(waiting.stderr, "badinput is dead")
        await asyncio.sleep(1)
        assert waiting.returncode is None, "scan --wait gave up on a dead scanner"
        code, out, err = await scanward("abandon", scan_id, "--reason", "known broken", env=env)
        assert (code, out.strip()) == (0, f"{scan_id}: abandoned badinput"), err
    finally:
        code, out, err = await finish(waiting, timeout=60)
    assert code == 1, out + err
    assert ("scanward: error: scan ended partial: badinput abandoned: known broken (was: "
            "bad_input: badinput exited 2") in err, err
    assert len(err.strip().splitlines()[-1]) > 80  # the reason is whole, on one line


@pytest.mark.usefixtures("scan_worker_task")
async def test_waiting_on_a_scan_that_is_cancelled_or_terminated_says_so(
        client: Client, settings: Settings, flawed_repo: Path, state_dir: Path) -> None:
    """`scan --wait` said "scan ... failed: Workflow cancelled" when an operator
    cancelled the scan from elsewhere: it was not a failure of the scan."""
    for end in ("cancel", "terminate"):
        (state_dir / "pid").unlink(missing_ok=True)
        handle = await start(client, settings, scan_request(flawed_repo, "sleepy"))
        waiting = asyncio.create_task(watch(client, handle.id))
        await eventually(lambda: (state_dir / "pid").exists(),
                         what="the scanner to start")
        if end == "cancel":
            await handle.cancel()
            expected = f"scan {handle.id} was cancelled"
        else:
            await handle.terminate(reason="operator stopped it")
            expected = f"scan {handle.id} was terminated: operator stopped it"
        with pytest.raises(CliError) as ended:
            await asyncio.wait_for(waiting, 60)
        assert str(ended.value) == expected


async def test_cancel_cancels_only_a_running_scan_and_reports_the_outcome(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path) -> None:
    env = cli_env(temporal_env, settings)
    code, _, err = await scanward("cancel", UNKNOWN, env=env)
    assert code == 1 and f"no such scan: {UNKNOWN}" in err, err

    handle = await start(client, settings, scan_request(flawed_repo, "sleepy"))
    await eventually(lambda: (state_dir / "pid").exists(), what="the scanner to start")
    code, out, err = await scanward("cancel", handle.id, env=env)
    assert (code, out.strip()) == (0, f"scan {handle.id} cancelled"), err
    assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
    code, out, err = await scanward("cancel", handle.id, env=env)
    assert code == 1 and f"scan {handle.id} is not running: it ended cancelled" in err, err

    finished = await start(client, settings, scan_request(flawed_repo, "fake"))
    await finished.result()
    code, out, err = await scanward("cancel", finished.id, env=env)
    assert code == 1 and f"scan {finished.id} is not running: it ended completed" in err, err

    (state_dir / "pid").unlink()
    other = await start(client, settings, scan_request(flawed_repo, "sleepy"))
    await eventually(lambda: (state_dir / "pid").exists(), what="the scanner to start")
    code, out, err = await scanward("cancel", other.id, "--no-wait", env=env)
    assert (code, out.strip()) == (0, f"cancel requested for {other.id}"), err
    with pytest.raises(WorkflowFailureError):
        await other.result()


async def test_findings_of_an_unknown_scan_is_an_error_not_an_empty_table(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path) -> None:
    env = cli_env(temporal_env, settings)
    code, out, err = await scanward("findings", UNKNOWN, env=env)
    assert code == 1 and out == "", out
    assert err.strip() == (f"scanward: error: no such scan: {UNKNOWN} (neither in the store "
                           "nor in Temporal)"), err

    # A scan that failed before the store heard of it (a start with input the workflow
    # refuses, as from Temporal's CLI) was "no such scan in the store (unknown id, or
    # ...)": Temporal says how it ended.
    failed = await client.start_workflow("ScanWorkflow", {"scanners": ["fake"]},
                                         id=f"scan-default-{uuid.uuid4().hex[:20]}",
                                         task_queue=settings.task_queue)
    with pytest.raises(WorkflowFailureError):
        await failed.result()
    code, out, err = await scanward("findings", failed.id, env=env)
    assert code == 1 and out == "", out
    assert err.startswith(f"scanward: error: scan {failed.id} ended failed before any "
                          "findings were stored: "), err
    assert "repository" in err, err  # the workflow's own reason

    clean = tmp_path / "clean"  # no .py file: the fake scanner finds nothing
    clean.mkdir()
    (clean / "README.md").write_text("nothing to see\n")
    git(clean, "init", "-q", "-b", "main")
    git(clean, "add", ".")
    git(clean, "commit", "-q", "-m", "clean")
    handle = await start(client, settings, scan_request(clean, "fake"))
    assert (await handle.result()).finding_count == 0
    code, out, err = await scanward("findings", handle.id, env=env)
    assert code == 0 and "0 finding(s)" in out, err
    code, out, err = await scanward("findings", handle.id, "--format", "json", env=env)
    assert code == 0 and json.loads(out) == [], err


async def test_status_shows_every_reason_in_full_and_json(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    env = cli_env(temporal_env, settings)
    dying = await start(client, settings, scan_request(flawed_repo, "flaky"))
    # A commit the repository does not have: the clone fails (an unknown *ref* is refused
    # before anything starts, by ResolveRef).
    missing_ref = await start(client, settings, scan_request(flawed_repo, "fake").model_copy(
        update={"commit": "0" * 40}))
    await eventually(lambda: dead(client, dying.id, "flaky"), what="flaky dead")

    code, out, err = await scanward("status", dying.id, env=env)
    assert code == 0, err
    # The whole reason, past "last log lines:" (the fake scanner's stderr).
    assert "last log lines" in out and "simulated crash: state not fixed" in out, out
    code, out, err = await scanward("status", dying.id, "--format", "json", env=env)
    assert code == 0, err
    report = json.loads(out)
    assert (report["workflow_status"], report["scan_status"]) == ("RUNNING", "dead")
    (flaky,) = report["summary"]["scanners"]
    assert flaky["status"] == "dead" and "simulated crash" in flaky["reason"]
    await api.abandon(client, dying.id)

    with pytest.raises(WorkflowFailureError):
        await missing_ref.result()
    code, out, err = await scanward("status", missing_ref.id, env=env)
    assert code == 0, err
    assert "scan (failed):\n  clone failed:" in out and "0" * 40 in out, out


async def test_status_of_a_workflow_that_never_answered(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    """Closed before any worker ran it: no query answer, so Temporal's record instead."""
    # With a commit, nothing is resolved first: the scan starts though no worker serves
    # the queue (durable), and waits for one.
    request = scan_request(flawed_repo, "bandit").model_copy(update={"commit": "a" * 40})
    handle = await api.start_scan(client, request,
                                  task_queue=f"nobody-{uuid.uuid4().hex[:8]}")
    await handle.terminate(reason="stuck: no worker serves this queue")
    env = cli_env(temporal_env, settings)
    code, out, err = await scanward("status", handle.id, env=env)
    assert code == 0, err
    assert f"{handle.id}: terminated (workflow TERMINATED, ScanStatus running)" in out
    assert "stuck: no worker serves this queue" in out, out
    code, out, err = await scanward("status", handle.id, "--format", "json", env=env)
    report = json.loads(out)
    assert report["workflow_status"] == "TERMINATED" and report["summary"] is None
    assert report["failure"] == "stuck: no worker serves this queue"
    assert report["query_error"]


async def test_the_workers_catalog_is_the_authority_on_scanners(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    # "fake" exists only in the worker's SCANWARD_CATALOG: neither the client nor the
    # CLI (run here without that file) may refuse it.
    handle = await api.start_scan(client, scan_request(flawed_repo, "fake"),
                                  task_queue=settings.task_queue)
    assert (await handle.result()).status is ScanStatus.COMPLETED
    env = cli_env(temporal_env, settings)
    del env["SCANWARD_CATALOG"]
    code, out, err = await scanward("scan", str(flawed_repo), "--ref", "main", "-s", "fake",
                                    "--key", uuid.uuid4().hex, "--wait", env=env)
    assert code == 0 and "FAKE001" in out, out + err

    # A scanner no worker knows: the scan fails within seconds, naming it.
    started = time.monotonic()
    unknown = await api.start_scan(client, scan_request(flawed_repo, "nosuch"),
                                   task_queue=settings.task_queue)
    with pytest.raises(WorkflowFailureError) as failure:
        await unknown.result()
    assert time.monotonic() - started < 15
    assert "unknown scanner 'nosuch'" in str(failure.value.cause)
    assert (await unknown.describe()).status is WorkflowExecutionStatus.FAILED
    code, out, err = await scanward("scan", str(flawed_repo), "--ref", "main", "-s", "nosuch",
                                    "--key", uuid.uuid4().hex, "--wait", env=env, timeout=60)
    assert code == 1 and "failed: clone failed: " in err, out + err
    assert "unknown scanner 'nosuch'" in err.splitlines()[-1]
    # The table printed last is the scan's final state, not its last live one.
    scan_id = out.split()[1]
    assert f"{scan_id}: failed" in out and "pending" not in out, out
    assert "running" not in out.split("\n", 1)[1], out

    # `list` shows failed scans, by their ScanStatus.
    async def listed() -> str | None:
        code, out, _ = await scanward("list", "--status", "failed", env=env)
        return out if code == 0 and unknown.id in out else None

    listing = await eventually(listed, what="the failed scan in `list --status failed`")
    row = next(line for line in listing.splitlines() if unknown.id in line)
    assert "failed" in row and "FAILED" in row


async def test_retry_and_abandon_without_a_worker_fail_naming_the_task_queue(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    """A scan no worker serves (a mistyped --cluster): the update used to wait for ever,
    silently. It is bounded now and says which task queue has no worker."""
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    request = scan_request(flawed_repo, "fake").model_copy(update={"commit": "a" * 40})
    handle = await api.start_scan(client, request, task_queue=queue)
    env = cli_env(temporal_env, settings)
    started = time.monotonic()
    try:
        results = list(await asyncio.gather(
            scanward("retry", handle.id, env=env, timeout=45),
            scanward("abandon", handle.id, "--reason", "gone", env=env, timeout=45),
            scanward("status", handle.id, env=env, timeout=45)))
    finally:
        await handle.terminate(reason="test over")
    assert time.monotonic() - started < 40
    # status answers what Temporal knows, and why the workflow does not (it said only
    # "Timeout expired" or "h2 protocol error").
    code, out, err = results.pop()
    assert code == 0, err
    assert f"no worker answered within 10s on task queue '{queue}'" in out, out
    for command, (code, out, err) in zip(("retry", "abandon"), results, strict=True):
        assert code == 1 and out == "", (command, out, err)
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"scanward: error: {command} of {handle.id}: no worker "
                              "answered within "), err
        assert f"task queue '{queue}'" in err, err


async def test_a_terminated_scan_is_not_listed_dead_and_status_says_terminated(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    """Terminated while dead, its ScanStatus stays "dead": only a running workflow can
    be dead (or running), so `list` and `retry --all-dead` filter on ExecutionStatus."""
    tenant = f"term-{uuid.uuid4().hex[:8]}"
    env = cli_env(temporal_env, settings)
    handle = await start(client, settings, scan_request(flawed_repo, "badinput",
                                                        tenant=tenant))
    await eventually(lambda: dead(client, handle.id, "badinput"), what="badinput dead")

    async def listed(*args: str) -> str:
        code, out, err = await scanward("list", "--tenant", tenant, *args, env=env)
        assert code == 0, err
        return out

    await eventually(lambda: _contains(listed("--status", "dead"), handle.id),
                     what="the dead scan listed dead")
    await handle.terminate(reason="operator gave up")

    async def terminated_row() -> str | None:
        rows = [line for line in (await listed()).splitlines() if handle.id in line]
        return rows[0] if rows and "TERMINATED" in rows[0] else None

    row = await eventually(terminated_row, what="the terminated scan in visibility")
    assert "terminated" in row and "dead" not in row, row
    assert handle.id not in await listed("--status", "dead")
    assert 'ExecutionStatus = "Running"' in api.status_query(ScanStatus.DEAD)
    assert 'ExecutionStatus = "Running"' in api.status_query(ScanStatus.RUNNING)

    code, out, err = await scanward("status", handle.id, env=env)
    assert code == 0, err
    head = out.splitlines()[0]
    assert head.startswith(f"{handle.id}: terminated"), out
    code, out, err = await scanward("status", handle.id, "--format", "json", env=env)
    report = json.loads(out)
    assert (report["status"], report["workflow_status"]) == ("terminated", "TERMINATED")


async def test_retry_all_dead_only_signals_running_scans_with_that_scanner_dead(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path) -> None:
    tenant = f"batch-{uuid.uuid4().hex[:8]}"
    env = cli_env(temporal_env, settings)
    flaky = await start(client, settings, scan_request(flawed_repo, "flaky", tenant=tenant))
    bad = await start(client, settings, scan_request(flawed_repo, "badinput", tenant=tenant))
    await eventually(lambda: dead(client, flaky.id, "flaky"), what="flaky dead")
    await eventually(lambda: dead(client, bad.id, "badinput"), what="badinput dead")

    async def both_listed() -> bool:
        code, out, _ = await scanward("list", "--status", "dead", "--tenant", tenant, env=env)
        return code == 0 and flaky.id in out and bad.id in out

    await eventually(both_listed, what="both dead scans listed")
    (state_dir / "fixed").touch()
    code, out, err = await scanward("retry", "--all-dead", "--tenant", tenant, "--scanner",
                                    "flaky", env=env)
    assert code == 0, err
    assert "flaky" in out and tenant in out, out
    assert (await flaky.result()).status is ScanStatus.COMPLETED
    signalled = [e async for e in bad.fetch_history_events()
                 if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
    assert signalled == []  # its dead scanner is badinput, not flaky
    await api.abandon(client, bad.id)


async def test_list_shows_each_scan_once_in_its_latest_run(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    """A scan started again after its run was terminated has two runs: `list` showed
    both (a scan twice, the old run's state among them)."""
    tenant = f"runs-{uuid.uuid4().hex[:8]}"
    request = scan_request(flawed_repo, "fake", tenant=tenant).model_copy(
        update={"commit": git(flawed_repo, "rev-parse", "main")})
    first = await api.start_scan(client, request, task_queue=f"nobody-{tenant}")
    await first.terminate(reason="started on the wrong queue")
    again = await start(client, settings, request)
    assert again.id == first.id and again.result_run_id != first.result_run_id
    assert (await again.result()).status is ScanStatus.COMPLETED
    env = cli_env(temporal_env, settings)

    async def runs() -> bool:
        found = [w async for w in client.list_workflows(f'WorkflowId = "{first.id}"')]
        return len(found) == 2 and all(w.status is not WorkflowExecutionStatus.RUNNING
                                       for w in found)

    await eventually(runs, what="both runs closed in visibility")
    code, out, err = await scanward("list", "--tenant", tenant, env=env)
    assert code == 0, err
    rows = [line for line in out.splitlines() if first.id in line]
    assert len(rows) == 1 and "completed" in rows[0], out
    found = [s async for s in api.list_scans(client, tenant=tenant)]
    assert found == [(first.id, ScanStatus.COMPLETED, WorkflowExecutionStatus.COMPLETED)]
    code, out, err = await scanward("list", "--tenant", tenant, "--limit", "1", env=env)
    assert code == 0 and first.id in out, err


async def test_a_partial_scan_says_partial_when_scanned_again_and_in_findings(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    env = cli_env(temporal_env, settings)
    # badinput is dead at its first attempt, even on the CLI's production tuning.
    scan = ("scan", str(flawed_repo), "--ref", "main", "-s", "badinput", "-s", "fake",
            "--key", uuid.uuid4().hex)
    code, out, err = await scanward(*scan, env=env)
    assert code == 0, err
    scan_id = out.split()[1]
    await eventually(lambda: dead(client, scan_id, "badinput"), what="badinput dead")
    await eventually(lambda: _is(scanner_status(client, scan_id, "fake"),
                                 ScannerStatus.SUCCEEDED), what="fake succeeded")
    await api.abandon(client, scan_id, AbandonSignal(reason="known broken"))
    assert (await api.handle(client, scan_id).result()).status is ScanStatus.PARTIAL

    code, out, err = await scanward(*scan, env=env)
    assert code == 0, err
    assert f"scan {scan_id} of main at " in out and "already ended (partial)" in out, out

    # Its findings are real (fake's), but not the whole scan's: said so, exit 0.
    code, out, err = await scanward("findings", scan_id, env=env)
    assert code == 0 and "FAKE001" in out, out + err
    assert f"scan {scan_id} ended partial" in out and "badinput abandoned" in out, out
    for fmt in ("json", "sarif"):
        code, out, err = await scanward("findings", scan_id, "--format", fmt, env=env)
        assert code == 0, err
        json.loads(out)  # stdout stays the document
        assert "FAKE001" in out
        assert err.startswith(f"scanward: note: scan {scan_id} ended partial"), err
        assert len(err.strip().splitlines()) == 1, err


async def test_findings_of_a_failed_or_cancelled_scan_is_an_error_in_every_format(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path) -> None:
    """A SARIF upload of a scan that did not finish would claim a clean (or partial)
    result: exit 1 naming the scan's status, whatever the format."""
    env = cli_env(temporal_env, settings)
    cancelled = await start(client, settings, scan_request(flawed_repo, "fake", "sleepy"))
    await eventually(lambda: _is(scanner_status(client, cancelled.id, "fake"),
                                 ScannerStatus.SUCCEEDED), what="fake succeeded")
    await eventually(lambda: (state_dir / "pid").exists(), what="sleepy running")
    await cancelled.cancel()
    with pytest.raises(WorkflowFailureError):
        await cancelled.result()
    # A commit the repository does not have: the clone fails.
    failed = await start(client, settings, scan_request(flawed_repo, "fake").model_copy(
        update={"commit": "0" * 40}))
    with pytest.raises(WorkflowFailureError):
        await failed.result()
    for scan_id, word in ((cancelled.id, "cancelled"), (failed.id, "failed")):
        for fmt in ("table", "json", "sarif"):
            code, out, err = await scanward("findings", scan_id, "--format", fmt, env=env)
            assert code == 1 and out == "", (fmt, out, err)
            assert err.startswith(f"scanward: error: scan {scan_id} {word}"), err
            assert len(err.strip().splitlines()) == 1, err


async def _contains(text: Awaitable[str], part: str) -> bool:
    return part in await text


async def _is(value: object, expected: object) -> bool:
    return await value is expected  # type: ignore[misc]



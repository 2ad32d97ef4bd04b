"""Operator commands do what they say or exit non-zero with the reason: the real CLI as
a process, against the dev server and a real worker (the ``scan_worker_task`` fixture)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from scanward import client as api
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


async def test_cancel_cancels_only_a_running_scan_and_reports_the_outcome(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path) -> None:
    env = cli_env(temporal_env, settings)
    code, _, err = await scanward("cancel", UNKNOWN, env=env)
    assert code == 1 and f"no such scan: {UNKNOWN}" in err, err

    handle = await start(client, settings, scan_request(flawed_repo, "sleepy"))
    await eventually(lambda: _true((state_dir / "pid").exists()), what="the scanner to start")
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
    await eventually(lambda: _true((state_dir / "pid").exists()), what="the scanner to start")
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
    assert err.startswith(f"scanward: error: no such scan in the store: {UNKNOWN}"), err

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
    assert f"{handle.id}: workflow TERMINATED" in out
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

    # `list` shows failed scans, by their ScanStatus.
    async def listed() -> str | None:
        code, out, _ = await scanward("list", "--status", "failed", env=env)
        return out if code == 0 and unknown.id in out else None

    listing = await eventually(listed, what="the failed scan in `list --status failed`")
    row = next(line for line in listing.splitlines() if unknown.id in line)
    assert "failed" in row and "FAILED" in row


async def _is(value: object, expected: object) -> bool:
    return await value is expected  # type: ignore[misc]


async def _true(value: bool) -> bool:
    return value

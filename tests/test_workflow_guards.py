"""What the ScanWorkflow does with input from any sender (Temporal's CLI, another SDK, a
misspelled signal), and how fast a cancel or a runaway scanner ends: against the real
dev server, a real in-process worker, real git and real scanner subprocesses."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.testing import WorkflowEnvironment

import worker as scan_worker
from scanward import client as api
from scanward.contract import ScannerStatus, ScanStatus
from scanward.settings import Settings, control_queue_for
from tests.conftest import FAST, eventually, scan_request, start
from tests.helpers.history import patch_markers, replays_today, scheduled_by_type
from tests.helpers.pids import process_alive
from tests.helpers.workflows import ends_failed, scan_status_attribute, temporal_cli
from workflows.scan import STOP_ON_CANCEL, STOP_ON_CONTROL_QUEUE

pytestmark = pytest.mark.usefixtures("scan_worker_task")

HOSTILE = {"repository": "ext::sh -c touch% /tmp/pwned", "ref": "main",
           "scanners": ["bandit"]}


@pytest.mark.parametrize("payload, problem", [
    (HOSTILE, "repository: "),
    ({**HOSTILE, "repository": "https://example.com/r.git", "ref": "--upload-pack=x"},
     "ref: "),
    ({"repository": "https://example.com/r.git", "scanners": ["bandit"], "colour": "red"},
     "colour: Extra inputs are not permitted"),
    ("just a string", "invalid scan request"),
])
async def test_undecodable_input_fails_the_workflow_at_once(
        client: Client, settings: Settings, payload: Any, problem: str) -> None:
    scan_id = f"scan-bad-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    await client.start_workflow("ScanWorkflow", payload, id=scan_id,
                                task_queue=settings.task_queue)
    message = await ends_failed(client, scan_id)
    assert time.monotonic() - started < 15
    assert "invalid scan request" in message and problem in message, message
    assert await scan_status_attribute(client, scan_id) == ScanStatus.FAILED.value
    # The progress query still answers, with the reason.
    summary = await api.progress(client, scan_id)
    assert summary.status is ScanStatus.FAILED and problem in (summary.reason or "")


async def test_temporal_cli_start_with_hostile_input_is_listed_failed(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    scan_id = f"scan-{tenant}-{uuid.uuid4().hex[:20]}"
    started = temporal_cli(
        temporal_env, "workflow", "start", "--type", "ScanWorkflow",
        "--task-queue", settings.task_queue, "--workflow-id", scan_id,
        "--search-attribute", f'ScanTenant="{tenant}"',
        "--input", '{"repository": "ext::sh -c id", "scanners": ["bandit"]}')
    assert started.returncode == 0, started.stderr
    message = await ends_failed(client, scan_id)
    assert "invalid scan request: repository" in message and "ext::" in message, message

    async def listed() -> bool:
        found = [s async for s in api.list_scans(client, ScanStatus.FAILED, tenant)]
        return [(i, st) for i, st, _ in found] == [(scan_id, ScanStatus.FAILED)]

    await eventually(listed, what="the failed scan in scanward's list")


async def test_updates_reject_what_would_do_nothing(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    handle = await start(client, settings, scan_request(flawed_repo, "flaky", "fake"))

    async def flaky_dead() -> bool:
        runs = {r.scanner: r for r in (await api.progress(client, handle.id)).scanners}
        return (runs["flaky"].status is ScannerStatus.DEAD
                and runs["fake"].status is ScannerStatus.SUCCEEDED)

    await eventually(flaky_dead, what="flaky dead, fake succeeded")
    rejected = {
        "not part of this scan (its scanners: fake, flaky)": {"scanner": "nosuch"},
        "'fake' is not dead (it is succeeded)": {"scanner": "fake"},
        "memory: Extra inputs are not permitted": {"scanner": "flaky", "memory": 2048},
        "memory_mib: Input should be less than or equal to 262144": {"memory_mib": 10**7},
    }
    for reason, payload in rejected.items():
        with pytest.raises(WorkflowUpdateFailedError) as failure:
            await handle.execute_update("retry", payload)
        assert reason in str(failure.value.cause), (payload, failure.value.cause)
    # A misspelled signal, sent with Temporal's own CLI, cannot be refused: it is logged
    # with the workflow id, not applied.
    with caplog.at_level(logging.WARNING, logger="temporalio.workflow"):
        cli = temporal_cli(temporal_env, "workflow", "signal", "--workflow-id", handle.id,
                           "--name", "retry", "--input", '{"scanner": "flaky", "memory": 2048}')
        assert cli.returncode == 0, cli.stderr
        await eventually(
            lambda: (any("retry signal to " + handle.id in r.getMessage()
                              and "memory: Extra inputs" in r.getMessage()
                              for r in caplog.records)),
            what="the rejected signal in the worker's log")
    runs = {r.scanner: r for r in (await api.progress(client, handle.id)).scanners}
    assert runs["flaky"].status is ScannerStatus.DEAD

    assert await handle.execute_update("abandon", {"scanner": "flaky"}) == ["flaky"]
    assert (await handle.result()).status is ScanStatus.PARTIAL


async def _cancel_a_running_scanner(client: Client, settings: Settings, flawed_repo: Path,
                                    state_dir: Path) -> Any:
    """Start a scan whose scanner sleeps, cancel it once the scanner runs, and check that
    the scanner process is gone and the scan ended cancelled within 5 s; its handle."""
    # Production's heartbeat timeout: before the stop_scanner activity, a cancel reached
    # the scanner only at its next heartbeat, 0.8 x this later.
    tuning = FAST.model_copy(update={"heartbeat_timeout": timedelta(seconds=30)})
    handle = await start(client, settings, scan_request(flawed_repo, "sleepy", tuning=tuning))
    pid_file = state_dir / "pid"
    await eventually(lambda: pid_file.exists() and bool(pid_file.read_text()),
                     what="the scanner to start")
    pid = int(pid_file.read_text())
    await asyncio.sleep(1)  # past the activity's first (immediate) heartbeat
    cancelled = time.monotonic()
    await api.cancel(client, handle.id)
    await eventually(lambda: not process_alive(pid), timeout=30,
                     what="the scanner process to be gone")
    gone = time.monotonic() - cancelled
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    closed = time.monotonic() - cancelled
    print(f"cancel -> scanner process gone {gone:.2f}s, -> workflow closed {closed:.2f}s")
    assert gone <= 5.0, f"scanner process outlived the cancel by {gone:.1f}s"
    assert closed <= 5.0, f"the scan took {closed:.1f}s to end cancelled"
    (run,) = (await api.progress(client, handle.id)).scanners
    assert run.status is ScannerStatus.CANCELLED
    return handle


async def test_cancel_stops_the_scanner_within_seconds(
        client: Client, settings: Settings, flawed_repo: Path, state_dir: Path) -> None:
    handle = await _cancel_a_running_scanner(client, settings, flawed_repo, state_dir)
    # The new path is versioned: its history carries the patch markers and the stop, on
    # the control queue...
    history = await handle.fetch_history()
    markers = patch_markers(history)
    assert STOP_ON_CANCEL in markers and STOP_ON_CONTROL_QUEUE in markers, markers
    stop = scheduled_by_type(history)["stop_scanner"]
    assert stop.task_queue.name == control_queue_for(settings.task_queue)
    # ...and replays against today's code.
    assert await replays_today(history)


async def test_cancel_stops_the_scanner_within_seconds_on_a_full_worker(
        client: Client, settings: Settings, flawed_repo: Path, state_dir: Path) -> None:
    """A worker sized to its machine can have every activity slot held by a running
    scanner: the stop must not wait for one (it waited for the scanner's next heartbeat,
    24 s here, when stops shared the scans' queue)."""
    full = dataclasses.replace(settings, task_queue=f"full-{uuid.uuid4().hex[:8]}",
                               max_concurrent_activities=1)
    async with scan_worker.running(full, client, stop_timeout=30):
        await _cancel_a_running_scanner(client, full, flawed_repo, state_dir)


async def test_runaway_local_scanner_is_deadline_exceeded_and_dead_at_once(
        client: Client, settings: Settings, flawed_repo: Path, state_dir: Path) -> None:
    # policy.job_deadline: a scanner_timeout of 4 s gives the attempt a 2 s deadline, the
    # same rule the kubernetes backend gets as activeDeadlineSeconds.
    tuning = FAST.model_copy(update={"scanner_timeout": timedelta(seconds=4)})
    handle = await start(client, settings, scan_request(flawed_repo, "sleepy", tuning=tuning))

    async def dead() -> bool:
        (run,) = (await api.progress(client, handle.id)).scanners
        return run.status is ScannerStatus.DEAD

    await eventually(dead, timeout=20, what="sleepy to be dead")
    (run,) = (await api.progress(client, handle.id)).scanners
    assert run.failure_class == "deadline_exceeded" and run.attempts == 1, run
    assert "deadline of 2s" in (run.reason or ""), run.reason
    assert not process_alive(int((state_dir / "pid").read_text()))
    await api.abandon(client, handle.id)
    assert (await handle.result()).status is ScanStatus.PARTIAL



"""The worker as a real process: SIGKILL mid-scan and restart (crash safety), SIGTERM
(graceful shutdown finishes in-flight work and exits 0), and what its log must never
hold."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scanward.contract import NotifyTarget, ScannerStatus, ScanStatus
from scanward.devserver import free_port, temporal_binary
from scanward.settings import Settings
from scanward.store import Store
from scanward.webhook_receiver import WebhookReceiver
from tests.conftest import FAST, eventually, scan_request, start
from tests.helpers.pids import process_alive
from tests.helpers.processes import probe, spawn_worker, worker_env


async def wait_pid(pid_file: Path, not_equal: int | None = None) -> int:
    async def ready() -> int | None:
        if pid_file.exists() and pid_file.read_text():
            pid = int(pid_file.read_text())
            return pid if pid != not_equal else None
        return None

    result: int = await eventually(ready, timeout=60, what=f"scanner pid in {pid_file}")
    return result


async def test_sigkill_mid_scan_then_restart_completes_once(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path, receiver: WebhookReceiver, tmp_path: Path) -> None:
    (state_dir / "seconds").write_text("3")
    env = worker_env(temporal_env, settings)
    first = spawn_worker(env, tmp_path / "worker1.log")
    try:
        request = scan_request(flawed_repo, "sleepy", "bandit",
                               notify=(NotifyTarget(url=receiver.url, secret_ref="hook"),))
        handle = await start(client, settings, request)
        scanner_pid = await wait_pid(state_dir / "pid")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        deadline = time.monotonic() + 10
        while process_alive(scanner_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not process_alive(scanner_pid), "the scanner outlived its SIGKILLed worker"
    finally:
        if first.poll() is None:
            first.kill()
    second = spawn_worker(env, tmp_path / "worker2.log")
    try:
        summary = await handle.result()
    finally:
        second.terminate()
        second.wait(30)
    assert summary.status is ScanStatus.COMPLETED
    assert {r.scanner: r.status for r in summary.scanners} == {
        "bandit": ScannerStatus.SUCCEEDED, "sleepy": ScannerStatus.SUCCEEDED}
    store = Store.open(settings.database_url)
    try:
        rows = store.scanner_results(handle.id)
        assert sorted(r.scanner for r in rows) == ["bandit", "sleepy"]  # one row each
        findings = store.findings(handle.id)
        assert len({f.fingerprint for f in findings}) == len(findings)
    finally:
        store.close()
    keys = [d.key for d in receiver.deliveries]
    assert keys and len(set(keys)) == 1
    assert len(receiver.accepted) == 1  # the receiver saw one delivery for the key
    assert second.returncode == 0


async def test_a_scanner_whose_activity_temporal_gave_up_is_adopted_not_run_again(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path, tmp_path: Path) -> None:
    """A worker whose heartbeats stop reaching Temporal for longer than the heartbeat
    timeout (a Temporal outage did it; here the worker is frozen with SIGSTOP while its
    scanner runs on): Temporal gives the try up and retries it. The retry killed the
    scanner's output and ran it again from the start; it now waits for the scanner that
    still runs and uses its results."""
    (state_dir / "seconds").write_text("6")
    worker = spawn_worker(worker_env(temporal_env, settings), tmp_path / "worker.log")
    try:
        handle = await start(client, settings, scan_request(flawed_repo, "sleepy"))
        scanner_pid = await wait_pid(state_dir / "pid")
        worker.send_signal(signal.SIGSTOP)
        await asyncio.sleep(FAST.heartbeat_timeout.total_seconds() + 2)
        worker.send_signal(signal.SIGCONT)
        summary = await handle.result()
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.terminate()
        worker.wait(30)
    assert summary.status is ScanStatus.COMPLETED, summary
    assert int((state_dir / "pid").read_text()) == scanner_pid, "the scanner ran again"
    history = await handle.fetch_history()
    tries = [e.activity_task_started_event_attributes.attempt for e in history.events
             if e.event_type is EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    assert max(tries) > 1, tries  # Temporal did give the first try up


async def test_sigterm_finishes_in_flight_scanner_and_exits_zero(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, state_dir: Path, tmp_path: Path) -> None:
    (state_dir / "seconds").write_text("3")
    port = free_port()
    env = worker_env(temporal_env, settings) | {"SCANWARD_HEALTH_PORT": str(port)}
    proc = spawn_worker(env, tmp_path / "worker.log")
    await eventually(lambda: probe(port, "/readyz", 200), what="worker ready")
    assert await probe(port, "/livez", 200)
    handle = await start(client, settings, scan_request(flawed_repo, "sleepy"))
    await wait_pid(state_dir / "pid")
    proc.send_signal(signal.SIGTERM)
    # While it drains, it is alive but takes no new work.
    await eventually(lambda: probe(port, "/readyz", 503, "draining"), what="draining")
    assert await probe(port, "/livez", 200)
    assert await asyncio.to_thread(proc.wait, 30) == 0, (tmp_path / "worker.log").read_text()
    log = (tmp_path / "worker.log").read_text()
    assert "finishing in-flight activities" in log and "worker stopped" in log
    # The in-flight attempt completed before exit: its result is in history.
    completed = [e async for e in handle.fetch_history_events()
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
    assert completed, "the running scanner was not allowed to finish"
    restarted = spawn_worker(env, tmp_path / "worker2.log")
    try:
        summary = await handle.result()
    finally:
        restarted.terminate()
        restarted.wait(30)
    sleepy = summary.scanners[0]
    assert sleepy.status is ScannerStatus.SUCCEEDED and sleepy.attempts == 1
    started = [e.activity_task_started_event_attributes.attempt
               async for e in handle.fetch_history_events()
               if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    assert all(a == 1 for a in started), started  # nothing was retried


async def test_webhook_credentials_stay_out_of_the_worker_log(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, receiver: WebhookReceiver, tmp_path: Path) -> None:
    """A webhook URL's query (or path) can carry a token: delivering to it logs neither
    (httpx would log every request's full URL at INFO). Credentials in the userinfo are
    refused before the scan starts (contract.request_problems)."""
    token, password = f"tok{uuid.uuid4().hex}", f"pw{uuid.uuid4().hex}"
    url = f"{receiver.url}?token={token}&password={password}"
    log = tmp_path / "worker.log"
    proc = spawn_worker(worker_env(temporal_env, settings), log)
    try:
        handle = await start(client, settings, scan_request(
            flawed_repo, "fake", notify=(NotifyTarget(url=url, secret_ref="hook"),)))
        summary = await handle.result()
        await eventually(lambda: _accepted(receiver), what="the webhook delivered")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    assert summary.status is ScanStatus.COMPLETED
    text = log.read_text()
    assert "worker polling" in text  # the log is the worker's, at INFO
    assert token not in text and password not in text, text


async def _accepted(receiver: WebhookReceiver) -> bool:
    return len(receiver.accepted) == 1


async def test_a_namespace_without_the_search_attributes_is_refused_at_start(
        settings: Settings, tmp_path: Path) -> None:
    """On a server without scanward's search attributes the worker started and looked
    ready, while every scan failed to start ("no mapping defined for search attribute
    ScanTenant") and the survey logged a warning each interval. It now exits 1 naming
    them and the commands that create them; run as given, the worker then starts."""
    bare = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), ui=False, dev_server_log_level="error")
    try:
        address = bare.client.service_client.config.target_host
        env = worker_env(bare, settings) | {"TEMPORAL_ADDRESS": address}
        log = tmp_path / "worker.log"
        refused = spawn_worker(env, log)
        try:
            assert refused.wait(60) == 1
        finally:
            if refused.poll() is None:  # it ran on (as it did before): not past the test
                refused.kill()
                refused.wait(10)
        said = log.read_text()
        assert ("lacks scanward's search attribute(s) ScanStatus, ScanTenant, "
                "ScanDeadScanners") in said, said
        commands = said.split("(or has them with another type): ")[1].strip()
        for command in commands.split(" && "):
            argv = command.split()
            await asyncio.to_thread(subprocess.run,
                                    [temporal_binary(), *argv[1:], "--address", address],
                                    check=True, capture_output=True, timeout=60)
        started = spawn_worker(env, tmp_path / "worker2.log")
        try:
            await eventually(lambda: ("worker polling" in (tmp_path / "worker2.log")
                                           .read_text()), timeout=60, what="the worker")
        finally:
            started.terminate()
            started.wait(30)
    finally:
        await bare.shutdown()



"""Per-tenant fairness: the weights and caps parse with clear errors; a started scan
carries its tenant's fairness key and weight (read back from its history); and a real
worker process never runs more than SCANWARD_TENANT_MAX_JOBS scanner jobs of one tenant
at once, heartbeating while the others wait (observed from the synthetic scanner's
start/stop stamps)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scanward import client as api
from scanward.contract import ScannerStatus, ScanRequest, ScanStatus
from scanward.inputs import InputError
from scanward.load.synthetic import Behaviour, LoadRepo
from scanward.settings import Settings
from scanward.synthetic_scanner import STAMPS_FILE
from scanward.tenants import JobCaps, parse_job_caps, parse_weights
from tests.conftest import FAST, eventually
from tests.test_worker_process import spawn_worker, worker_env

# ------------------------------------------------------------------ parsing


def test_weights_parse() -> None:
    assert parse_weights("acme=3, small=0.5,") == {"acme": 3.0, "small": 0.5}
    assert parse_weights("") == parse_weights(None) == {}


@pytest.mark.parametrize(("text", "message"), [
    ("acme", "'acme' is not TENANT=VALUE"),
    ("acme=lots", "weight of 'acme' is not a number: 'lots'"),
    ("acme=0", "must be between 0.001 and 1000"),
    ("acme=1,acme=2", "tenant 'acme' listed twice"),
])
def test_bad_weights_are_named(text: str, message: str) -> None:
    with pytest.raises(InputError, match=f"SCANWARD_TENANT_WEIGHTS: .*{message}"):
        parse_weights(text)


def test_job_caps_parse() -> None:
    assert parse_job_caps("4") == JobCaps({}, 4)
    caps = parse_job_caps("acme=8,*=2")
    assert (caps.cap("acme"), caps.cap("other")) == (8, 2)
    assert parse_job_caps("acme=1").cap("other") is None
    assert not parse_job_caps(None).enabled
    with pytest.raises(InputError, match="cap of 'acme' must be at least 1, not 0"):
        parse_job_caps("acme=0")
    with pytest.raises(InputError, match="cap of '\\*' is not a whole number: 'two'"):
        parse_job_caps("two")


# ------------------------------------------------------------------ wiring


async def _started_priority(client: Client, scan_id: str) -> tuple[str, float]:
    async for event in client.get_workflow_handle(scan_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            priority = event.workflow_execution_started_event_attributes.priority
            return priority.fairness_key, priority.fairness_weight
    raise AssertionError("no WorkflowExecutionStarted event")


async def test_start_scan_carries_the_tenants_fairness_key_and_weight(
        client: Client, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    repo = LoadRepo(tmp_path / "repo")
    commit = repo.add("ok", Behaviour())
    monkeypatch.setenv("SCANWARD_TENANT_WEIGHTS", "acme=3,small=0.5")
    ids = {}
    for tenant in ("acme", "small", "other"):
        request = ScanRequest(repository=repo.url, ref="ok", commit=commit, tenant=tenant,
                              scanners=("synthetic",), dedupe_key=uuid.uuid4().hex)
        # No worker is needed: the priority is the start request's.
        ids[tenant] = (await api.start_scan(client, request,
                                            task_queue=settings.task_queue)).id
    assert await _started_priority(client, ids["acme"]) == ("acme", 3.0)
    assert await _started_priority(client, ids["small"]) == ("small", 0.5)
    assert await _started_priority(client, ids["other"]) == ("other", 0.0)  # default 1
    for scan_id in ids.values():
        await client.get_workflow_handle(scan_id).terminate()
    monkeypatch.setenv("SCANWARD_TENANT_WEIGHTS", "acme=heavy")
    with pytest.raises(InputError, match="weight of 'acme' is not a number"):
        await api.start_scan(client, ScanRequest(repository=repo.url, commit=commit,
                                                 scanners=("synthetic",), tenant="acme"),
                             task_queue=settings.task_queue)


async def test_resolving_a_ref_queues_with_the_tenants_priority(
        client: Client, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ResolveRef runs before every scan started without a commit: it must not queue
    behind another tenant's backlog either."""
    repo = LoadRepo(tmp_path / "repo")
    repo.add("ok", Behaviour())
    monkeypatch.setenv("SCANWARD_TENANT_WEIGHTS", "small=0.5")
    request = ScanRequest(repository=repo.url, ref="ok", tenant="small",
                          scanners=("synthetic",))
    queue = f"nobody-{uuid.uuid4().hex[:8]}"  # no worker: the resolve times out at once
    with pytest.raises(api.RefNotResolved, match="no worker answered"):
        await api.resolve_ref(client, request, queue, within=timedelta(seconds=1))
    async def resolves() -> list[str]:
        return [w.id async for w in client.list_workflows(
            f'WorkflowType = "ResolveRef" AND TaskQueue = "{queue}"')]

    (resolve_id,) = await eventually(resolves, what="the ResolveRef in visibility")
    assert await _started_priority(client, resolve_id) == ("small", 0.5)


# ------------------------------------------------------------------ per-tenant cap


def _max_concurrent(stamps: list[tuple[float, str, str]], tenant: str) -> int:
    running = peak = 0
    for _, what, scan_id in sorted(stamps):
        if scan_id.startswith(f"scan-{tenant}-"):
            running += 1 if what == "start" else -1
            peak = max(peak, running)
    return peak


async def test_tenant_cap_limits_concurrent_jobs_and_heartbeats_while_waiting(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    repo = LoadRepo(tmp_path / "repo")
    # 6 scans of 1.5 s each through 2 slots: the last waits ~4.5 s for its slot, more
    # than FAST's 2 s heartbeat timeout, so only heartbeating while waiting keeps it.
    commit = repo.add("slow", Behaviour(seconds=1.5, findings=2, stamps=str(stamps)))
    env = worker_env(temporal_env, settings) | {"SCANWARD_TENANT_MAX_JOBS": "busy=2"}
    worker = spawn_worker(env, tmp_path / "worker.log")
    try:
        def request(tenant: str) -> ScanRequest:
            return ScanRequest(repository=repo.url, ref="slow", commit=commit, tenant=tenant,
                               scanners=("synthetic",), tuning=FAST,
                               dedupe_key=uuid.uuid4().hex)

        handles = [await api.start_scan(client, request("busy"),
                                        task_queue=settings.task_queue) for _ in range(6)]
        handles += [await api.start_scan(client, request("calm"),
                                         task_queue=settings.task_queue) for _ in range(3)]
        summaries = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
    finally:
        worker.terminate()
        worker.wait(30)
    assert all(s.status is ScanStatus.COMPLETED for s in summaries)
    # One attempt each: no activity timed out while waiting for a slot.
    assert all(r.status is ScannerStatus.SUCCEEDED and r.attempts == 1
               for s in summaries for r in s.scanners)
    lines = (stamps / STAMPS_FILE).read_text().splitlines()
    events = [(float(t), what, scan_id) for what, t, scan_id, _ in (ln.split() for ln in lines)]
    assert len(events) == 2 * 9
    assert _max_concurrent(events, "busy") == 2  # capped, and the cap was reached
    assert _max_concurrent(events, "calm") == 3  # another tenant is not held back
    log = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in log, log[-3000:]

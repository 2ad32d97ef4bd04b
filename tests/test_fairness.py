"""Per-tenant fairness: the weights and caps parse with clear errors; a started scan
carries its tenant's fairness key and weight (read back from its history); a worker
takes no more work than it runs (its default slots), and an activity can lend its slot
back while it waits; and a real worker process never runs more than
SCANWARD_TENANT_MAX_JOBS scanner jobs of one tenant at once, sends the others back to the
task queue instead of holding its slots (so other tenants still run), without a history
event per wait (observed from the synthetic scanner's start/stop stamps)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import (
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
)

from scanward import client as api
from scanward.contract import ScannerStatus, ScanRequest, ScanStatus, ScanSummary
from scanward.inputs import InputError
from scanward.load.synthetic import Behaviour, LoadRepo
from scanward.settings import Settings, available_cpus
from scanward.synthetic_scanner import STAMPS_FILE, prepare_stamps
from scanward.tenants import (
    REQUEUE_MOST,
    JobCaps,
    parse_job_caps,
    parse_weights,
    requeue_delay,
)
from scanward.worker_slots import ActivitySlots
from tests.conftest import FAST, eventually, scan_request, start
from tests.helpers.history import patch_markers, replays_today, scheduled_by_type
from tests.helpers.processes import spawn_worker, worker_env
from workflows.scan import COST_WEIGHTED

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


def test_a_capped_job_goes_back_to_the_queue_while_it_has_attempts_to_spare() -> None:
    # Production's io_attempts (5): three times back to the queue, doubling; the fourth
    # attempt waits on the worker; the fifth stays for a real failure.
    assert [requeue_delay(a, 5) for a in range(1, 6)] == [
        timedelta(seconds=0.5), timedelta(seconds=1), timedelta(seconds=2), None, None]
    assert requeue_delay(1, 1) is None and requeue_delay(1, 2) is None
    assert requeue_delay(60, 0) == REQUEUE_MOST  # no attempt limit: always, at most 10 s


# ------------------------------------------------------------------ worker sizing


def test_default_worker_sizing_takes_what_the_machine_runs(tmp_path: Path) -> None:
    home = {"SCANWARD_HOME": str(tmp_path)}
    local = Settings.from_env(home)
    assert local.max_concurrent_activities == 2 * available_cpus()
    assert local.max_concurrent_workflow_tasks == 4
    kube = Settings.from_env(home | {"SCANWARD_BACKEND": "kubernetes"})
    assert kube.max_concurrent_activities == 500  # jobs wait on the cluster
    mine = Settings.from_env(home | {"SCANWARD_MAX_CONCURRENT_ACTIVITIES": "7",
                                     "SCANWARD_MAX_CONCURRENT_WORKFLOW_TASKS": "3"})
    assert (mine.max_concurrent_activities, mine.max_concurrent_workflow_tasks) == (7, 3)


_CTX = cast(SlotReserveContext, object())  # ActivitySlots does not read it


def _release() -> SlotReleaseContext:
    return SlotReleaseContext(slot_info=None, permit=SlotPermit())


async def test_activity_slots_lend_a_waiting_slot_and_take_it_back_first() -> None:
    slots = ActivitySlots(2)
    await slots.reserve_slot(_CTX)
    await slots.reserve_slot(_CTX)
    assert slots.try_reserve_slot(_CTX) is None
    poll = asyncio.create_task(slots.reserve_slot(_CTX))
    await asyncio.sleep(0.01)
    assert not poll.done()  # full

    waiting = asyncio.Event()
    done_waiting = asyncio.Event()

    async def activity_waiting_for_its_tenant() -> None:
        async with slots.lent():
            waiting.set()
            await done_waiting.wait()

    lender = asyncio.create_task(activity_waiting_for_its_tenant())
    await asyncio.wait_for(poll, 1)  # the lent slot went to the waiting poll
    assert (slots.taken, slots.lending) == (2, 1) and waiting.is_set()

    later_poll = asyncio.create_task(slots.reserve_slot(_CTX))
    done_waiting.set()
    await asyncio.sleep(0.01)
    assert not lender.done() and not later_poll.done()  # full: both wait for a slot
    # The SDK releases from its own threads; the lender, not the later poll, gets it.
    await asyncio.to_thread(slots.release_slot, _release())
    await asyncio.wait_for(lender, 1)
    assert not later_poll.done() and (slots.taken, slots.lending) == (2, 0)

    later_poll.cancel()  # a cancelled poll (the worker stopping) gives nothing away
    await asyncio.gather(later_poll, return_exceptions=True)
    assert slots.taken == 2
    slots.release_slot(_release())
    assert slots.try_reserve_slot(_CTX) is not None and slots.taken == 2


async def test_a_lender_cancelled_while_waiting_counts_its_slot_again_at_once() -> None:
    slots = ActivitySlots(1)
    await slots.reserve_slot(_CTX)  # the activity's own slot
    forever = asyncio.Event()

    async def waiting() -> None:
        async with slots.lent():
            await forever.wait()

    lender = asyncio.create_task(waiting())
    poll = await asyncio.wait_for(slots.reserve_slot(_CTX), 1)  # took the lent slot
    assert poll is not None and (slots.taken, slots.lending) == (1, 1)
    lender.cancel()  # the scan's cancel: the activity ends now, without waiting a slot
    await asyncio.gather(lender, return_exceptions=True)
    assert (slots.taken, slots.lending) == (2, 0)  # one over, until the SDK releases
    slots.release_slot(_release())  # the cancelled activity's
    slots.release_slot(_release())  # the poll's
    assert slots.taken == 0 and slots.try_reserve_slot(_CTX) is not None


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


@pytest.mark.usefixtures("scan_worker_task")
async def test_a_scans_activities_weigh_by_their_cost(
        client: Client, settings: Settings, flawed_repo: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fairness counts tasks: a clone or a scanner run carries an eighth of its tenant's
    weight (it holds a worker slot about as long as eight store writes), so a tenant
    whose backlog is clones does not take most of the slots
    (scanward.policy.activity_priority)."""
    monkeypatch.setenv("SCANWARD_TENANT_WEIGHTS", "acme=2")
    handle = await start(client, settings, scan_request(flawed_repo, "fake", tenant="acme"))
    assert (await handle.result()).status is ScanStatus.COMPLETED
    history = await handle.fetch_history()
    weights = {name: (scheduled.priority.fairness_key, scheduled.priority.fairness_weight)
               for name, scheduled in scheduled_by_type(history).items()}
    assert weights == {"clone_repository": ("acme", 0.25), "run_scanner": ("acme", 0.25),
                       "persist_results": ("acme", 2.0), "finalize_scan": ("acme", 2.0),
                       "cleanup_workspace": ("acme", 2.0)}
    assert COST_WEIGHTED in patch_markers(history)
    assert await replays_today(history)


# ------------------------------------------------------------------ per-tenant cap


def _max_concurrent(stamps: list[tuple[float, str, str]], tenant: str) -> int:
    running = peak = 0
    for _, what, scan_id in sorted(stamps):
        if scan_id.startswith(f"scan-{tenant}-"):
            running += 1 if what == "start" else -1
            peak = max(peak, running)
    return peak


def _stamps(stamps: Path) -> list[tuple[float, str, str]]:
    lines = (stamps / STAMPS_FILE).read_text().splitlines()
    return [(float(t), what, scan_id) for what, t, scan_id, _ in (ln.split() for ln in lines)]


async def test_tenant_cap_limits_concurrent_jobs_and_heartbeats_while_waiting(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    prepare_stamps(stamps)
    repo = LoadRepo(tmp_path / "repo")
    # 6 scans of 1.5 s each through 2 slots: the last waits ~4.5 s for its slot, more
    # than FAST's 2 s heartbeat timeout: it goes back to the queue once (FAST's 3
    # attempts spare one requeue), then waits on the worker, heartbeating.
    commit = repo.add("slow", Behaviour(seconds=1.5, findings=2, stamps=str(stamps)))
    # Slots for every job: only the cap holds busy back.
    env = worker_env(temporal_env, settings) | {"SCANWARD_TENANT_MAX_JOBS": "busy=2",
                                                "SCANWARD_MAX_CONCURRENT_ACTIVITIES": "10"}
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
    events = _stamps(stamps)
    assert len(events) == 2 * 9
    assert _max_concurrent(events, "busy") == 2  # capped, and the cap was reached
    assert _max_concurrent(events, "calm") == 3  # another tenant is not held back
    log = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in log, log[-3000:]


async def test_a_capped_tenant_waiting_for_its_slot_does_not_keep_others_out(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path) -> None:
    """Two worker slots; busy may run one job at a time. Busy's first job runs in one
    slot; its second, finding the cap reached, goes back to the task queue, then (no
    attempt to spare) waits with its slot lent back, instead of sitting in the worker's
    other slot: calm's scans run meanwhile. (Waiting in the slot, calm waited for busy's
    first job to end.) No history event per wait: every scan's history is as long."""
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    prepare_stamps(stamps)
    repo = LoadRepo(tmp_path / "repo")
    repo.add("slow", Behaviour(seconds=6, findings=1, stamps=str(stamps)))
    repo.add("quick", Behaviour(seconds=0.2, findings=1, stamps=str(stamps)))
    env = worker_env(temporal_env, settings) | {"SCANWARD_TENANT_MAX_JOBS": "busy=1",
                                                "SCANWARD_MAX_CONCURRENT_ACTIVITIES": "2"}
    worker = spawn_worker(env, tmp_path / "worker.log")

    async def scan(tenant: str, ref: str) -> WorkflowHandle[Any, ScanSummary]:
        request = ScanRequest(repository=repo.url, ref=ref, commit=repo.commits[ref],
                              tenant=tenant, scanners=("synthetic",), tuning=FAST,
                              dedupe_key=uuid.uuid4().hex)
        return await api.start_scan(client, request, task_queue=settings.task_queue)

    async def busy_running() -> bool:
        return (stamps / STAMPS_FILE).stat().st_size > 0

    try:
        busy = [await scan("busy", "slow") for _ in range(2)]
        await eventually(busy_running, what="busy's first job")
        await asyncio.sleep(1.0)  # busy's second job has found the cap reached
        calm = [await scan("calm", "quick") for _ in range(2)]
        handles = [*busy, *calm]
        summaries = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)),
                                           120)
    finally:
        worker.terminate()
        worker.wait(30)
    assert all(s.status is ScanStatus.COMPLETED for s in summaries)
    assert all(r.attempts == 1 for s in summaries for r in s.scanners)
    events = _stamps(stamps)
    assert _max_concurrent(events, "busy") == 1
    busy_first_stop = min(t for t, what, i in events if what == "stop" and "-busy-" in i)
    calm_stops = [t for t, what, i in events if what == "stop" and "-calm-" in i]
    assert len(calm_stops) == 2 and max(calm_stops) < busy_first_stop
    attempts, lengths = [], set()
    for handle in handles:
        history = await client.get_workflow_handle(handle.id).fetch_history()
        lengths.add(len(history.events))
        attempts += [e.activity_task_started_event_attributes.attempt for e in history.events
                     if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED]
    assert max(attempts) > 1  # busy's second job was retried from the queue ...
    assert len(lengths) == 1  # ... and no scan's history grew for it
    log = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in log, log[-3000:]

"""A worker under load must not keep what finished scans leave behind: open files,
child processes (reapers, scanners, git), checkouts, and per-tenant slot state of
tenants that hold no job (``SCANWARD_TENANT_MAX_JOBS``)."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.scanner_jobs import AT_CAPACITY, TenantSlots
from scanward import client as api
from scanward.contract import ScanRequest, ScanStatus
from scanward.load.synthetic import Behaviour, LoadRepo
from scanward.settings import Settings
from scanward.tenants import parse_job_caps
from tests.conftest import FAST, eventually
from tests.helpers.processes import spawn_worker, worker_env


def _semaphores_alive() -> int:
    gc.collect()
    return sum(isinstance(o, asyncio.Semaphore) for o in gc.get_objects())


def _no_heartbeat(*_details: object) -> None:
    """Jobs here never wait long enough to heartbeat."""


async def test_tenant_slots_forget_tenants_that_hold_no_job() -> None:
    """Tenant names come from requests: with a cap for every tenant (``"2"`` or
    ``"*=2"``) a worker kept one semaphore per tenant it ever ran, forever (a tenant per
    pull request or per customer project grows it without bound)."""
    slots = TenantSlots(parse_job_caps("2"))
    before = _semaphores_alive()
    for i in range(2_000):
        async with slots.slot(f"tenant-{i}", _no_heartbeat, 1.0):
            pass
    assert _semaphores_alive() - before < 10

    # The cap still holds while jobs run, and a tenant forgotten starts with all its slots.
    async with slots.slot("acme", _no_heartbeat, 1.0), slots.slot("acme", _no_heartbeat, 1.0):
        with pytest.raises(ApplicationError) as info:
            async with slots.slot("acme", _no_heartbeat, 1.0):
                pass
        assert info.value.type == AT_CAPACITY
    async with slots.slot("acme", _no_heartbeat, 1.0), slots.slot("acme", _no_heartbeat, 1.0):
        pass

    # A job waiting for a slot (no attempt to spare) gets the one released, and then
    # nothing of "acme" is kept.
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.slot("acme", _no_heartbeat, 1.0):
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_wait_for_slot(slots))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(*holders, waiter), 10)
    assert _semaphores_alive() - before < 10


async def _wait_for_slot(slots: TenantSlots) -> None:
    async with slots.slot("acme", _no_heartbeat, 1.0, attempt=5, maximum_attempts=5):
        pass


# ------------------------------------------------------------- a worker process under load


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
            kids = [int(k) for t in tasks
                    for k in Path(f"/proc/{parent}/task/{t}/children").read_text().split()]
        except OSError:
            continue
        found += kids
        todo += kids
    return found


async def _scanner_running(client: Client, scan_id: str) -> bool:
    desc = await client.get_workflow_handle(scan_id).describe()
    return any(p.activity_type.name == "run_scanner"
               and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
               for p in desc.raw_description.pending_activities)


async def test_a_worker_process_gives_back_its_files_and_children_after_scans(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path) -> None:
    """Scans that succeed, crash then succeed, and are cancelled while their scanner
    runs: afterwards the worker holds about the files it held before (the store's pool
    may open a few connections more: bounded), no process of its own, no checkout."""
    repo = LoadRepo(tmp_path / "repo")
    commits = {name: repo.add(name, behaviour) for name, behaviour in {
        "ok": Behaviour(seconds=0.3), "crash": Behaviour(outcome="crash_then_ok"),
        "long": Behaviour(seconds=60)}.items()}

    def request(name: str) -> ScanRequest:
        return ScanRequest(repository=repo.url, ref=name, commit=commits[name],
                           scanners=("synthetic",), tuning=FAST,
                           dedupe_key=uuid.uuid4().hex)

    async def scan(name: str) -> object:
        handle = await api.start_scan(client, request(name), task_queue=settings.task_queue)
        return await handle.result()

    worker = spawn_worker(worker_env(temporal_env, settings), tmp_path / "worker.log")
    try:
        await scan("ok")  # the first scan opens the store, the clients, the pools
        baseline = _fds(worker.pid)
        long_scans = [await api.start_scan(client, request("long"),
                                           task_queue=settings.task_queue)
                      for _ in range(2)]
        for handle in long_scans:
            await eventually(functools.partial(_scanner_running, client, handle.id),
                             timeout=60, what="a long scanner running")
        for handle in long_scans:
            await handle.cancel()
        results = await asyncio.gather(*(scan("ok") for _ in range(16)),
                                       *(scan("crash") for _ in range(4)))
        assert all(getattr(r, "status", None) is ScanStatus.COMPLETED for r in results)
        for handle in long_scans:
            with pytest.raises(WorkflowFailureError):
                await handle.result()

        async def settled() -> bool:
            return not _descendants(worker.pid) and _fds(worker.pid) <= baseline + 10

        await eventually(settled, timeout=30, what=f"no children and about {baseline} fds")
        assert list(settings.workspace_root.iterdir()) == []
    finally:
        worker.terminate()
        worker.wait(30)

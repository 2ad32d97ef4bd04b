"""The paths a ScanWorkflow can take, each one a real scan driven to its end: the
scenarios ``tools/record_history.py`` records into the replay corpus.

Each scenario starts a scan on a real dev server served by real in-process workers
(local backend: real git, real scanner subprocesses from tests/scanners/fake_scanner.py
and bandit; kubernetes backend: the test control plane of tests/k8s_fixture.py, kwok as
the kubelet), steers it like an operator or a failing world would, checks it ended the
way the scenario says, and returns its handle. The shared test helpers are reused, not
copied: the fake-scanner catalog and FAST tuning (tests/conftest.py), the held clone
(tests/test_clone.py), the kube catalog and pod stand-in (tests/test_kube_backend.py).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError

from scanward import client as api
from scanward.contract import (
    FailureClass,
    NotifyTarget,
    RetrySignal,
    ScannerRun,
    ScannerStatus,
    ScanRequest,
    ScanStatus,
    ScanSummary,
)
from scanward.devserver import free_port
from scanward.settings import Settings
from tests.conftest import FAST, eventually, scan_request

Handle = WorkflowHandle[Any, ScanSummary]
T = TypeVar("T")


@dataclass(frozen=True)
class Stack:
    """What the scenarios run against."""

    client: Client
    local: Settings  # the local-backend worker (fake scanners, bandit)
    held: Settings  # a local worker whose clones wait mid-fetch until ``gate`` exists
    gate: Path
    repo: Path  # the example repository (a real git repo)
    big_repo: Path  # the same plus a 1 MiB blob: a held fetch stays mid-transfer
    state: Path  # the fake scanners' state directory
    kube: Settings | None = None  # the kubernetes-backend worker, when recording those
    kube_catalog: Path | None = None
    kube_jobs: Callable[[], list[str]] | None = None  # names of the Jobs created so far
    evict: Callable[[str], None] | None = None  # evict the running pod of a Job


Scenario = Callable[[Stack], Awaitable[Handle]]


def _reset(state: Path) -> None:
    for name in ("fixed", "pid", "seconds"):
        (state / name).unlink(missing_ok=True)


async def _start(stack: Stack, settings: Settings, request: ScanRequest) -> Handle:
    return await api.start_scan(stack.client, request, task_queue=settings.task_queue)


async def _run_of(stack: Stack, handle: Handle, scanner: str) -> ScannerRun:
    runs = {r.scanner: r for r in (await api.progress(stack.client, handle.id)).scanners}
    return runs[scanner]


async def _until(stack: Stack, handle: Handle, scanner: str,
                 status: ScannerStatus) -> ScannerRun:
    async def reached() -> ScannerRun | None:
        run = await _run_of(stack, handle, scanner)
        return run if run.status is status else None

    run: ScannerRun = await eventually(reached, timeout=60,
                                       what=f"{scanner} {status.value}")
    return run


async def _ends(handle: Handle, status: ScanStatus) -> Handle:
    summary = await handle.result()
    if summary.status is not status:
        raise AssertionError(f"{handle.id} ended {summary.status.value}, not {status.value}")
    return handle


async def _fails(handle: Handle, text: str) -> Handle:
    try:
        await handle.result()
    except WorkflowFailureError as e:
        if text not in str(e.cause):
            raise AssertionError(f"{handle.id} failed with {e.cause}, not {text!r}") from e
        return handle
    raise AssertionError(f"{handle.id} did not fail")


# --------------------------------------------------------------- local backend


async def completed_single(stack: Stack) -> Handle:
    """One real scanner (bandit) succeeds."""
    handle = await _start(stack, stack.local, scan_request(stack.repo, "bandit"))
    return await _ends(handle, ScanStatus.COMPLETED)


async def completed_multi(stack: Stack) -> Handle:
    """Three scanners in parallel, all succeed."""
    handle = await _start(stack, stack.local, scan_request(stack.repo, "bandit", "fake", "many"))
    return await _ends(handle, ScanStatus.COMPLETED)


async def _dead_flaky(stack: Stack) -> Handle:
    """flaky crashes until dead while fake succeeds."""
    _reset(stack.state)
    handle = await _start(stack, stack.local, scan_request(stack.repo, "flaky", "fake"))
    await _until(stack, handle, "flaky", ScannerStatus.DEAD)
    return handle


async def dead_retry_signal(stack: Stack) -> Handle:
    """Dead, fixed, retried by the batch signal (retry --all-dead / temporal workflow
    signal), then succeeds."""
    handle = await _dead_flaky(stack)
    (stack.state / "fixed").touch()
    await handle.signal("retry", RetrySignal())
    return await _ends(handle, ScanStatus.COMPLETED)


async def dead_retry_update(stack: Stack) -> Handle:
    """Dead, fixed, retried through the validating update (scanward retry ID) with more
    memory, then succeeds."""
    handle = await _dead_flaky(stack)
    (stack.state / "fixed").touch()
    await api.retry(stack.client, handle.id, RetrySignal(scanner="flaky", memory_mib=512))
    return await _ends(handle, ScanStatus.COMPLETED)


async def dead_abandon(stack: Stack) -> Handle:
    """Dead, then abandoned by the operator: the scan ends partial."""
    handle = await _dead_flaky(stack)
    await api.abandon(stack.client, handle.id)
    return await _ends(handle, ScanStatus.PARTIAL)


async def cancel_running(stack: Stack) -> Handle:
    """Cancelled while its scanner runs: stop_scanner stops it (the STOP_ON_CANCEL path)."""
    _reset(stack.state)
    (stack.state / "seconds").write_text("60")
    handle = await _start(stack, stack.local, scan_request(stack.repo, "sleepy"))
    await _until(stack, handle, "sleepy", ScannerStatus.RUNNING)
    await eventually(lambda: _true((stack.state / "pid").exists()), what="sleepy to start")
    await asyncio.sleep(1)  # past the scanner activity's first heartbeat
    await api.cancel(stack.client, handle.id)
    return await _cancelled(handle)


async def cancel_during_clone(stack: Stack) -> Handle:
    """Cancelled while git fetches: the scan ends cancelled, not clone-failed."""
    from tests.test_clone import fetch_held

    stack.gate.unlink(missing_ok=True)
    handle = await _start(stack, stack.held, scan_request(stack.big_repo, "fake"))
    await eventually(lambda: fetch_held(stack.big_repo, stack.held.workspace_root),
                     timeout=60, what="the fetch to be under way")
    await api.cancel(stack.client, handle.id)
    try:
        return await _cancelled(handle)
    finally:
        stack.gate.touch()


async def _cancelled(handle: Handle) -> Handle:
    try:
        await handle.result()
    except WorkflowFailureError as e:
        if isinstance(e.cause, CancelledError):
            return handle
        raise
    raise AssertionError(f"{handle.id} was not cancelled")


async def clone_failure(stack: Stack) -> Handle:
    """The ref does not exist: the clone fails at once, the scan fails."""
    # Started as another SDK or Temporal's CLI would: our client refuses an unknown ref
    # before anything starts.
    request = scan_request(stack.repo, "fake").model_copy(update={"ref": "no-such-branch"})
    handle: Handle = await stack.client.start_workflow(
        "ScanWorkflow", request, id=request.scan_id(), task_queue=stack.local.task_queue,
        result_type=ScanSummary)
    return await _fails(handle, "clone failed")


async def webhook_down(stack: Stack) -> Handle:
    """The webhook receiver refuses connections: the delivery fails after its retries and
    the scan still completes."""
    closed = free_port()  # nothing listens there
    handle = await _start(stack, stack.local, scan_request(
        stack.repo, "fake", notify=(NotifyTarget(url=f"http://127.0.0.1:{closed}/hook",
                                                 secret_ref="hook"),)))  # noqa: S106 - a name
    return await _ends(handle, ScanStatus.COMPLETED)


async def bad_input(stack: Stack) -> Handle:
    """A start request that does not validate (as Temporal's CLI can send): fails at once."""
    scan_id = f"scan-default-{uuid.uuid4().hex[:20]}"
    handle: Handle = await stack.client.start_workflow(
        "ScanWorkflow", {"repository": "ext::sh -c id", "scanners": ["bandit"]}, id=scan_id,
        task_queue=stack.local.task_queue, result_type=ScanSummary)
    return await _fails(handle, "invalid scan request: repository")


async def request_refused(stack: Stack) -> Handle:
    """A start request the models accept but the scan cannot run (an abbreviated commit):
    fails at once behind the ``request-checked`` patch (its marker is in the history)."""
    scan_id = f"scan-default-{uuid.uuid4().hex[:20]}"
    handle: Handle = await stack.client.start_workflow(
        "ScanWorkflow", {"repository": stack.repo.as_uri(), "commit": "0123abc",
                         "scanners": ["fake"]}, id=scan_id,
        task_queue=stack.local.task_queue, result_type=ScanSummary)
    return await _fails(handle, "commit: '0123abc' is abbreviated")


async def deadline_abandoned(stack: Stack) -> Handle:
    """The local job deadline is exceeded: dead at once (not retried), then abandoned."""
    _reset(stack.state)
    (stack.state / "seconds").write_text("30")
    tuning = FAST.model_copy(update={"scanner_timeout": timedelta(seconds=4)})
    handle = await _start(stack, stack.local, scan_request(stack.repo, "sleepy", tuning=tuning))
    run = await _until(stack, handle, "sleepy", ScannerStatus.DEAD)
    if run.failure_class is not FailureClass.DEADLINE_EXCEEDED:
        raise AssertionError(f"sleepy died of {run.failure_class}, not deadline_exceeded")
    await api.abandon(stack.client, handle.id)
    return await _ends(handle, ScanStatus.PARTIAL)


# ---------------------------------------------------------- kubernetes backend


def _swap_when_created(stack: Stack, job: str, scanner: str, change: dict[str, Any]) -> None:
    """Once ``job`` exists (its spec taken from the catalog), change ``scanner``'s entry:
    the next attempt's Job follows the new entry (the worker reads the catalog per run)."""
    catalog, jobs = _needs(stack.kube_catalog), _needs(stack.kube_jobs)

    async def swap() -> None:
        await eventually(lambda: _true(job in jobs()), timeout=60, what=f"Job {job}")
        doc = json.loads(catalog.read_text())
        for entry in doc["scanners"]:
            if entry["name"] == scanner:
                for key in ("pod_annotations", "pod_labels"):
                    entry.pop(key, None)
                entry.update(change)
        catalog.write_text(json.dumps(doc))

    task = asyncio.get_running_loop().create_task(swap())
    _swaps.add(task)  # a task nothing refers to may be collected before it runs
    task.add_done_callback(_swaps.discard)


_swaps: set[asyncio.Task[None]] = set()


async def oom_bump(stack: Stack) -> Handle:
    """The scanner's pod is OOMKilled; the retry asks for twice the memory and succeeds."""
    from scanward.job_spec import job_name
    from tests.k8s_fixture import kwok_complete

    kube = _needs(stack.kube)
    handle = await _start(stack, kube, scan_request(stack.repo, "k-oom"))
    # Armed once the scan exists (its id names the Jobs): the first Job runs a while.
    _swap_when_created(stack, job_name(handle.id, "k-oom", 1), "k-oom", kwok_complete("1s"))
    await _ends(handle, ScanStatus.COMPLETED)
    run = await _run_of(stack, handle, "k-oom")
    if run.attempts != 2 or run.resources is None or run.resources.memory_mib != 256:
        raise AssertionError(f"expected a second attempt with 256 MiB: {run}")
    return handle


async def evicted(stack: Stack) -> Handle:
    """The scanner's pod is evicted (node pressure): retried without counting, succeeds."""
    from scanward.job_spec import job_name
    from tests.k8s_fixture import kwok_complete

    kube, evict = _needs(stack.kube), _needs(stack.evict)
    tuning = FAST.model_copy(update={"scanner_attempts": 1})  # an eviction must not count
    handle = await _start(stack, kube, scan_request(stack.repo, "k-wait", tuning=tuning))
    first = job_name(handle.id, "k-wait", 1)
    _swap_when_created(stack, first, "k-wait", kwok_complete("1s"))
    await eventually(lambda: asyncio.to_thread(_tried, evict, first), timeout=60,
                     what=f"the pod of {first} to be evicted")
    await _ends(handle, ScanStatus.COMPLETED)
    run = await _run_of(stack, handle, "k-wait")
    if run.attempts != 2:
        raise AssertionError(f"expected the evicted attempt to be retried once: {run}")
    return handle


def _tried(evict: Callable[[str], None], job: str) -> bool:
    try:
        evict(job)
    except LookupError:  # no running pod yet
        return False
    return True


def _needs(value: T | None) -> T:
    """A part of the stack only the kubernetes scenarios have."""
    if value is None:
        raise RuntimeError("this scenario needs the kubernetes stack (test control plane)")
    return value


async def _true(value: bool) -> bool:
    return value


LOCAL: dict[str, Scenario] = {
    "completed_single": completed_single,
    "completed_multi": completed_multi,
    "dead_retry_signal": dead_retry_signal,
    "dead_retry_update": dead_retry_update,
    "dead_abandon": dead_abandon,
    "cancel_running": cancel_running,
    "cancel_during_clone": cancel_during_clone,
    "clone_failure": clone_failure,
    "webhook_down": webhook_down,
    "bad_input": bad_input,
    "request_refused": request_refused,
    "deadline_abandoned": deadline_abandoned,
}
KUBERNETES: dict[str, Scenario] = {
    "oom_bump": oom_bump,
    "evicted": evicted,
}
SCENARIOS: dict[str, Scenario] = {**LOCAL, **KUBERNETES}

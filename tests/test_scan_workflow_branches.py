"""Fast stub-activity tests, one per ScanWorkflow branch, beside the end-to-end ones.

The real ScanWorkflow (and ResolveRef, which ``scanward.client.start_scan`` runs first)
on the session's real Temporal dev server, with a worker of this test whose activities
are stubs registered under the real activity names: no git, no scanner process, no
store. Each stub returns the contract type the real activity returns, or raises the
``ApplicationError`` the real activity raises for that failure class, and records how it
was called (input, Temporal attempt, task queue) so that a test can assert the order and
the arguments. stop_scanner is served, as by ``worker.build_worker``, on both the scan's
task queue and its control queue (``scanward.settings.control_queue_for``), so a test can
tell which one the workflow sent it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from scanward import client as api
from scanward.contract import (
    AbandonSignal,
    Checkout,
    CloneInput,
    CloneResult,
    FailureClass,
    FinalizeInput,
    NotifyInput,
    NotifyTarget,
    PersistInput,
    PersistResult,
    ResolvedRef,
    ResolveInput,
    Resources,
    RetrySignal,
    RetryTuning,
    ScanLifecycle,
    ScannerJobInput,
    ScannerJobResult,
    ScannerPlan,
    ScannerRun,
    ScannerStatus,
    ScanRequest,
    ScanStatus,
    ScanSummary,
    Severity,
    tuning_problems,
)
from scanward.inputs import InputError
from scanward.policy import backoff
from scanward.settings import control_queue_for
from scanward.webhook import WebhookFailed
from tests.conftest import FAST, eventually
from tests.helpers.processes import scanward
from tests.helpers.workflows import (
    current_details,
    ends_failed,
    scan_status_attribute,
    temporal_cli,
)
from workflows.resolve import ResolveRefWorkflow
from workflows.scan import ScanWorkflow

T = TypeVar("T")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPOSITORY = "https://git.example.com/acme/app.git"
PLAN_MEMORY_MIB = 512
PLAN_CPU_MILLIS = 500
MAX_MEMORY_MIB = 4096
HOOK = NotifyTarget(url="https://hooks.example.com/scans", secret_ref="hook")
SPARE_HOOK = NotifyTarget(url="https://spare.example.com/scans", secret_ref="hook")
FINDINGS = {Severity.HIGH: 2, Severity.LOW: 1}
LIFECYCLE = ScanLifecycle(new=2, existing=1, by_severity={Severity.HIGH: 1, Severity.LOW: 1})


@dataclass(frozen=True)
class Call:
    """One stub activity call as the worker received it."""

    activity: str
    arg: Any
    attempt: int  # Temporal's attempt of this activity (its own retries)
    task_queue: str


def scanner_failure(failure: FailureClass, job: ScannerJobInput) -> ApplicationError:
    """What ``ScannerActivities.run_scanner`` raises for a classified failure
    (activities/scanner_jobs.py: type = the FailureClass value, non-retryable)."""
    return ApplicationError(f"{job.scanner} attempt {job.attempt}: {failure.value}",
                            type=failure.value, non_retryable=True)


class Stubs:
    """Stub activities under the real names; ``calls`` records every call in order.

    ``scanner_failures[name]`` are the failures of that scanner's successive run_scanner
    calls; once they are used up the scanner succeeds; ``persist_failures`` likewise for
    persist_results. ``plan_memory`` is the memory clone_repository plans for each scanner
    (cap: ``MAX_MEMORY_MIB``). ``clone_error`` fails every clone
    attempt; ``down`` are webhook URLs that always fail (retryably); ``hang`` makes
    run_scanner heartbeat until it is cancelled."""

    def __init__(self, *, scanner_failures: Mapping[str, Sequence[FailureClass]] | None = None,
                 persist_failures: Mapping[str, Sequence[FailureClass]] | None = None,
                 plan_memory: int = PLAN_MEMORY_MIB,
                 clone_error: Callable[[], ApplicationError] | None = None,
                 down: frozenset[str] = frozenset(), hang: bool = False,
                 store_down: int = 0, stop_fails: bool = False) -> None:
        self.calls: list[Call] = []
        self.scanner_failures = {k: list(v) for k, v in (scanner_failures or {}).items()}
        self.persist_failures = {k: list(v) for k, v in (persist_failures or {}).items()}
        self.plan_memory = plan_memory
        self.clone_error = clone_error
        self.down = down
        self.hang = hang
        self.scanner_running = asyncio.Event()
        self.scanner_cancelled = asyncio.Event()
        self.persisted = 0  # persist_results calls that stored findings
        self.store_down = store_down  # persist_results calls the store is down for
        self.stop_fails = stop_fails  # stop_scanner fails as the API's refusal would

    def _record(self, name: str, arg: Any) -> None:
        info = activity.info()
        self.calls.append(Call(name, arg, info.attempt, info.task_queue))

    def names(self) -> list[str]:
        return [c.activity for c in self.calls]

    def of(self, name: str, kind: type[T]) -> list[T]:
        """The inputs of every call of activity ``name``, in order."""
        args = [c.arg for c in self.calls if c.activity == name]
        assert all(isinstance(a, kind) for a in args), args
        return args

    @activity.defn(name="resolve_ref")
    async def resolve_ref(self, req: ResolveInput) -> ResolvedRef:
        self._record("resolve_ref", req)
        return ResolvedRef(ref=f"refs/heads/{req.ref}", commit=COMMIT)

    @activity.defn(name="clone_repository")
    async def clone_repository(self, req: CloneInput) -> CloneResult:
        self._record("clone_repository", req)
        if self.clone_error is not None:
            raise self.clone_error()
        checkout = Checkout(scan_id=req.scan_id, source_subpath=f"{req.scan_id}/src",
                            commit=req.commit or COMMIT, size_bytes=4096, file_count=12)
        plan = tuple(ScannerPlan(scanner=name,
                                 resources=Resources(cpu_millis=PLAN_CPU_MILLIS,
                                                     memory_mib=self.plan_memory),
                                 max_memory_mib=MAX_MEMORY_MIB) for name in req.scanners)
        return CloneResult(checkout=checkout, plan=plan)

    @activity.defn(name="run_scanner")
    async def run_scanner(self, job: ScannerJobInput) -> ScannerJobResult:
        self._record("run_scanner", job)
        failures = self.scanner_failures.get(job.scanner, [])
        if failures:
            raise scanner_failure(failures.pop(0), job)
        if self.hang:
            self.scanner_running.set()
            try:
                while True:  # like the real one: heartbeating while the job runs
                    activity.heartbeat("running")
                    await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                self.scanner_cancelled.set()
                raise
        return ScannerJobResult(scanner=job.scanner, attempt=job.attempt,
                                sarif_subpath=f"{job.scan_id}/{job.scanner}/{job.attempt}.sarif",
                                exit_code=1, duration_seconds=0.01)

    @activity.defn(name="stop_scanner")
    async def stop_scanner(self, job: ScannerJobInput) -> str:
        self._record("stop_scanner", job)
        if self.stop_fails:  # what the kubernetes backend raises for a 403 on delete
            raise ApplicationError("forbidden to delete jobs in namespace 'scans'",
                                   type="cluster_error", non_retryable=True)
        return "deleted"

    @activity.defn(name="persist_results")
    async def persist_results(self, req: PersistInput) -> PersistResult:
        self._record("persist_results", req)
        if self.store_down:  # what the real one raises while the database is down
            self.store_down -= 1
            raise ApplicationError("recording scanner result failed: connection refused",
                                   type="StoreError")
        failures = self.persist_failures.get(req.scanner, [])
        if failures:  # what ResultActivities.persist_results raises for unreadable SARIF
            failure = failures.pop(0)
            raise ApplicationError(f"{req.sarif_subpath}: {failure.value}",
                                   type=failure.value, non_retryable=True)
        self.persisted += 1
        return PersistResult(scanner=req.scanner, finding_count=sum(FINDINGS.values()),
                             by_severity=FINDINGS)

    @activity.defn(name="finalize_scan")
    async def finalize_scan(self, req: FinalizeInput) -> ScanLifecycle | None:
        self._record("finalize_scan", req)
        # The real store returns None for a failed or cancelled scan, and a lifecycle of
        # what was stored: nothing when no scanner's results were persisted.
        if req.summary.status not in (ScanStatus.COMPLETED, ScanStatus.PARTIAL):
            return None
        return LIFECYCLE if self.persisted else ScanLifecycle()

    @activity.defn(name="notify_webhook")
    async def notify_webhook(self, req: NotifyInput) -> int:
        self._record("notify_webhook", req)
        if req.target.url in self.down:
            # What deliver() raises for a 5xx; the SDK sends it as type "WebhookFailed".
            raise WebhookFailed(f"POST {req.target.url}: 503", url=req.target.url, status=503)
        return 204

    @activity.defn(name="cleanup_workspace")
    async def cleanup_workspace(self, scan_id: str) -> None:
        self._record("cleanup_workspace", scan_id)


@contextlib.asynccontextmanager
async def stub_worker(client: Client, stubs: Stubs) -> AsyncIterator[str]:
    """The real workflows with ``stubs`` on a task queue of this test (and its control
    queue), laid out as ``worker.build_worker`` does; yields the task queue."""
    queue = f"stub-{uuid.uuid4().hex[:12]}"
    scans = Worker(
        client, task_queue=queue, workflows=[ScanWorkflow, ResolveRefWorkflow],
        activities=[stubs.resolve_ref, stubs.clone_repository, stubs.cleanup_workspace,
                    stubs.run_scanner, stubs.stop_scanner, stubs.persist_results,
                    stubs.finalize_scan, stubs.notify_webhook],
        disable_eager_activity_execution=True,
    )
    control = Worker(client, task_queue=control_queue_for(queue),
                     activities=[stubs.stop_scanner])
    async with scans, control:
        yield queue


def request(*scanners: str, **fields: Any) -> ScanRequest:
    # FAST: 2 scanner attempts, 3 I/O attempts, 200 ms backoff (the dev server fires
    # such short timers and activity retries about 1 s apart: each retry costs ~1 s).
    fields.setdefault("tuning", FAST)
    fields.setdefault("dedupe_key", uuid.uuid4().hex)
    return ScanRequest(repository=REPOSITORY, ref="main", scanners=scanners, **fields)


@contextlib.contextmanager
def quick(limit: float = 5.0) -> Iterator[None]:
    """The block (worker start and drain included) ends within ``limit`` seconds."""
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    assert took < limit, f"took {took:.1f}s"


def run_of(summary: ScanSummary, scanner: str) -> ScannerRun:
    return {r.scanner: r for r in summary.scanners}[scanner]


async def until_dead(client: Client, scan_id: str, scanner: str) -> api.ScanState:
    """The scan's state once ``scanner`` is dead and that is visible in its search
    attributes (ScanStatus, ScanDeadScanners)."""
    async def dead() -> api.ScanState | None:
        state = await api.describe(client, scan_id)
        return state if scanner in state.dead_scanners else None

    state: api.ScanState = await eventually(dead, timeout=10, what=f"{scanner} dead")
    return state


# ---------------------------------------------------------------------------- branches


async def test_completed_runs_each_activity_once_in_order(client: Client) -> None:
    stubs = Stubs()
    with quick():
        async with stub_worker(client, stubs) as queue:
            handle = await api.start_scan(client, request("alpha", notify=(HOOK,)),
                                          task_queue=queue)
            summary = await handle.result()
            assert await scan_status_attribute(client, handle.id) == "completed"
            live = await api.progress(client, handle.id)

    assert stubs.names() == ["resolve_ref", "clone_repository", "run_scanner",
                             "persist_results", "finalize_scan", "notify_webhook",
                             "cleanup_workspace"]
    assert all(c.attempt == 1 and c.task_queue == queue for c in stubs.calls), stubs.calls
    (clone,) = stubs.of("clone_repository", CloneInput)
    assert clone.commit == COMMIT and clone.scan_id == handle.id  # resolved first
    (job,) = stubs.of("run_scanner", ScannerJobInput)
    assert (job.attempt, job.resources.memory_mib) == (1, PLAN_MEMORY_MIB)
    (persist,) = stubs.of("persist_results", PersistInput)
    assert persist.sarif_subpath == f"{handle.id}/alpha/1.sarif" and persist.commit == COMMIT
    (final,) = stubs.of("finalize_scan", FinalizeInput)
    assert final.summary.status is ScanStatus.COMPLETED and final.summary.finding_count == 3
    (note,) = stubs.of("notify_webhook", NotifyInput)
    # The webhook carries the lifecycle finalize_scan returned, and its open-finding counts.
    assert note.summary.lifecycle == LIFECYCLE and note.summary.by_severity == LIFECYCLE.by_severity
    assert stubs.of("cleanup_workspace", str) == [handle.id]
    assert summary.status is ScanStatus.COMPLETED and summary.commit == COMMIT
    # The result is the webhook's body (ScanSummary's contract): the lifecycle, and the
    # counts of open findings only (2 of the scanner's 3, by LIFECYCLE).
    assert summary == note.summary and summary.finding_count == 2
    assert live == summary
    alpha = run_of(summary, "alpha")
    assert (alpha.status, alpha.attempts, alpha.finding_count) == (ScannerStatus.SUCCEEDED, 1, 3)


async def test_oom_killed_is_retried_with_double_the_memory(client: Client) -> None:
    stubs = Stubs(scanner_failures={"alpha": [FailureClass.OOM_KILLED]})
    with quick():
        async with stub_worker(client, stubs) as queue:
            summary = await (await api.start_scan(client, request("alpha"),
                                                  task_queue=queue)).result()

    first, second = stubs.of("run_scanner", ScannerJobInput)
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.resources == Resources(cpu_millis=PLAN_CPU_MILLIS, memory_mib=PLAN_MEMORY_MIB)
    assert second.resources == Resources(cpu_millis=PLAN_CPU_MILLIS,
                                         memory_mib=2 * PLAN_MEMORY_MIB)
    assert len(stubs.of("persist_results", PersistInput)) == 1
    alpha = run_of(summary, "alpha")
    assert summary.status is ScanStatus.COMPLETED
    assert alpha.attempts == 2 and alpha.resources == second.resources
    assert alpha.failure_class is None and alpha.reason is None  # cleared on success


async def test_oom_killed_at_the_memory_cap_is_dead(client: Client) -> None:
    # Three attempts allowed: the scanner is dead because doubling stopped at the cap,
    # not because its attempts ran out.
    tuning = FAST.model_copy(update={"scanner_attempts": 3})
    stubs = Stubs(plan_memory=MAX_MEMORY_MIB // 2,
                  scanner_failures={"alpha": [FailureClass.OOM_KILLED] * 2})
    with quick():
        async with stub_worker(client, stubs) as queue:
            handle = await api.start_scan(client, request("alpha", tuning=tuning),
                                          task_queue=queue)
            await until_dead(client, handle.id, "alpha")
            live = run_of(await api.progress(client, handle.id), "alpha")
            assert await api.abandon(client, handle.id) == ["alpha"]
            await handle.result()

    jobs = stubs.of("run_scanner", ScannerJobInput)
    assert [j.resources.memory_mib for j in jobs] == [MAX_MEMORY_MIB // 2, MAX_MEMORY_MIB]
    assert live.failure_class is FailureClass.OOM_KILLED
    assert (live.reason or "").startswith(f"oom_killed at the memory cap ({MAX_MEMORY_MIB} MiB)")


async def test_evicted_is_retried_with_the_same_resources_and_not_counted(
        client: Client) -> None:
    # Two evictions with FAST.scanner_attempts == 2: evictions do not count, so a third
    # attempt still runs (a counted failure class would be dead after the second).
    stubs = Stubs(scanner_failures={"alpha": [FailureClass.EVICTED, FailureClass.EVICTED]})
    with quick():
        async with stub_worker(client, stubs) as queue:
            summary = await (await api.start_scan(client, request("alpha"),
                                                  task_queue=queue)).result()

    jobs = stubs.of("run_scanner", ScannerJobInput)
    assert [j.attempt for j in jobs] == [1, 2, 3]
    assert {j.resources.memory_mib for j in jobs} == {PLAN_MEMORY_MIB}
    assert summary.status is ScanStatus.COMPLETED and run_of(summary, "alpha").attempts == 3


@pytest.mark.parametrize("failure, where", [
    (FailureClass.BAD_IMAGE, "run_scanner"),
    (FailureClass.BAD_INPUT, "run_scanner"),
    (FailureClass.BROKEN_SARIF, "persist_results"),  # the scanner ran; its output is bad
])
async def test_terminal_failure_is_dead_at_once_without_retry(
        client: Client, failure: FailureClass, where: str) -> None:
    failing = {"alpha": [failure]}
    stubs = (Stubs(scanner_failures=failing) if where == "run_scanner"
             else Stubs(persist_failures=failing))
    with quick():
        async with stub_worker(client, stubs) as queue:
            handle = await api.start_scan(client, request("alpha"), task_queue=queue)
            state = await until_dead(client, handle.id, "alpha")
            assert state.scan_status is ScanStatus.DEAD and state.running
            live = run_of(await api.progress(client, handle.id), "alpha")
            assert (live.status, live.failure_class, live.attempts) == (
                ScannerStatus.DEAD, failure, 1)
            assert (live.reason or "").startswith(f"{failure.value}: "), live.reason
            # Dead: nothing else runs, nothing is finalized, until an operator decides.
            assert stubs.names() == ["resolve_ref", "clone_repository", "run_scanner",
                                     *(["persist_results"] if where == "persist_results" else [])]
            assert all(c.attempt == 1 for c in stubs.calls)  # no Temporal retry either
            assert await api.abandon(client, handle.id) == ["alpha"]
            summary = await handle.result()
    assert summary.status is ScanStatus.PARTIAL and summary.finding_count == 0
    assert len(stubs.of("run_scanner", ScannerJobInput)) == 1


@pytest.mark.parametrize("via", ["update", "signal"])
async def test_retries_exhausted_is_dead_then_operator_retry_completes(
        client: Client, via: str) -> None:
    """``update``: ``scanward retry`` (validated, answers with the scanners retried);
    ``signal``: its batch form (``retry --all-dead``, ``temporal workflow signal``)."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    stubs = Stubs(scanner_failures={"alpha": [FailureClass.CRASHED, FailureClass.CRASHED]})
    with quick():
        async with stub_worker(client, stubs) as queue:
            handle = await api.start_scan(client, request("alpha", tenant=tenant),
                                          task_queue=queue)
            state = await until_dead(client, handle.id, "alpha")
            assert state.scan_status is ScanStatus.DEAD and state.dead_scanners == ("alpha",)

            async def listed_dead() -> bool:  # what `scanward list --status dead` shows
                found = [s async for s in api.list_scans(client, ScanStatus.DEAD, tenant)]
                return [(i, st) for i, st, _ in found] == [(handle.id, ScanStatus.DEAD)]

            await eventually(listed_dead, timeout=10, what="the scan listed dead")
            live = run_of(await api.progress(client, handle.id), "alpha")
            assert (live.reason or "").startswith("crashed after 2 attempt(s)"), live.reason
            assert len(stubs.of("run_scanner", ScannerJobInput)) == 2

            more = RetrySignal(memory_mib=2048)
            if via == "update":
                assert await api.retry(client, handle.id, more) == ["alpha"]
            else:
                await handle.signal("retry", more)
            summary = await handle.result()
            after = await api.describe(client, handle.id)

    jobs = stubs.of("run_scanner", ScannerJobInput)
    assert [(j.attempt, j.resources.memory_mib) for j in jobs] == [
        (1, PLAN_MEMORY_MIB), (2, PLAN_MEMORY_MIB), (3, 2048)]
    assert summary.status is ScanStatus.COMPLETED and run_of(summary, "alpha").attempts == 3
    assert (after.scan_status, after.dead_scanners) == (ScanStatus.COMPLETED, ())


async def test_dead_then_operator_abandon_ends_partial(client: Client) -> None:
    stubs = Stubs(scanner_failures={"beta": [FailureClass.CRASHED, FailureClass.CRASHED]})
    with quick():
        async with stub_worker(client, stubs) as queue:
            handle = await api.start_scan(client, request("alpha", "beta", notify=(HOOK,)),
                                          task_queue=queue)
            await until_dead(client, handle.id, "beta")
            await eventually(lambda: _succeeded(client, handle.id, "alpha"), timeout=10,
                             what="alpha to succeed")
            # From Temporal's CLI or the Web UI (not our client, which refuses it too): a
            # blank reason would be all the scan says of why.
            with pytest.raises(WorkflowUpdateFailedError) as blank:
                await handle.execute_update("abandon", {"scanner": "beta", "reason": "  "})
            assert "an abandon needs a reason" in str(blank.value.cause)
            abandoned = await api.abandon(client, handle.id,
                                          AbandonSignal(scanner="beta", reason="tool broken"))
            assert abandoned == ["beta"]
            summary = await handle.result()
            assert await scan_status_attribute(client, handle.id) == "partial"

    assert summary.status is ScanStatus.PARTIAL
    beta = run_of(summary, "beta")
    assert beta.status is ScannerStatus.ABANDONED
    assert (beta.reason or "").startswith("tool broken (was: crashed after 2 attempt(s)"), (
        beta.reason)
    assert run_of(summary, "alpha").status is ScannerStatus.SUCCEEDED
    assert [j.scanner for j in stubs.of("run_scanner", ScannerJobInput)].count("beta") == 2
    (final,) = stubs.of("finalize_scan", FinalizeInput)
    assert final.summary.status is ScanStatus.PARTIAL
    assert final.summary.finding_count == 3  # alpha's only
    assert summary.lifecycle == LIFECYCLE  # a partial scan has one too
    assert [n.summary.status for n in stubs.of("notify_webhook", NotifyInput)] == [
        ScanStatus.PARTIAL]
    assert stubs.names()[-1] == "cleanup_workspace"


async def _succeeded(client: Client, scan_id: str, scanner: str) -> bool:
    run = run_of(await api.progress(client, scan_id), scanner)
    return run.status is ScannerStatus.SUCCEEDED


@pytest.mark.parametrize("kind, retryable, clones", [
    ("RepositoryNotFound", False, 1),  # permanent (git_errors.PERMANENT_KINDS): once
    ("GitError", True, FAST.io_attempts),  # transient: Temporal retries it, then gives up
])
async def test_clone_failure_fails_the_scan_but_still_cleans_up(
        client: Client, kind: str, retryable: bool, clones: int) -> None:
    git_says = f"git fetch: repository '{REPOSITORY}' not found"

    def clone_error() -> ApplicationError:  # as activities/workspace.py _git_failure
        return ApplicationError(git_says, type=kind, non_retryable=not retryable)

    # A type that is no FailureClass is kept in the reason (workflows/scan.py _failure_of).
    reason = f"clone failed: {kind}: {git_says}"

    stubs = Stubs(clone_error=clone_error)
    with quick():
        async with stub_worker(client, stubs) as queue:
            handle = await api.start_scan(client, request("alpha", notify=(HOOK,)),
                                          task_queue=queue)
            with pytest.raises(WorkflowFailureError) as failed:
                await handle.result()
            assert await scan_status_attribute(client, handle.id) == "failed"
            live = await api.progress(client, handle.id)

    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "CloneFailed"
    assert cause.message == reason and cause.non_retryable
    assert [c.attempt for c in stubs.calls if c.activity == "clone_repository"] == list(
        range(1, clones + 1))
    assert "run_scanner" not in stubs.names() and "persist_results" not in stubs.names()
    assert stubs.names()[-3:] == ["finalize_scan", "notify_webhook", "cleanup_workspace"]
    (final,) = stubs.of("finalize_scan", FinalizeInput)
    assert final.summary.status is ScanStatus.FAILED
    assert final.summary.reason == reason
    # Its scanners never ran and never will: not left "pending".
    alpha = run_of(live, "alpha")
    assert live.status is ScanStatus.FAILED and alpha.attempts == 0
    assert (alpha.status, alpha.reason) == (ScannerStatus.CANCELLED, "not run: the clone failed")
    assert final.summary.scanners == live.scanners


async def test_webhook_down_does_not_fail_the_scan(client: Client) -> None:
    stubs = Stubs(down=frozenset({HOOK.url}))
    with quick():
        async with stub_worker(client, stubs) as queue:
            handle = await api.start_scan(
                client, request("alpha", notify=(HOOK, SPARE_HOOK)), task_queue=queue)
            summary = await handle.result()
            details = await current_details(handle)  # the Web UI's scan page

    assert summary.status is ScanStatus.COMPLETED
    notes = [(c.arg.target.url, c.attempt) for c in stubs.calls
             if c.activity == "notify_webhook"]
    # The down receiver gets every I/O attempt, the next target is still notified.
    assert notes == [*((HOOK.url, n) for n in range(1, FAST.io_attempts + 1)),
                     (SPARE_HOOK.url, 1)]
    assert stubs.names()[-1] == "cleanup_workspace"
    assert stubs.names().count("cleanup_workspace") == 1
    # Not failed, and not silent: the result names the receiver given up on, and why.
    (undelivered,) = summary.undelivered_webhooks
    assert undelivered.startswith(f"{HOOK.url}: ") and "503" in undelivered
    assert f"Webhooks not delivered: {HOOK.url}: " in details
    # Each delivery carries the run it belongs to (part of its Idempotency-Key).
    run_id = (await handle.describe()).run_id
    assert {c.arg.run_id for c in stubs.calls if c.activity == "notify_webhook"} == {run_id}


async def test_cancel_while_scanning_stops_the_scanner_on_the_control_queue(
        client: Client) -> None:
    stubs = Stubs(hang=True)
    with quick():
        async with stub_worker(client, stubs) as queue:
            handle = await api.start_scan(client, request("alpha", notify=(HOOK,)),
                                          task_queue=queue)
            await asyncio.wait_for(stubs.scanner_running.wait(), 10)
            await api.cancel(client, handle.id)
            with pytest.raises(WorkflowFailureError) as failed:
                await handle.result()
            await asyncio.wait_for(stubs.scanner_cancelled.wait(), 10)
            assert await scan_status_attribute(client, handle.id) == "cancelled"
            live = await api.progress(client, handle.id)

    assert isinstance(failed.value.cause, CancelledError)
    (job,) = stubs.of("run_scanner", ScannerJobInput)
    (stop,) = [c for c in stubs.calls if c.activity == "stop_scanner"]
    assert stop.arg == job  # the attempt in flight, identified as run_scanner had it
    assert stop.task_queue == control_queue_for(queue)
    names = stubs.names()
    assert names.index("stop_scanner") < names.index("finalize_scan")
    assert "persist_results" not in names and names[-1] == "cleanup_workspace"
    (final,) = stubs.of("finalize_scan", FinalizeInput)
    assert final.summary.status is ScanStatus.CANCELLED
    assert live.status is ScanStatus.CANCELLED and live.reason == "cancelled"
    assert run_of(live, "alpha").status is ScannerStatus.CANCELLED


# Start input from Temporal's CLI (or another SDK) that the workflow cannot run fails the
# scan at once, visibly. From "no-input" on, the SDK handed each to the workflow without
# failing first, and each failed the first workflow task again and again (the scan hung
# "running", uncounted).
@pytest.mark.parametrize(("cli_args", "problem"), [
    (["--input", '{"repository": "' + REPOSITORY + '", "scanners": ["Alpha!"]}'],
     "scanners: scanner name 'Alpha!' is malformed"),
    ([], "repository: Field required"),  # no --input at all
    (["--input", '"{}"', "--input-meta", "encoding=binary/plain"],
     "encoding binary/plain gave bytes, not a JSON object"),
    (["--input", '{"repository": "' + REPOSITORY + '", "scanners": ["alpha"], '
      '"tuning": {"initial_interval": -1}}'], "tuning.initial_interval: -1 day"),
    (["--input", '{"repository": "' + REPOSITORY + '", "scanners": ["alpha"], '
      '"tuning": {"initial_interval": 60, "maximum_interval": 1}}'],
     "tuning.maximum_interval: 0:00:01 is below initial_interval 0:01:00"),
    (["--input", '{"repository": "' + REPOSITORY + '", "scanners": ["alpha"], '
      '"tuning": {"clone_timeout": 0}}'], "tuning.clone_timeout: 0:00:00 is not in"),
    (["--input", '{"repository": "' + REPOSITORY + '", "scanners": ["alpha"], '
      '"tuning": {"backoff_coefficient": 1e300}}'], "tuning.backoff_coefficient: 1e+300"),
    # Accepted by the models, then the clone failed late: "couldn't find remote ref".
    (["--input", '{"repository": "' + REPOSITORY + '", "scanners": ["alpha"], '
      '"commit": "0123abc"}'], "commit: '0123abc' is abbreviated"),
    (["--input", '{"repository": "' + REPOSITORY + '", "scanners": ["alpha"], "notify": '
      '[{"url": "https://u:pw@hooks.example.com/x", "secret_ref": "hook"}]}'],
     "notify.0.url: credentials in a webhook URL"),
], ids=["malformed-scanner", "no-input", "binary-plain", "negative-interval", "max-below-initial",
        "zero-timeout", "huge-backoff", "short-commit", "webhook-credentials"])
async def test_invalid_start_input_from_temporal_cli_fails_at_once(
        temporal_env: WorkflowEnvironment, client: Client, cli_args: list[str],
        problem: str) -> None:
    stubs = Stubs()
    scan_id = f"scan-bad-{uuid.uuid4().hex[:12]}"
    with quick():
        async with stub_worker(client, stubs) as queue:
            started = temporal_cli(
                temporal_env, "workflow", "start", "--type", "ScanWorkflow",
                "--task-queue", queue, "--workflow-id", scan_id, *cli_args)
            assert started.returncode == 0, started.stderr
            message = await ends_failed(client, scan_id)
            assert await scan_status_attribute(client, scan_id) == "failed"
            live = await api.progress(client, scan_id)
    # Said once: the workflow does not prefix decode's message again.
    assert message.startswith("InvalidRequest: invalid scan request: "), message
    assert problem in message and message.count("invalid scan request") == 1, message
    assert live.status is ScanStatus.FAILED and message.endswith(live.reason or "-")
    assert stubs.calls == []  # no activity at all: not even finalize_scan or cleanup


async def test_tuning_problems_name_each_field_and_the_client_refuses_them(
        client: Client) -> None:
    bad = FAST.model_copy(update={"initial_interval": timedelta(seconds=-1),
                                  "heartbeat_timeout": timedelta(0)})
    assert [p.split(":")[0] for p in tuning_problems(bad)] == [
        "tuning.initial_interval", "tuning.heartbeat_timeout"]
    assert tuning_problems(FAST) == [] and tuning_problems(RetryTuning()) == []
    request = ScanRequest(repository=REPOSITORY, commit=COMMIT, scanners=("alpha",),
                          tuning=bad, dedupe_key=uuid.uuid4().hex)
    with pytest.raises(InputError, match=r"tuning\.initial_interval"):
        await api.start_scan(client, request, task_queue=f"nobody-{uuid.uuid4().hex[:8]}")
    with pytest.raises(RPCError):  # nothing was started
        await client.get_workflow_handle(request.scan_id()).describe()


def test_backoff_saturates_instead_of_overflowing() -> None:
    tuning = RetryTuning(backoff_coefficient=1e300)
    assert backoff(tuning, 1) == tuning.initial_interval
    assert backoff(tuning, 3) == tuning.maximum_interval  # 1e600: past a float
    assert backoff(RetryTuning(backoff_coefficient=10), 20) == RetryTuning().maximum_interval


async def test_store_down_holds_the_scan_at_persist_without_rerunning_the_scanner(
        client: Client) -> None:
    """A store outage longer than the I/O retries used to fail persist_results, which
    the workflow took for a crashed scanner: the scanner ran again, then went dead as
    "crashed". Persist is retried until the store answers; the scanner runs once."""
    stubs = Stubs(store_down=FAST.io_attempts + 2)
    with quick(15):
        async with stub_worker(client, stubs) as queue:
            handle = await api.start_scan(client, request("alpha"), task_queue=queue)
            summary = await handle.result()
    assert summary.status is ScanStatus.COMPLETED
    alpha = run_of(summary, "alpha")
    assert (alpha.status, alpha.attempts, alpha.failure_class) == (
        ScannerStatus.SUCCEEDED, 1, None)
    assert len(stubs.of("run_scanner", ScannerJobInput)) == 1
    persists = [c.attempt for c in stubs.calls if c.activity == "persist_results"]
    assert persists == list(range(1, FAST.io_attempts + 4))


async def test_cancel_that_could_not_stop_a_scanner_says_so(
        temporal_env: WorkflowEnvironment, client: Client) -> None:
    """The scan ends cancelled either way; `scanward cancel` said "cancelled" (exit 0)
    while a Job the API would not delete ran on. It fails now, naming what still runs."""
    stubs = Stubs(hang=True, stop_fails=True)
    async with stub_worker(client, stubs) as queue:
        handle = await api.start_scan(client, request("alpha"), task_queue=queue)
        await asyncio.wait_for(stubs.scanner_running.wait(), 10)
        code, out, err = await scanward(
            "cancel", handle.id,
            env={"TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host})
        live = await api.progress(client, handle.id)
    assert live.status is ScanStatus.CANCELLED
    (not_stopped,) = live.not_stopped
    assert not_stopped.startswith("alpha attempt 1: forbidden to delete jobs"), not_stopped
    assert live.reason == f"cancelled; could not stop {not_stopped}"
    assert code == 1 and out == "", (code, out, err)
    assert err.startswith(f"scanward: error: scan {handle.id} cancelled, but could not stop "
                          "alpha attempt 1: forbidden to delete jobs"), err
    assert err.rstrip().endswith("it may still be running"), err

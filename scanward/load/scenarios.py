"""Scenarios: what one iteration does (its executor), and each scenario's defaults.

Every iteration starts a real scan with :func:`scanward.client.start_scan` of a commit
whose ``.scanward-synthetic.json`` sets the synthetic scanner's behaviour, steers it as
an operator would (retry, then abandon, a dead scanner through the validating Updates;
cancel a running scan), and waits for its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import Priority
from temporalio.exceptions import CancelledError
from temporalio.service import RPCError

from scanward import client as api
from scanward.contract import (
    AbandonSignal,
    NotifyTarget,
    RetryTuning,
    ScannerStatus,
    ScanRequest,
    ScanStatus,
    ScanSummary,
)
from scanward.load.dead_watch import DeadWatch
from scanward.load.report import ScanRecord
from scanward.load.synthetic import Behaviour, LoadRepo
from scanward.settings import task_queue_for

T = TypeVar("T")

# Kinds of iteration, each a behaviour of the synthetic scanner plus what the load tool
# does meanwhile.
OK, CRASH_THEN_OK, DEAD, CANCEL = "ok", "crash_then_ok", "dead", "cancel"
OOM_THEN_OK = "oom_then_ok"  # needs a memory limit: the kubernetes backend (load/kube.py)
KINDS = (OK, CRASH_THEN_OK, DEAD, CANCEL, OOM_THEN_OK)

# Production's shape with shorter waits: a crash is retried after 200 ms, not 10 s, so a
# run measures orchestration rather than backoff timers.
LOAD_TUNING = RetryTuning(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=1),
    scanner_attempts=2,
    io_attempts=10,
    clone_timeout=timedelta(minutes=2),
    scanner_timeout=timedelta(minutes=10),
    notify_timeout=timedelta(seconds=10),
)


DEFAULT_SCAN_TIMEOUT = 600.0  # seconds; --scan-timeout


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    iterations: int  # default when neither --iterations nor --duration is given
    max_concurrent: int


SCENARIOS = {s.name: s for s in (
    Scenario("happy", "every scanner of every scan succeeds", 100, 10),
    Scenario("mixed", "a share crash then succeed, go dead (retried, then abandoned by the "
                      "load tool), or are cancelled while running; the rest succeed", 50, 10),
    Scenario("webhook", "every scan notifies a receiver that is down (503) for a while and "
                        "slow throughout", 30, 10),
    Scenario("tenants", "one tenant queues N scans, then a small tenant queues a few: its "
                        "latency idle, with fairness off (FIFO) and on", 1000, 0),
)}


def behaviours(scan_seconds: float, findings: int, stamps: str | None = None,
               oom_memory_mib: int = 0) -> dict[str, Behaviour]:
    """The synthetic scanner's behaviour for each kind of iteration (``oom_memory_mib``:
    what an oom_then_ok scan holds, above its first memory limit; 0: no such kind)."""
    kinds = {
        OK: Behaviour("ok", scan_seconds, findings, stamps=stamps),
        CRASH_THEN_OK: Behaviour("crash_then_ok", scan_seconds, findings, crash_attempts=1,
                                 stamps=stamps),
        DEAD: Behaviour("crash", scan_seconds, findings, stamps=stamps),
        # Long enough to be running when the load tool cancels it.
        CANCEL: Behaviour("ok", max(scan_seconds, 300.0), findings, stamps=stamps),
    }
    if oom_memory_mib:
        kinds[OOM_THEN_OK] = Behaviour("oom_then_ok", scan_seconds, findings, stamps=stamps,
                                       memory_mib=oom_memory_mib)
    return kinds


def mixed_kinds(crash: float, dead: float, cancel: float, slots: int = 20,
                oom: float = 0.0) -> list[str]:
    """A repeating sequence of kinds with these shares, spread evenly (smooth weighted
    round robin), so that even a short run gets every kind early."""
    if not all(0.0 <= share <= 1.0 for share in (crash, dead, cancel, oom)):  # NaN too
        raise ValueError("shares must be numbers from 0 to 1")
    weights = {CRASH_THEN_OK: round(crash * slots), DEAD: round(dead * slots),
               CANCEL: round(cancel * slots)}
    if oom:
        weights[OOM_THEN_OK] = round(oom * slots)
    if sum(weights.values()) > slots:
        raise ValueError("shares must be non-negative and add up to at most 1")
    weights = {OK: slots - sum(weights.values()), **weights}
    current = dict.fromkeys(weights, 0)
    order = []
    for _ in range(slots):
        for kind, weight in weights.items():
            current[kind] += weight
        pick = max(current, key=lambda k: current[k])
        current[pick] -= slots
        order.append(pick)
    return order


@dataclass
class LoadContext:
    """What every iteration needs."""

    client: Client
    task_queue: str
    run_id: str
    repo: LoadRepo
    scanners: tuple[str, ...] = ("synthetic",)
    tuning: RetryTuning = LOAD_TUNING
    notify: tuple[NotifyTarget, ...] = ()
    cluster: str | None = None
    poll_seconds: float = 0.2
    # A scan's whole life, start to end: one that outlives it fails and is terminated
    # (its worker died and stays away: the load used to wait for it for ever).
    scan_timeout: float = DEFAULT_SCAN_TIMEOUT
    dead_watch: DeadWatch | None = None  # ends the wait for scans dead unexpectedly


@dataclass
class Started:
    """A scan started by an iteration, not yet steered or ended."""

    handle: WorkflowHandle[Any, ScanSummary]
    record: ScanRecord


async def start(ctx: LoadContext, i: int, kind: str, *, tenant: str = "load",
                phase: str = "", priority: Priority | None = None) -> Started:
    """Start a scan of ``kind``'s commit (no ref to resolve: the commit is known)."""
    request = ScanRequest(
        repository=ctx.repo.url, ref=kind, commit=ctx.repo.commits[kind],
        scanners=ctx.scanners, tenant=tenant, notify=ctx.notify, tuning=ctx.tuning,
        cluster=ctx.cluster, dedupe_key=f"{ctx.run_id}-{phase or 'load'}-{i}",
    )
    started = time.monotonic()
    # A start repeated after an outage finds the scan it may have created (the id is
    # the request's, joined with USE_EXISTING), so it is safe to repeat.
    handle = await through_outages(lambda: api.start_scan(
        ctx.client, request, task_queue=ctx.task_queue, priority=priority),
        started + ctx.scan_timeout)
    return Started(handle, ScanRecord(handle.id, kind, tenant, started, started, "failed",
                                      phase))


async def finish(ctx: LoadContext, scan: Started) -> ScanRecord:
    """Steer a started scan as its kind asks and wait for its end. A scan that goes dead
    when its kind does not (``ctx.dead_watch`` sees it) is failed and terminated, like
    one that the load could not steer; so is the scan of a load that is cancelled
    (Ctrl-C): nothing the load started keeps running behind it."""
    handle, record = scan.handle, scan.record
    watch = ctx.dead_watch if record.kind != DEAD else None
    dead = watch.watch(handle.id) if watch is not None else None
    try:
        try:
            async with asyncio.timeout(ctx.scan_timeout - (time.monotonic() - record.started)):
                summary = await _first(_steer_and_wait(ctx, scan), dead)
        except TimeoutError:
            raise ScanTimeout(
                f"not ended {ctx.scan_timeout:g} s after its start (--scan-timeout): do "
                f"the workers of task queue {handle_queue(ctx)} run, and keep up?") from None
        if summary is None:  # went dead, and nobody is going to retry or abandon it
            record.error = await _dead_reason(ctx, record)
            await terminate(handle, record.error)
        else:
            record.outcome = {ScanStatus.COMPLETED: "completed",
                              ScanStatus.PARTIAL: "dead"}.get(summary.status, "failed")
            if record.outcome == "failed":
                record.error = f"ended {summary.status.value}: {summary.reason}"
    except WorkflowFailureError as e:
        cancelled = isinstance(e.cause, CancelledError)
        record.outcome = "cancelled" if cancelled else "failed"
        if not cancelled:
            record.error = str(getattr(e.cause, "message", e.cause))
    except ScanTimeout as e:
        record.error = str(e)
        await terminate(handle, record.error)
    except (TimeoutError, RPCError, api.Rejected, api.ScanNotRunning) as e:
        record.error = f"{type(e).__name__}: {e}"
        # Leave nothing running behind the load: the next run must not inherit it.
        await terminate(handle, record.error)
    except asyncio.CancelledError:
        # The load was interrupted: its scans go with it, on an external deployment too.
        await asyncio.shield(terminate(handle, "load interrupted"))
        raise
    finally:
        if watch is not None:
            watch.forget(handle.id)
    record.ended = time.monotonic()
    return record


OUTAGE_POLL = 1.0  # seconds between tries while Temporal is unreachable


async def through_outages(call: Callable[[], Awaitable[T]],
                          deadline: float | None = None) -> T:
    """``call()``, tried again while Temporal is unreachable (down, restarting: what
    :func:`scanward.client.unavailable` says), until ``deadline`` (monotonic) if given.
    The SDK's own retries last seconds; a server restart under load takes longer, and
    the scans live through it on the server: the load's wait for them must too (an
    outage of 6 s failed, and terminated, 5 of 6 healthy scans)."""
    while True:
        try:
            return await call()
        except RPCError as e:
            if not api.unavailable(e) or (deadline is not None
                                          and time.monotonic() >= deadline):
                raise
        await asyncio.sleep(OUTAGE_POLL)


class ScanTimeout(Exception):
    """A scan did not end within the load's ``scan_timeout`` (one line)."""


def handle_queue(ctx: LoadContext) -> str:
    """The task queue the load's scans go to (``--cluster`` picks one of its own)."""
    return task_queue_for(ctx.cluster, ctx.task_queue)


async def _steer_and_wait(ctx: LoadContext, scan: Started) -> ScanSummary:
    handle, record = scan.handle, scan.record
    if record.kind == DEAD:
        await _retry_then_abandon(ctx, handle.id)
        record.went_dead = True
    elif record.kind == CANCEL:
        await _cancel_when_running(ctx, handle.id)
    summary: ScanSummary = await through_outages(handle.result)
    return summary


async def _first(body: Coroutine[Any, Any, ScanSummary],
                 dead: asyncio.Future[None] | None) -> ScanSummary | None:
    """``body``'s result, or None if ``dead`` resolves first (``body`` is then
    cancelled). ``body``'s exceptions propagate."""
    if dead is None:
        return await body
    task = asyncio.ensure_future(body)
    either: set[asyncio.Future[Any]] = {task, dead}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and dead.cancelled():  # no longer watched: wait for the end
            await asyncio.wait({task})
    finally:
        if not task.done():  # dead first, or we are cancelled
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled() and dead.done() and not dead.cancelled():
        return None
    return task.result()


async def _dead_reason(ctx: LoadContext, record: ScanRecord) -> str:
    """Why an unexpectedly dead scan is dead: its dead scanners' reasons, from one
    progress query (of this scan only)."""
    why = f"went dead ({record.kind} scan: no operator will retry or abandon it)"
    try:
        summary = await _progress(ctx, record.scan_id)
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as e:
        return f"{why}; its progress query failed: {e}"
    if summary is None:
        return why
    reasons = [f"{r.scanner}: {r.reason or r.failure_class or 'dead'}"
               for r in summary.scanners if r.status is ScannerStatus.DEAD]
    return f"{why}: {'; '.join(reasons)}" if reasons else why


async def terminate(handle: WorkflowHandle[Any, ScanSummary], why: str) -> None:
    """Stop a scan the load started (``scanward load: <why>``); one that has ended
    already is left as it is."""
    with contextlib.suppress(RPCError):  # already closed: nothing to stop
        await handle.terminate(reason=f"scanward load: {why}")


async def run_scan(ctx: LoadContext, i: int, kind: str, *, tenant: str = "load",
                   phase: str = "", priority: Priority | None = None) -> ScanRecord:
    """One iteration: start a scan of ``kind``'s commit, steer it, wait for its end."""
    return await finish(ctx, await start(ctx, i, kind, tenant=tenant, phase=phase,
                                         priority=priority))


async def _progress(ctx: LoadContext, scan_id: str) -> ScanSummary | None:
    try:
        return await api.progress(ctx.client, scan_id, timedelta(seconds=10))
    except RPCError:
        return None  # the workflow has not run its first task yet


async def _until(ctx: LoadContext, scan_id: str,
                 check: Callable[[ScanSummary], bool]) -> ScanSummary:
    while True:
        summary = await _progress(ctx, scan_id)
        if summary is not None and check(summary):
            return summary
        await asyncio.sleep(ctx.poll_seconds)


def _dead(summary: ScanSummary, after_attempts: int = 0) -> bool:
    return any(r.status is ScannerStatus.DEAD and r.attempts > after_attempts
               for r in summary.scanners)


async def _retry_then_abandon(ctx: LoadContext, scan_id: str) -> None:
    """What an operator does with a scanner that keeps dying: retry it once (the
    ``retry`` Update), and when it dies again, abandon it (``abandon``)."""
    first = await _until(ctx, scan_id, _dead)
    attempts = max(r.attempts for r in first.scanners if r.status is ScannerStatus.DEAD)
    await api.retry(ctx.client, scan_id)
    await _until(ctx, scan_id, lambda s: _dead(s, attempts))
    await api.abandon(ctx.client, scan_id, AbandonSignal(reason="abandoned by scanward load"))


async def _cancel_when_running(ctx: LoadContext, scan_id: str) -> None:
    await _until(ctx, scan_id, lambda s: any(r.status is ScannerStatus.RUNNING
                                             for r in s.scanners))
    await through_outages(lambda: api.cancel(ctx.client, scan_id))  # cancel is idempotent


Executor = Callable[[int], Awaitable[ScanRecord]]

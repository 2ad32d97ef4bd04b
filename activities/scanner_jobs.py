"""The scanner activity: run one attempt of one scanner through the configured job
backend, heartbeating while it waits, and classify how it failed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.backends import (
    Heartbeat,
    JobBackend,
    ScannerFailed,
    wait_heartbeating,
    worker_leaving,
)
from scanward import metrics
from scanward.catalog import Catalog, ScannerSpec, UnknownScanner
from scanward.contract import FailureClass, ScannerJobInput, ScannerJobResult
from scanward.tenants import JobCaps, requeue_delay

# Classified failures are not retried by Temporal: the workflow's policy decides
# (more memory, a backoff, or dead), with the attempt number in the job's identity.
NON_RETRYABLE = (*(c.value for c in FailureClass), "UnknownScanner")
# A job whose tenant's cap is reached on this worker: retried from the task queue.
AT_CAPACITY = "TenantAtCapacity"
Lend = Callable[[], AbstractAsyncContextManager[None]]


class TenantSlots:
    """At most ``caps.cap(tenant)`` scanner jobs of each tenant at once on this worker
    (``SCANWARD_TENANT_MAX_JOBS``): one asyncio semaphore per capped tenant.

    A job that finds its tenant's cap reached must not wait in its worker slot: fairness
    orders the task queue, not what a worker holds, and a worker whose slots all wait for
    one tenant takes no other tenant's work at all. So it fails this activity attempt
    with a ``TenantAtCapacity`` error and a short ``next_retry_delay``: the task goes back
    to the queue (an activity retry adds no history event), where fairness orders it
    among every tenant's. When its retry policy has no attempt to spare
    (:func:`scanward.tenants.requeue_delay`), it waits here instead, heartbeating, with
    its worker slot lent back (``lend``: :meth:`ActivitySlots.lent`), so the scan is
    never lost and the worker still takes other work meanwhile."""

    def __init__(self, caps: JobCaps, lend: Lend | None = None) -> None:
        self._caps = caps
        self._lend = lend or _keep_slot
        # Only tenants with a job running or waiting here: tenant names come from
        # requests, and a worker must not keep one for every tenant it ever ran.
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str, heartbeat: Heartbeat, every: float, *,
                   attempt: int = 1, maximum_attempts: int = 0) -> AsyncIterator[None]:
        """Hold one of ``tenant``'s slots for the block, and give it back however the job
        ends; raise ``TenantAtCapacity`` (retryable) when there is none free and the
        attempts allow another try later."""
        cap = self._caps.cap(tenant)
        if cap is None:
            yield
            return
        semaphore = self._semaphores.setdefault(tenant, asyncio.Semaphore(cap))
        self._users[tenant] = self._users.get(tenant, 0) + 1
        try:
            if not semaphore.locked():
                await semaphore.acquire()  # free: does not suspend
            else:
                delay = requeue_delay(attempt, maximum_attempts)
                if delay is not None:
                    raise ApplicationError(
                        f"tenant {tenant!r} has its {cap} scanner job(s) running on this "
                        f"worker; back to the task queue for {delay.total_seconds():g}s",
                        type=AT_CAPACITY, next_retry_delay=delay,
                        category=ApplicationErrorCategory.BENIGN)
                async with self._lend():
                    await _acquire(semaphore, heartbeat, every)
            try:
                yield
            finally:
                semaphore.release()
        finally:
            # The last job of the tenant here (running or waiting) forgets it: the next
            # one starts with all its slots free, as this semaphore is then.
            self._users[tenant] -= 1
            if not self._users[tenant]:
                del self._users[tenant]
                del self._semaphores[tenant]


async def _acquire(semaphore: asyncio.Semaphore, heartbeat: Heartbeat, every: float) -> None:
    """Wait for one of ``semaphore``'s slots, heartbeating (the wait can be long)."""
    acquire = asyncio.ensure_future(semaphore.acquire())
    try:
        await wait_heartbeating(acquire, heartbeat, every)
    except BaseException:
        # Cancelled while waiting: a slot granted meanwhile must go back.
        if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
            semaphore.release()
        acquire.cancel()
        raise


@contextlib.asynccontextmanager
async def _keep_slot() -> AsyncIterator[None]:
    yield  # no worker slot to lend (a worker built without ActivitySlots)


class ScannerActivities:
    def __init__(self, backend: JobBackend, catalog: Catalog,
                 pusher: metrics.Pusher | None = None, caps: JobCaps | None = None,
                 lend: Lend | None = None) -> None:
        self._backend = backend
        self._catalog = catalog
        self._pusher = pusher
        self._slots = TenantSlots(caps or JobCaps({}), lend)

    @activity.defn(name="run_scanner")
    async def run_scanner(self, job: ScannerJobInput) -> ScannerJobResult:
        """Run one scanner attempt to its end; raises an ``ApplicationError`` whose type
        is the :class:`FailureClass` when it fails (``TenantAtCapacity``, retryable,
        when its tenant's cap is reached on this worker)."""
        try:
            spec = self._catalog.get(job.scanner)
        except UnknownScanner as e:
            raise ApplicationError(str(e), type="UnknownScanner", non_retryable=True) from e
        info = activity.info()
        # Heartbeat well inside the timeout: the SDK throttles to 0.8 x the timeout anyway.
        timeout = info.heartbeat_timeout
        every = min(10.0, timeout.total_seconds() / 3) if timeout else 10.0
        try:
            async with self._slots.slot(
                    job.tenant, activity.heartbeat, every, attempt=info.attempt,
                    maximum_attempts=info.retry_policy.maximum_attempts
                    if info.retry_policy else 0):
                return await self._run(job, spec, every)
        except asyncio.CancelledError:
            if worker_leaving():
                # Not a cancel of the scan: fail this attempt of the activity so that
                # Temporal retries it on another worker at once (a cancellation the
                # server did not ask for would only time out).
                raise ApplicationError(
                    f"worker shutting down during {job.scanner} attempt {job.attempt}; "
                    "retried on another worker", type="WorkerShutdown") from None
            raise

    async def _run(self, job: ScannerJobInput, spec: ScannerSpec,
                   every: float) -> ScannerJobResult:
        """The job itself, recorded in the attempt metrics (a wait for the tenant's
        slot is not an attempt)."""
        activity.logger.info("scanner %s attempt %d starting on %s backend", job.scanner,
                             job.attempt, self._backend.name)
        started = time.monotonic()
        outcome = "crashed"
        try:
            result = await self._backend.run(job, spec, activity.heartbeat, every)
            outcome = "succeeded"
            return result
        except ScannerFailed as e:
            outcome = e.failure.value
            raise ApplicationError(e.message, type=e.failure.value, non_retryable=True) from e
        except asyncio.CancelledError:
            outcome = "worker_shutdown" if worker_leaving() else "cancelled"
            raise
        finally:
            metrics.record(job.scanner, self._backend.name, outcome,
                           time.monotonic() - started, memory_mib=job.resources.memory_mib,
                           checkout_bytes=job.checkout.size_bytes)
            if self._pusher is not None:
                await asyncio.shield(asyncio.to_thread(self._pusher.push))

    @activity.defn(name="stop_scanner")
    async def stop_scanner(self, job: ScannerJobInput) -> str:
        """Stop one running scanner attempt at once: the scan was cancelled. Idempotent."""
        done = await self._backend.stop(job)
        activity.logger.info("stop %s: %s", job.scan_id, done)
        return done

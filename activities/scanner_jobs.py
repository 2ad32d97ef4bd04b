"""The scanner activity: run one attempt of one scanner through the configured job
backend, heartbeating while it waits, and classify how it failed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.backends import (
    Heartbeat,
    JobBackend,
    ScannerFailed,
    wait_heartbeating,
    worker_leaving,
)
from scanward import metrics
from scanward.catalog import Catalog, UnknownScanner
from scanward.contract import FailureClass, ScannerJobInput, ScannerJobResult
from scanward.tenants import JobCaps

# Classified failures are not retried by Temporal: the workflow's policy decides
# (more memory, a backoff, or dead), with the attempt number in the job's identity.
NON_RETRYABLE = (*(c.value for c in FailureClass), "UnknownScanner")


class TenantSlots:
    """At most ``caps.cap(tenant)`` scanner jobs of each tenant at once on this worker
    (``SCANWARD_TENANT_MAX_JOBS``): one asyncio semaphore per capped tenant. Fairness in
    the task queue decides whose task a worker takes next; the cap keeps one tenant's
    long jobs from filling the worker's machine (or the cluster's namespace) meanwhile."""

    def __init__(self, caps: JobCaps) -> None:
        self._caps = caps
        self._semaphores: dict[str, asyncio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str, heartbeat: Heartbeat,
                   every: float) -> AsyncIterator[None]:
        """Hold one of ``tenant``'s slots; heartbeat while waiting for one (the wait can
        be long), and give it back however the job ends."""
        cap = self._caps.cap(tenant)
        if cap is None:
            yield
            return
        semaphore = self._semaphores.setdefault(tenant, asyncio.Semaphore(cap))
        acquire = asyncio.ensure_future(semaphore.acquire())
        try:
            await wait_heartbeating(acquire, heartbeat, every)
        except BaseException:
            # Cancelled while waiting: a slot granted meanwhile must go back.
            if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
                semaphore.release()
            acquire.cancel()
            raise
        try:
            yield
        finally:
            semaphore.release()


class ScannerActivities:
    def __init__(self, backend: JobBackend, catalog: Catalog,
                 pusher: metrics.Pusher | None = None, caps: JobCaps | None = None) -> None:
        self._backend = backend
        self._catalog = catalog
        self._pusher = pusher
        self._slots = TenantSlots(caps or JobCaps({}))

    @activity.defn(name="run_scanner")
    async def run_scanner(self, job: ScannerJobInput) -> ScannerJobResult:
        """Run one scanner attempt to its end; raises an ``ApplicationError`` whose type
        is the :class:`FailureClass` when it fails."""
        try:
            spec = self._catalog.get(job.scanner)
        except UnknownScanner as e:
            raise ApplicationError(str(e), type="UnknownScanner", non_retryable=True) from e
        activity.logger.info("scanner %s attempt %d starting on %s backend", job.scanner,
                             job.attempt, self._backend.name)
        # Heartbeat well inside the timeout: the SDK throttles to 0.8 x the timeout anyway.
        timeout = activity.info().heartbeat_timeout
        every = min(10.0, timeout.total_seconds() / 3) if timeout else 10.0
        started = time.monotonic()
        outcome = "crashed"
        try:
            async with self._slots.slot(job.tenant, activity.heartbeat, every):
                result = await self._backend.run(job, spec, activity.heartbeat, every)
            outcome = "succeeded"
            return result
        except ScannerFailed as e:
            outcome = e.failure.value
            raise ApplicationError(e.message, type=e.failure.value, non_retryable=True) from e
        except asyncio.CancelledError:
            if worker_leaving():
                # Not a cancel of the scan: fail this attempt of the activity so that
                # Temporal retries it on another worker at once (a cancellation the
                # server did not ask for would only time out).
                outcome = "worker_shutdown"
                raise ApplicationError(
                    f"worker shutting down during {job.scanner} attempt {job.attempt}; "
                    "retried on another worker", type="WorkerShutdown") from None
            outcome = "cancelled"
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

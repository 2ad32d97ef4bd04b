"""ScanWorkflow: clone once, run every requested scanner in parallel, persist, notify.

Deterministic by construction: every decision is a pure function of the request and of
activity results (``scanward.policy``); time only through ``workflow.sleep``. A scanner
whose retries are spent is *dead*: the workflow says so in the ``ScanStatus`` and
``ScanDeadScanners`` search attributes and waits for an operator's ``retry`` or
``abandon`` signal, while the other scanners carry on.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.notify import NotifyActivities
    from activities.results import ResultActivities
    from activities.scanner_jobs import NON_RETRYABLE as SCANNER_NON_RETRYABLE
    from activities.scanner_jobs import ScannerActivities
    from activities.workspace import NON_RETRYABLE as CLONE_NON_RETRYABLE
    from activities.workspace import WorkspaceActivities
    from scanward import search_attributes as sa
    from scanward.contract import (
        AbandonSignal,
        Checkout,
        CloneInput,
        FailureClass,
        FinalizeInput,
        NotifyInput,
        PersistInput,
        Resources,
        RetrySignal,
        RetryTuning,
        ScannerJobInput,
        ScannerPlan,
        ScannerRun,
        ScannerStatus,
        ScanRequest,
        ScanStatus,
        ScanSummary,
        Severity,
    )
    from scanward.policy import after_failure, backoff


def _io_retry(tuning: RetryTuning, non_retryable: tuple[str, ...] = ()) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=tuning.initial_interval,
        backoff_coefficient=tuning.backoff_coefficient,
        maximum_interval=tuning.maximum_interval,
        maximum_attempts=tuning.io_attempts,
        non_retryable_error_types=list(non_retryable),
    )


def _job_deadline(tuning: RetryTuning) -> int:
    """The Job's own deadline, a minute inside the activity's, so that a scanner which runs
    too long ends as a classified ``deadline_exceeded`` rather than an activity timeout."""
    seconds = int(tuning.scanner_timeout.total_seconds())
    return max(seconds - 60, seconds // 2, 1)


def _failure_of(err: ActivityError) -> tuple[FailureClass, str]:
    """The failure class and message carried by a failed activity."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        try:
            return FailureClass(cause.type or ""), cause.message
        except ValueError:
            return FailureClass.CRASHED, f"{cause.type}: {cause.message}"
    if isinstance(cause, TimeoutError):
        return FailureClass.TIMED_OUT, f"activity timed out ({cause.type})"
    return FailureClass.CRASHED, str(cause or err)


@workflow.defn(name="ScanWorkflow")
class ScanWorkflow:
    """One scan of one repository at one commit."""

    @workflow.init
    def __init__(self, request: ScanRequest) -> None:
        self._request = request
        self._runs = {name: ScannerRun(scanner=name) for name in request.scanners}
        self._status = ScanStatus.RUNNING
        self._verdicts: dict[str, RetrySignal | AbandonSignal] = {}
        self._commit: str | None = None
        self._checkout_bytes: int | None = None
        self._by_severity: dict[Severity, int] = {}
        self._reason: str | None = None

    # ------------------------------------------------------------------ queries/signals

    @workflow.query(name="progress")
    def progress(self) -> ScanSummary:
        """Live progress: per-scanner status, attempts, finding counts."""
        return self._summary()

    @workflow.signal(name="retry")
    def retry(self, signal: RetrySignal | None = None) -> None:
        """Run dead scanners again (one, or all), optionally with more memory/CPU."""
        signal = signal or RetrySignal()
        for name in self._dead(signal.scanner):
            self._verdicts[name] = signal

    @workflow.signal(name="abandon")
    def abandon(self, signal: AbandonSignal | None = None) -> None:
        """Give up on dead scanners (one, or all); the scan ends ``partial``."""
        signal = signal or AbandonSignal()
        for name in self._dead(signal.scanner):
            self._verdicts[name] = signal

    def _dead(self, scanner: str | None) -> list[str]:
        dead = [n for n, r in self._runs.items() if r.status is ScannerStatus.DEAD]
        if scanner is None:
            return dead
        if scanner not in dead:
            workflow.logger.warning("signal for scanner %r ignored: it is not dead", scanner)
            return []
        return [scanner]

    # ------------------------------------------------------------------------- run

    @workflow.run
    async def run(self, request: ScanRequest) -> ScanSummary:
        scan_id = workflow.info().workflow_id
        try:
            try:
                cloned = await workflow.execute_activity_method(
                    WorkspaceActivities.clone_repository,
                    CloneInput(scan_id=scan_id, repository=request.repository, ref=request.ref,
                               commit=request.commit, credentials_ref=request.credentials_ref,
                               scanners=request.scanners, resources=request.resources),
                    start_to_close_timeout=request.tuning.clone_timeout,
                    retry_policy=_io_retry(request.tuning, CLONE_NON_RETRYABLE),
                )
            except ActivityError as e:
                self._reason = f"clone failed: {_failure_of(e)[1]}"
                await self._finish(ScanStatus.FAILED)
                raise ApplicationError(self._reason, type="CloneFailed",
                                       non_retryable=True) from e
            self._commit = cloned.checkout.commit
            self._checkout_bytes = cloned.checkout.size_bytes
            await asyncio.gather(*(self._scan_with(plan, cloned.checkout)
                                   for plan in cloned.plan))
            abandoned = any(r.status is ScannerStatus.ABANDONED for r in self._runs.values())
            await self._finish(ScanStatus.PARTIAL if abandoned else ScanStatus.COMPLETED)
            return self._summary()
        except asyncio.CancelledError:
            for name, run in self._runs.items():
                if run.status not in (ScannerStatus.SUCCEEDED, ScannerStatus.ABANDONED):
                    self._update(name, status=ScannerStatus.CANCELLED)
            self._reason = "cancelled"
            await self._finish(ScanStatus.CANCELLED)
            raise

    async def _scan_with(self, plan: ScannerPlan, checkout: Checkout) -> None:
        """Attempts of one scanner until it succeeds or an operator abandons it."""
        tuning = self._request.tuning
        name, resources = plan.scanner, plan.resources
        attempt = counted = 0
        while True:
            attempt += 1
            self._update(name, status=ScannerStatus.RUNNING, attempts=attempt,
                         resources=resources)
            try:
                await self._attempt(name, attempt, resources, checkout)
                return
            except ActivityError as e:
                if isinstance(e.cause, CancelledError):
                    # The scan was cancelled and the attempt has stopped: not a failure.
                    raise asyncio.CancelledError() from e
                failure, message = _failure_of(e)
            decision = after_failure(failure, resources=resources, counted_attempts=counted + 1,
                                     max_attempts=tuning.scanner_attempts,
                                     max_memory_mib=plan.max_memory_mib, message=message)
            counted += 1 if decision.counts else 0
            if decision.retry:
                self._update(name, status=ScannerStatus.RETRYING, failure_class=failure,
                             reason=message[:2000])
                resources = decision.resources
                await workflow.sleep(backoff(tuning, counted))
                continue
            verdict = await self._dead_until_verdict(name, failure, decision.reason)
            if isinstance(verdict, AbandonSignal):
                self._update(name, status=ScannerStatus.ABANDONED,
                             reason=f"{verdict.reason} (was: {decision.reason[:1500]})")
                self._publish_status()
                return
            counted = 0
            resources = Resources(
                cpu_millis=verdict.cpu_millis or resources.cpu_millis,
                memory_mib=verdict.memory_mib or resources.memory_mib,
            )

    async def _attempt(self, name: str, attempt: int, resources: Resources,
                       checkout: Checkout) -> None:
        req, tuning = self._request, self._request.tuning
        job = await workflow.execute_activity_method(
            ScannerActivities.run_scanner,
            ScannerJobInput(scan_id=checkout.scan_id, scanner=name, attempt=attempt,
                            checkout=checkout, resources=resources, tenant=req.tenant,
                            deadline_seconds=_job_deadline(tuning)),
            start_to_close_timeout=tuning.scanner_timeout,
            heartbeat_timeout=tuning.heartbeat_timeout,
            retry_policy=_io_retry(tuning, SCANNER_NON_RETRYABLE),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        stored = await workflow.execute_activity_method(
            ResultActivities.persist_results,
            PersistInput(scan_id=checkout.scan_id, tenant=req.tenant, repository=req.repository,
                         ref=req.ref, commit=checkout.commit, scanner=name, attempt=attempt,
                         sarif_subpath=job.sarif_subpath, source_root=job.source_root),
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=_io_retry(tuning, (FailureClass.BROKEN_SARIF.value,)),
        )
        for severity, count in stored.by_severity.items():
            self._by_severity[severity] = self._by_severity.get(severity, 0) + count
        self._update(name, status=ScannerStatus.SUCCEEDED, finding_count=stored.finding_count,
                     failure_class=None, reason=None)

    async def _dead_until_verdict(self, name: str, failure: FailureClass,
                                  reason: str) -> RetrySignal | AbandonSignal:
        """Mark the scanner dead, make that visible, and wait for an operator."""
        self._update(name, status=ScannerStatus.DEAD, failure_class=failure,
                     reason=reason[:2000])
        self._verdicts.pop(name, None)
        self._publish_status()
        workflow.logger.warning("scanner %s is dead: %s", name, reason.splitlines()[0])
        workflow.metric_meter().create_counter(
            "scanward_scanner_dead", "Scanners that exhausted their retries"
        ).add(1, {"scanner": name, "failure_class": failure.value})
        await workflow.wait_condition(lambda: name in self._verdicts)
        verdict = self._verdicts.pop(name)
        if isinstance(verdict, RetrySignal):
            self._update(name, status=ScannerStatus.RETRYING, reason="retry requested by operator")
            self._publish_status()
        return verdict

    # --------------------------------------------------------------------- helpers

    def _update(self, name: str, **changes: object) -> None:
        self._runs[name] = self._runs[name].model_copy(update=changes)

    def _publish_status(self) -> None:
        dead = sorted(n for n, r in self._runs.items() if r.status is ScannerStatus.DEAD)
        status = ScanStatus.DEAD if dead else ScanStatus.RUNNING
        if status is not self._status or dead:
            self._status = status
            workflow.upsert_search_attributes([
                sa.SCAN_STATUS.value_set(status.value),
                sa.SCAN_DEAD_SCANNERS.value_set(dead),
            ])

    def _summary(self) -> ScanSummary:
        req = self._request
        return ScanSummary(
            scan_id=workflow.info().workflow_id, tenant=req.tenant, repository=req.repository,
            ref=req.ref, commit=self._commit, status=self._status,
            scanners=tuple(self._runs[n] for n in sorted(self._runs)),
            finding_count=sum(r.finding_count or 0 for r in self._runs.values()),
            by_severity=dict(self._by_severity), checkout_bytes=self._checkout_bytes,
            reason=self._reason,
        )

    async def _finish(self, status: ScanStatus) -> None:
        """Record the outcome, notify each target once, remove the workspace."""
        tuning = self._request.tuning
        self._status = status
        workflow.upsert_search_attributes([
            sa.SCAN_STATUS.value_set(status.value), sa.SCAN_DEAD_SCANNERS.value_set([]),
        ])
        summary = self._summary()
        await workflow.execute_activity_method(
            ResultActivities.finalize_scan, FinalizeInput(summary=summary),
            start_to_close_timeout=timedelta(minutes=2), retry_policy=_io_retry(tuning),
        )
        for target in self._request.notify:
            try:
                await workflow.execute_activity_method(
                    NotifyActivities.notify_webhook,
                    NotifyInput(scan_id=summary.scan_id, target=target, summary=summary),
                    start_to_close_timeout=tuning.notify_timeout,
                    retry_policy=_io_retry(tuning, ("SecretNotFound", "WebhookRejected")),
                )
            except ActivityError as e:
                # A receiver that is down must not turn a finished scan into a failed one.
                workflow.logger.warning("webhook %s not delivered: %s", target.url,
                                        _failure_of(e)[1])
        await workflow.execute_activity_method(
            WorkspaceActivities.cleanup_workspace, summary.scan_id,
            start_to_close_timeout=timedelta(minutes=5), retry_policy=_io_retry(tuning),
        )

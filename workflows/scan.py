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
from typing import NoReturn, TypeVar

from temporalio import workflow
from temporalio.common import Priority, RawValue, RetryPolicy
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
        PersistResult,
        Resources,
        RetrySignal,
        RetryTuning,
        ScanLifecycle,
        ScannerJobInput,
        ScannerPlan,
        ScannerRun,
        ScannerStatus,
        ScanRequest,
        ScanStatus,
        ScanSummary,
        Severity,
        request_problems,
    )
    from scanward.policy import activity_priority, after_failure, backoff, job_deadline
    from scanward.scan_details import current_details
    from scanward.settings import control_queue_for
    from scanward.webhook import redact_url

from workflows.payloads import NO_INPUT, decode

# Versioned changes (the README: "changing the workflow safely"): histories recorded before
# a patch keep their old command sequence on replay.
# On cancel, stop running scanners with a stop_scanner activity at once instead of
# waiting for each run_scanner to notice the cancel at its next heartbeat; a scan
# cancelled during its clone ends cancelled, not failed.
STOP_ON_CANCEL = "stop-scanners-on-cancel"
# Each activity carries its tenant's fairness weight divided by its cost
# (scanward.policy.activity_priority); before, activities inherited the scan's priority.
COST_WEIGHTED = "cost-weighted-fairness"
# A stop goes to the worker's control queue (scanward.settings.control_queue_for), whose
# slots no running scanner holds; before, to the scan's own task queue.
STOP_ON_CONTROL_QUEUE = "stop-on-control-queue"
# A request contract.request_problems refuses (tuning Temporal would refuse, an
# abbreviated commit, credentials in a webhook URL) fails the scan at once.
REQUEST_CHECKED = "request-checked"

Verdict = TypeVar("Verdict", RetrySignal, AbandonSignal)



def _io_retry(tuning: RetryTuning, non_retryable: tuple[str, ...] = (), *,
              until_done: bool = False) -> RetryPolicy:
    """Retries of an I/O activity. ``until_done``: the store's writes, retried until the
    store answers (a store outage holds the scan at that step, visible as the pending
    activity's last failure, instead of failing a scanner that ran fine and running it
    again); what retrying cannot fix is non-retryable."""
    return RetryPolicy(
        initial_interval=tuning.initial_interval,
        backoff_coefficient=tuning.backoff_coefficient,
        maximum_interval=tuning.maximum_interval,
        maximum_attempts=0 if until_done else tuning.io_attempts,
        non_retryable_error_types=list(non_retryable),
    )


def _tool_warning(stored: PersistResult) -> str | None:
    """What a scanner that succeeded said it could not do, for its summary."""
    if not stored.tool_error_count:
        return None
    more = stored.tool_error_count - len(stored.tool_errors)
    return (f"{stored.tool_error_count} error(s) the tool reported (not scanned, or not "
            "fully): " + "; ".join(stored.tool_errors) + (f"; +{more} more" if more else ""))


def _retry_why(failure: FailureClass) -> str:
    """Why the next attempt runs, as the Web UI shows it on the activity."""
    return {FailureClass.OOM_KILLED: "OOM retry, more memory",
            FailureClass.EVICTED: "evicted, again"}.get(failure, f"retry after {failure.value}")


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
    def __init__(self, raw: RawValue = NO_INPUT) -> None:
        # The request is decoded here rather than by the SDK: input that does not decode
        # or validate (sent by Temporal's CLI or another SDK) must fail the workflow at
        # once and visibly, not fail its first task again and again.
        self._invalid: str | None = None
        try:
            self._request: ScanRequest | None = decode(raw, ScanRequest, "scan request")
        except ApplicationError as e:
            self._request, self._invalid = None, e.message
        self._runs = {name: ScannerRun(scanner=name)
                      for name in (self._request.scanners if self._request else ())}
        self._status = ScanStatus.RUNNING
        self._verdicts: dict[str, RetrySignal | AbandonSignal] = {}
        self._plans: dict[str, ScannerPlan] = {}
        self._running: dict[str, ScannerJobInput] = {}  # scanner attempts in flight
        self._stop_on_cancel = False
        self._commit: str | None = None
        self._checkout_bytes: int | None = None
        self._by_severity: dict[Severity, int] = {}
        self._reason: str | None = None
        self._lifecycle: ScanLifecycle | None = None
        self._undelivered: list[str] = []
        self._not_stopped: list[str] = []

    # ----------------------------------------------------------- queries/updates/signals

    @workflow.query(name="progress")
    def progress(self) -> ScanSummary:
        """Live progress: per-scanner status, attempts, finding counts."""
        return self._summary()

    @workflow.update(name="retry")
    def retry_update(self, raw: RawValue = NO_INPUT) -> list[str]:
        """Run dead scanners again (one, or all), optionally with more memory/CPU; returns
        the scanners retried. Rejected, with the reason, when nothing would happen."""
        return self._apply(decode(raw, RetrySignal, "retry"))

    @retry_update.validator
    def _validate_retry(self, raw: RawValue = NO_INPUT) -> None:
        self._targets(decode(raw, RetrySignal, "retry"))

    @workflow.update(name="abandon")
    def abandon_update(self, raw: RawValue = NO_INPUT) -> list[str]:
        """Give up on dead scanners (one, or all); returns the scanners abandoned."""
        return self._apply(decode(raw, AbandonSignal, "abandon"))

    @abandon_update.validator
    def _validate_abandon(self, raw: RawValue = NO_INPUT) -> None:
        verdict = decode(raw, AbandonSignal, "abandon")
        # Here, not in the model: validators do not run on replay, so an abandon with a
        # blank reason accepted before still replays.
        if not verdict.reason.strip():
            raise ApplicationError("an abandon needs a reason: it is what the scan shows",
                                   type="InvalidInput")
        self._targets(verdict)

    @workflow.signal(name="retry")
    def retry(self, raw: RawValue = NO_INPUT) -> None:
        """The batch form of the ``retry`` update (``retry --all-dead``, ``temporal
        workflow signal --query``): a signal cannot be refused, so one that does not
        apply is logged and counted instead."""
        self._signalled(raw, RetrySignal, "retry")

    @workflow.signal(name="abandon")
    def abandon(self, raw: RawValue = NO_INPUT) -> None:
        """The batch form of the ``abandon`` update."""
        self._signalled(raw, AbandonSignal, "abandon")

    def _signalled(self, raw: RawValue, model: type[Verdict], name: str) -> None:
        try:
            self._apply(decode(raw, model, name))
        except ApplicationError as e:
            workflow.logger.warning("%s signal to %s not applied: %s", name,
                                    workflow.info().workflow_id, e.message)
            workflow.metric_meter().create_counter(
                "scanward_signal_rejected", "Operator signals that did not apply"
            ).add(1, {"signal": name, "reason": e.type or "invalid"})

    def _apply(self, verdict: RetrySignal | AbandonSignal) -> list[str]:
        targets = self._targets(verdict)
        for name in targets:
            self._verdicts[name] = verdict
        return targets

    def _targets(self, verdict: RetrySignal | AbandonSignal) -> list[str]:
        """The dead scanners ``verdict`` applies to; raises when it applies to none."""
        dead = sorted(n for n, r in self._runs.items() if r.status is ScannerStatus.DEAD)
        if verdict.scanner is not None:
            run = self._runs.get(verdict.scanner)
            if run is None:
                known = ", ".join(sorted(self._runs)) or "none"
                raise ApplicationError(f"scanner {verdict.scanner!r} is not part of this "
                                       f"scan (its scanners: {known})", type="UnknownScanner")
            if run.status is not ScannerStatus.DEAD:
                raise ApplicationError(f"scanner {verdict.scanner!r} is not dead (it is "
                                       f"{run.status.value})", type="NotDead")
            dead = [verdict.scanner]
        elif not dead:
            states = ", ".join(f"{n} {r.status.value}" for n, r in sorted(self._runs.items()))
            raise ApplicationError(f"no scanner of this scan is dead ({states or 'none'})",
                                   type="NotDead")
        if isinstance(verdict, RetrySignal) and verdict.memory_mib is not None:
            for name in dead:
                cap = self._plans[name].max_memory_mib if name in self._plans else None
                if cap is not None and verdict.memory_mib > cap:
                    raise ApplicationError(f"memory_mib {verdict.memory_mib} is above "
                                           f"{name}'s cap of {cap} MiB", type="InvalidInput")
        return dead

    # ------------------------------------------------------------------------- run

    @workflow.run
    async def run(self, raw: RawValue = NO_INPUT) -> ScanSummary:
        request = self._request
        if request is None:
            # decode's message already says "invalid scan request: ...".
            self._refuse(self._invalid or "invalid scan request")
        # What the models accept but the scan cannot run (tuning Temporal refuses fails
        # the task again and again; an abbreviated commit cannot be fetched): refused
        # here, behind a patch recorded only for such a request, so older histories replay.
        problems = request_problems(request)
        if problems and workflow.patched(REQUEST_CHECKED):
            self._refuse(f"invalid scan request: {'; '.join(problems)}")
        scan_id = workflow.info().workflow_id
        try:
            try:
                cloned = await workflow.execute_activity_method(
                    WorkspaceActivities.clone_repository,
                    CloneInput(scan_id=scan_id, repository=request.repository, ref=request.ref,
                               commit=request.commit, credentials_ref=request.credentials_ref,
                               scanners=request.scanners, resources=request.resources),
                    priority=self._priority("clone_repository"),
                    start_to_close_timeout=request.tuning.clone_timeout,
                    # The clone heartbeats: a killed worker costs seconds, not the timeout.
                    heartbeat_timeout=request.tuning.heartbeat_timeout,
                    retry_policy=_io_retry(request.tuning, CLONE_NON_RETRYABLE),
                    summary=f"clone {request.ref}"
                            + (f" at {request.commit[:12]}" if request.commit else ""),
                )
            except ActivityError as e:
                # Cancelled mid-clone: the scan ends cancelled, not failed (same patch).
                if isinstance(e.cause, CancelledError) and workflow.patched(STOP_ON_CANCEL):
                    raise asyncio.CancelledError() from e
                self._reason = f"clone failed: {_failure_of(e)[1]}"
                # Not "pending": nothing will run them (no command, replay unaffected).
                for name in self._runs:
                    self._update(name, status=ScannerStatus.CANCELLED,
                                 reason="not run: the clone failed")
                await self._finish(request, ScanStatus.FAILED)
                raise ApplicationError(self._reason, type="CloneFailed",
                                       non_retryable=True) from e
            self._commit = cloned.checkout.commit
            self._checkout_bytes = cloned.checkout.size_bytes
            self._plans = {plan.scanner: plan for plan in cloned.plan}
            await asyncio.gather(*(self._scan_with(request, plan, cloned.checkout)
                                   for plan in cloned.plan))
            abandoned = any(r.status is ScannerStatus.ABANDONED for r in self._runs.values())
            await self._finish(request, ScanStatus.PARTIAL if abandoned else ScanStatus.COMPLETED)
            return self._summary()
        except asyncio.CancelledError:
            for name, run in self._runs.items():
                if run.status not in (ScannerStatus.SUCCEEDED, ScannerStatus.ABANDONED):
                    self._update(name, status=ScannerStatus.CANCELLED)
            self._reason = "cancelled"
            if self._stop_on_cancel:
                await self._stop_running(request)
            await self._finish(request, ScanStatus.CANCELLED)
            raise

    async def _scan_with(self, request: ScanRequest, plan: ScannerPlan,
                         checkout: Checkout) -> None:
        """Attempts of one scanner until it succeeds or an operator abandons it."""
        tuning = request.tuning
        name, resources = plan.scanner, plan.resources
        attempt = counted = 0
        why = ""  # what led to this attempt, for its summary in the Web UI
        while True:
            attempt += 1
            self._update(name, status=ScannerStatus.RUNNING, attempts=attempt,
                         resources=resources)
            try:
                await self._attempt(request, name, attempt, resources, checkout, why)
                return
            except ActivityError as e:
                if isinstance(e.cause, CancelledError):
                    # The scan was cancelled and the attempt has stopped: not a failure.
                    raise asyncio.CancelledError() from e
                failure, message = _failure_of(e)
            decision = after_failure(failure, resources=resources, counted_attempts=counted + 1,
                                     max_attempts=tuning.scanner_attempts,
                                     max_memory_mib=plan.max_memory_mib, message=message,
                                     total_attempts=attempt)
            counted += 1 if decision.counts else 0
            if decision.retry:
                self._update(name, status=ScannerStatus.RETRYING, failure_class=failure,
                             reason=message[:2000])
                why = _retry_why(failure)
                resources = decision.resources
                await workflow.sleep(backoff(tuning, counted))
                continue
            verdict = await self._dead_until_verdict(name, failure, decision.reason)
            if isinstance(verdict, AbandonSignal):
                self._update(name, status=ScannerStatus.ABANDONED,
                             reason=f"{verdict.reason} (was: {decision.reason[:1500]})")
                self._publish_status()
                return
            counted, why = 0, "operator retry"
            resources = Resources(
                cpu_millis=verdict.cpu_millis or resources.cpu_millis,
                memory_mib=verdict.memory_mib or resources.memory_mib,
            )

    async def _attempt(self, request: ScanRequest, name: str, attempt: int,
                       resources: Resources, checkout: Checkout, why: str = "") -> None:
        tuning = request.tuning
        job_input = ScannerJobInput(scan_id=checkout.scan_id, scanner=name, attempt=attempt,
                                    checkout=checkout, resources=resources,
                                    tenant=request.tenant, deadline_seconds=job_deadline(tuning))
        self._stop_on_cancel = workflow.patched(STOP_ON_CANCEL)
        self._running[name] = job_input
        try:
            job = await workflow.execute_activity_method(
                ScannerActivities.run_scanner, job_input,
                priority=self._priority("run_scanner"),
                start_to_close_timeout=tuning.scanner_timeout,
                heartbeat_timeout=tuning.heartbeat_timeout,
                retry_policy=_io_retry(tuning, SCANNER_NON_RETRYABLE),
                # Patched: on cancel the workflow stops the scanner itself (_stop_running)
                # rather than wait for the activity's next heartbeat to learn of it.
                cancellation_type=(
                    workflow.ActivityCancellationType.TRY_CANCEL if self._stop_on_cancel
                    else workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED),
                summary=" · ".join(filter(None, (f"{name} attempt {attempt}",
                                                 f"{resources.memory_mib} MiB", why))),
            )
        except ActivityError as e:
            if not isinstance(e.cause, CancelledError):
                del self._running[name]
            raise
        del self._running[name]
        stored = await workflow.execute_activity_method(
            ResultActivities.persist_results,
            PersistInput(scan_id=checkout.scan_id, tenant=request.tenant,
                         repository=request.repository, ref=request.ref, commit=checkout.commit,
                         scanner=name, attempt=attempt, sarif_subpath=job.sarif_subpath,
                         source_root=job.source_root),
            priority=self._priority("persist_results"),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=tuning.heartbeat_timeout,  # persist heartbeats per batch
            retry_policy=_io_retry(tuning, (FailureClass.BROKEN_SARIF.value,),
                                   until_done=True),
            summary=f"persist {name} attempt {attempt}",
        )
        for severity, count in stored.by_severity.items():
            self._by_severity[severity] = self._by_severity.get(severity, 0) + count
        self._update(name, status=ScannerStatus.SUCCEEDED, finding_count=stored.finding_count,
                     failure_class=None, reason=None, warning=_tool_warning(stored))

    def _priority(self, activity: str) -> Priority:
        """An activity's task-queue priority: by its cost (patched; before, the scan's)."""
        if not workflow.patched(COST_WEIGHTED):
            return Priority.default
        return activity_priority(workflow.info().priority, activity)

    async def _stop_running(self, request: ScanRequest) -> None:
        """Stop the scanner attempts in flight (delete the Job, kill the process) now."""
        jobs = list(self._running.values())
        stops = await asyncio.gather(*(
            workflow.execute_activity_method(
                ScannerActivities.stop_scanner, job,
                task_queue=(control_queue_for(workflow.info().task_queue)
                            if workflow.patched(STOP_ON_CONTROL_QUEUE) else None),
                priority=self._priority("stop_scanner"),
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=_io_retry(request.tuning),
                summary=f"stop {job.scanner} attempt {job.attempt} (scan cancelled)",
            ) for job in jobs), return_exceptions=True)
        for job, stop in zip(jobs, stops, strict=True):
            if isinstance(stop, BaseException):
                why = _failure_of(stop)[1] if isinstance(stop, ActivityError) else str(stop)
                workflow.logger.warning("could not stop %s attempt %d: %s", job.scanner,
                                        job.attempt, why)
                # The scan still ends cancelled, but says what may still be running.
                self._not_stopped.append(
                    f"{job.scanner} attempt {job.attempt}: {why.splitlines()[0][:300]}")

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
        self._show()

    def _show(self) -> None:
        """Keep the Web UI's scan page current (no command: replay is unaffected)."""
        workflow.set_current_details(current_details(self._summary()))

    def _publish_status(self) -> None:
        dead = sorted(n for n, r in self._runs.items() if r.status is ScannerStatus.DEAD)
        status = ScanStatus.DEAD if dead else ScanStatus.RUNNING
        if status is not self._status or dead:
            self._status = status
            workflow.upsert_search_attributes([
                sa.SCAN_STATUS.value_set(status.value),
                sa.SCAN_DEAD_SCANNERS.value_set(dead),
            ])
        self._show()

    def _summary(self) -> ScanSummary:
        req = self._request
        summary = ScanSummary(
            scan_id=workflow.info().workflow_id, tenant=req.tenant if req else "",
            repository=req.repository if req else "", ref=req.ref if req else "",
            commit=self._commit, status=self._status,
            scanners=tuple(self._runs[n] for n in sorted(self._runs)),
            finding_count=sum(r.finding_count or 0 for r in self._runs.values()),
            by_severity=dict(self._by_severity), checkout_bytes=self._checkout_bytes,
            reason="; ".join([*filter(None, [self._reason]),
                              *(f"could not stop {what}" for what in self._not_stopped)])
                   or None,
            undelivered_webhooks=tuple(self._undelivered),
            not_stopped=tuple(self._not_stopped),
        )
        return summary if self._lifecycle is None else summary.with_lifecycle(self._lifecycle)

    def _refuse(self, reason: str) -> NoReturn:
        """End the scan failed on a request it cannot run, visibly (ScanStatus failed)."""
        self._reason = reason
        self._status = ScanStatus.FAILED
        workflow.upsert_search_attributes([sa.SCAN_STATUS.value_set(self._status.value)])
        self._show()
        raise ApplicationError(reason, type="InvalidRequest", non_retryable=True)

    async def _finish(self, request: ScanRequest, status: ScanStatus) -> None:
        """Record the outcome, notify each target once, remove the workspace."""
        tuning = request.tuning
        self._status = status
        workflow.upsert_search_attributes([
            sa.SCAN_STATUS.value_set(status.value), sa.SCAN_DEAD_SCANNERS.value_set([]),
        ])
        self._show()
        summary = self._summary()
        lifecycle = await workflow.execute_activity_method(
            ResultActivities.finalize_scan, FinalizeInput(summary=summary),
            priority=self._priority("finalize_scan"),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=_io_retry(tuning, until_done=True),
        )
        # Patched ("lifecycle-in-summary"): finalize_scan returns the scan's lifecycle
        # (new / existing / fixed, the first new findings) and the webhooks carry it, with
        # the severity counts of open findings only. Histories recorded before the patch
        # hold null here and notify with the summary as it was.
        # The result and the progress query say the same from here on.
        if workflow.patched("lifecycle-in-summary") and lifecycle is not None:
            self._lifecycle = lifecycle
            summary = self._summary()
        for target in request.notify:
            try:
                await workflow.execute_activity_method(
                    NotifyActivities.notify_webhook,
                    NotifyInput(scan_id=summary.scan_id, target=target, summary=summary,
                                run_id=workflow.info().run_id),
                    priority=self._priority("notify_webhook"),
                    start_to_close_timeout=tuning.notify_timeout,
                    retry_policy=_io_retry(tuning, ("SecretNotFound", "WebhookRejected")),
                )
            except ActivityError as e:
                # A receiver that is down must not turn a finished scan into a failed one,
                # but the result says so (the URL's credentials and query never).
                why = _failure_of(e)[1].splitlines()[0][:300]
                self._undelivered.append(f"{redact_url(target.url)}: {why}")
                self._show()
                workflow.logger.warning("webhook %s not delivered: %s",
                                        redact_url(target.url), why)
        await workflow.execute_activity_method(
            WorkspaceActivities.cleanup_workspace, summary.scan_id,
            priority=self._priority("cleanup_workspace"),
            start_to_close_timeout=timedelta(minutes=5), retry_policy=_io_retry(tuning),
        )


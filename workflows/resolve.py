"""ResolveRef: which commit does a ref name now? Asked of a worker, where the clone
credentials live, so that a scan is identified by the commit it scans (a branch that
moved is scanned again; the same commit is not) while the client needs no credentials."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.workspace import NON_RETRYABLE as GIT_NON_RETRYABLE
    from activities.workspace import WorkspaceActivities
    from scanward.contract import ResolvedRef, ResolveInput

from workflows.payloads import decode


@workflow.defn(name="ResolveRef")
class ResolveRefWorkflow:
    @workflow.run
    async def run(self, raw: RawValue) -> ResolvedRef:
        request = decode(raw, ResolveInput, "resolve request")
        return await workflow.execute_activity_method(
            WorkspaceActivities.resolve_ref, request,
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=timedelta(seconds=20),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1),
                                     maximum_interval=timedelta(seconds=10),
                                     maximum_attempts=3,
                                     non_retryable_error_types=list(GIT_NON_RETRYABLE)),
        )

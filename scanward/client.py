"""The typed Python API services use to start and steer scans through Temporal."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import re
import time
import traceback
import uuid
import weakref
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.api.batch.v1 import BatchOperationSignal
from temporalio.api.common.v1 import Payloads
from temporalio.api.workflowservice.v1 import StartBatchOperationRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile
from temporalio.exceptions import ActivityError, FailureError, WorkflowAlreadyStartedError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode

from scanward import scan_details, tracing
from scanward import search_attributes as sa
from scanward.contract import (
    AbandonSignal,
    ResolvedRef,
    ResolveInput,
    RetrySignal,
    ScanRequest,
    ScanStatus,
    ScanSummary,
    request_problems,
)
from scanward.inputs import InputError
from scanward.settings import DEFAULT_TASK_QUEUE, task_queue_for
from scanward.tenants import priority_for, weights_from_env

WORKFLOW = "ScanWorkflow"
RESOLVE_WORKFLOW = "ResolveRef"
# Long enough for a slow remote, short enough that a caller with no worker running
# learns it instead of waiting for ever.
RESOLVE_TIMEOUT = timedelta(seconds=60)
T = TypeVar("T")
log = logging.getLogger("scanward.client")


class TemporalUnavailable(RuntimeError):
    """Temporal could not be reached at the configured address."""


class RefNotResolved(Exception):
    """No worker could say which commit the requested ref names (unknown ref, no access,
    or no worker polling the task queue)."""


class ScanNotFound(LookupError):
    """No scan (workflow) has this id."""


class ScanNotRunning(Exception):
    """The operation needs a running scan and this one has ended."""


class Rejected(Exception):
    """The scan refused an operator command (its validator named the reason)."""


# ------------------------------------------------------------------------- runtime

# The runtime that :func:`connect` uses inside :func:`run`.
_session_runtime: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar(
    "scanward_runtime", default=None)


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a Temporal runtime of its own, shut down before returning.

    Why: the Temporal core's Rust threads hand every RPC result back to Python by taking
    the GIL. With the default runtime (a module global) those threads outlive
    ``asyncio.run``; if one is still between two GIL acquisitions when the interpreter
    finalizes, CPython ends that thread inside Rust code and the process aborts with
    ``Fatal Python error: PyGILState_Release`` (exit 134). Dropping the runtime here
    joins its threads while the interpreter is fully alive. ``main`` must connect with
    :func:`connect` and must not return a client or a handle."""
    runtime: Runtime | None = Runtime(telemetry=TelemetryConfig())
    alive = weakref.ref(runtime)
    token = _session_runtime.set(runtime)
    try:
        return asyncio.run(main)
    except BaseException as e:
        # A traceback keeps the failed coroutines' frames, and so their clients, alive:
        # clear their locals (the traceback itself still prints).
        _clear_frames(e)
        raise
    finally:
        _session_runtime.reset(token)
        runtime = None
        gc.collect()  # clients sit in reference cycles; their runtime goes with them
        if alive() is not None:
            log.warning("the Temporal runtime outlived its session: something still holds "
                        "a client, so its threads may abort the interpreter at exit")


def _clear_frames(exc: BaseException | None, seen: set[int] | None = None) -> None:
    seen = set() if seen is None else seen
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        if exc.__cause__ is not None:
            _clear_frames(exc.__cause__, seen)
        exc = exc.__context__


async def connect(profile: str | None = None, *, runtime: Runtime | None = None) -> Client:
    """Connect with Temporal's own conventions (``TEMPORAL_ADDRESS``,
    ``TEMPORAL_NAMESPACE``, ``TEMPORAL_PROFILE``, config file) and the pydantic converter.
    Inside :func:`run`, the client uses that session's runtime."""
    config = ClientConfigProfile.load(profile=profile).to_client_connect_config()
    target = config.setdefault("target_host", "localhost:7233")
    try:
        return await Client.connect(**config, data_converter=pydantic_data_converter,
                                    runtime=runtime or _session_runtime.get(),
                                    interceptors=tracing.interceptors())
    except RuntimeError as e:
        why = re.search(r'message: "([^"]+)"', str(e))
        reason = why.group(1) if why else str(e).splitlines()[0]
        raise TemporalUnavailable(f"cannot reach Temporal at {target}: {reason} "
                                  "(set TEMPORAL_ADDRESS or a profile)") from e


# --------------------------------------------------------------------------- scans


async def start_scan(
    client: Client,
    request: ScanRequest,
    *,
    task_queue: str = DEFAULT_TASK_QUEUE,
    priority: Priority | None = None,
) -> WorkflowHandle[Any, ScanSummary]:
    """Start a scan of the commit ``request.ref`` names now, or return the scan of it
    that already exists.

    Without ``request.commit``, a worker resolves the ref first (``ResolveRef``: git
    ls-remote with the worker's credentials; the client needs none). The workflow id is
    derived from the request *and the commit*: the same commit with the same scanners is
    the same scan (joined while it runs, its result returned once finished), and a
    branch that moved is a new scan. ``dedupe_key`` scans the same commit again on purpose.
    Scanner names are checked for syntax only (by :class:`ScanRequest`): the workers'
    catalog (``SCANWARD_CATALOG``) is the authority on which scanners exist, and a scan
    naming one they do not know fails at once with ``UnknownScanner``.

    Per-tenant fairness: the scan (and every activity of it, which inherits the
    workflow's priority) carries ``Priority(fairness_key=tenant, fairness_weight=w)``
    with ``w`` from ``SCANWARD_TENANT_WEIGHTS`` (default 1), so that on a backlogged task
    queue a tenant with 1,000 scans queued does not starve one that queues 10.
    ``priority`` overrides it (``Priority.default``: no fairness key, plain FIFO).
    """
    problems = request_problems(request)
    if problems:  # the workflow would refuse it too; said here before anything starts
        raise InputError(f"invalid scan request: {'; '.join(problems)}")
    if priority is None:
        priority = priority_for(request.tenant, weights_from_env())
    request = await with_commit(client, request, task_queue=task_queue, priority=priority)
    queue = task_queue_for(request.cluster, task_queue)
    scan_id = request.scan_id()
    try:
        return await client.start_workflow(
            WORKFLOW,
            request,
            id=scan_id,
            task_queue=queue,
            result_type=ScanSummary,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            search_attributes=TypedSearchAttributes([
                SearchAttributePair(sa.SCAN_STATUS, ScanStatus.RUNNING.value),
                SearchAttributePair(sa.SCAN_TENANT, request.tenant),
            ]),
            static_summary=scan_details.static_summary(request),  # the Web UI's title
            priority=priority,
        )
    except WorkflowAlreadyStartedError:
        # This commit was scanned to the end with these scanners: that scan is the answer.
        return handle(client, scan_id)


async def with_commit(client: Client, request: ScanRequest, *,
                      task_queue: str = DEFAULT_TASK_QUEUE,
                      priority: Priority | None = None) -> ScanRequest:
    """``request`` with the commit its ref names now (unchanged if it names a commit)."""
    if request.commit is not None:
        return request
    queue = task_queue_for(request.cluster, task_queue)
    resolved = await resolve_ref(client, request, queue, priority=priority)
    return request.model_copy(update={"commit": resolved.commit})


async def resolve_ref(client: Client, request: ScanRequest, task_queue: str, *,
                      within: timedelta = RESOLVE_TIMEOUT,
                      priority: Priority | None = None) -> ResolvedRef:
    """The commit ``request.ref`` names now, asked of a worker on ``task_queue``, with
    the tenant's fairness priority: a tenant's resolves queue like its scans."""
    if priority is None:
        priority = priority_for(request.tenant, weights_from_env())
    try:
        resolved: ResolvedRef = await client.execute_workflow(
            RESOLVE_WORKFLOW,
            ResolveInput(repository=request.repository, ref=request.ref,
                         credentials_ref=request.credentials_ref),
            id=f"resolve-{request.tenant}-{uuid.uuid4().hex[:12]}",
            task_queue=task_queue, result_type=ResolvedRef, execution_timeout=within,
            priority=priority,
        )
    except WorkflowFailureError as e:
        if isinstance(e.cause, TemporalTimeoutError):
            raise RefNotResolved(
                f"cannot resolve {request.ref!r}: no worker answered on task queue "
                f"{task_queue!r} within {within.total_seconds():.0f}s (give the commit to "
                "start without resolving)") from e
        cause: BaseException | None = e.cause
        while isinstance(cause, ActivityError) and cause.cause is not None:
            cause = cause.cause
        message = cause.message if isinstance(cause, FailureError) else str(cause)
        raise RefNotResolved(f"cannot resolve {request.ref!r} in {request.repository}: "
                             f"{message}") from e
    return resolved


def handle(client: Client, scan_id: str) -> WorkflowHandle[Any, ScanSummary]:
    return client.get_workflow_handle(scan_id, result_type=ScanSummary)


async def progress(client: Client, scan_id: str,
                   rpc_timeout: timedelta | None = None) -> ScanSummary:
    """Live progress of a scan (works on finished scans too, while a worker serves
    their task queue)."""
    summary: ScanSummary = await handle(client, scan_id).query(
        "progress", result_type=ScanSummary, rpc_timeout=rpc_timeout)
    return summary


@dataclass(frozen=True)
class ScanState:
    """What Temporal knows of a scan without asking its workflow."""

    scan_id: str
    workflow_status: WorkflowExecutionStatus | None
    scan_status: ScanStatus | None  # the ScanStatus search attribute
    dead_scanners: tuple[str, ...]
    failure: str | None = None  # why the workflow closed unsuccessfully, if it did

    @property
    def running(self) -> bool:
        return self.workflow_status is WorkflowExecutionStatus.RUNNING

    @property
    def closed_as(self) -> str:
        """``completed`` / ``failed`` / ``cancelled`` ...: the scan's own word when it
        set one, else the workflow's."""
        if self.scan_status is not None and self.scan_status not in (ScanStatus.RUNNING,
                                                                     ScanStatus.DEAD):
            return self.scan_status.value
        return self.workflow_status.name.lower() if self.workflow_status else "unknown"


def _state(scan_id: str, desc: WorkflowExecutionDescription,
           failure: str | None = None) -> ScanState:
    raw = desc.typed_search_attributes.get(sa.SCAN_STATUS)
    try:
        scan_status = ScanStatus(raw) if raw else None
    except ValueError:
        scan_status = None
    dead = desc.typed_search_attributes.get(sa.SCAN_DEAD_SCANNERS) or []
    return ScanState(scan_id, desc.status, scan_status, tuple(dead), failure)


async def describe(client: Client, scan_id: str) -> ScanState:
    """The scan's workflow status and search attributes; for a scan that closed without
    completing, also the failure message of its result. Raises :class:`ScanNotFound`."""
    h = handle(client, scan_id)
    try:
        desc = await h.describe()
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            raise ScanNotFound(f"no such scan: {scan_id}") from e
        raise
    failure = None
    if desc.status not in (None, WorkflowExecutionStatus.RUNNING,
                           WorkflowExecutionStatus.COMPLETED):
        failure = await _failure(h)
    return _state(scan_id, desc, failure)


async def _failure(h: WorkflowHandle[Any, ScanSummary]) -> str | None:
    """The message a closed, unsuccessful workflow failed with."""
    try:
        await h.result(follow_runs=False)
    except WorkflowFailureError as e:
        return getattr(e.cause, "message", None) or str(e.cause)
    except RPCError as e:
        return e.message
    return None


@dataclass(frozen=True)
class ScanReport:
    """``scanward status``: the workflow's answer when it gives one, Temporal's record
    of the execution always."""

    state: ScanState
    summary: ScanSummary | None  # the progress query's answer
    query_error: str | None  # why there is no summary


async def report(client: Client, scan_id: str,
                 query_timeout: timedelta = timedelta(seconds=10)) -> ScanReport:
    """The scan's progress, or, when its workflow cannot answer (it closed before its
    first task, or no worker serves its queue), what Temporal recorded of it."""
    state = await describe(client, scan_id)
    try:
        return ScanReport(state, await progress(client, scan_id, query_timeout), None)
    except RPCError as e:
        return ScanReport(state, None, e.message)
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as e:
        return ScanReport(state, None, str(e))


# ----------------------------------------------------------------------- operators


async def retry(client: Client, scan_id: str, signal: RetrySignal | None = None) -> list[str]:
    """Retry dead scanners through the validating ``retry`` update; returns the scanners
    retried. Raises :class:`Rejected` with the workflow's reason (unknown scanner, not
    dead, nothing dead, resources above the cap), :class:`ScanNotFound` or
    :class:`ScanNotRunning`."""
    return await _verdict(client, scan_id, "retry", signal or RetrySignal())


async def abandon(client: Client, scan_id: str,
                  signal: AbandonSignal | None = None) -> list[str]:
    """Abandon dead scanners through the validating ``abandon`` update; returns the
    scanners abandoned. Raises like :func:`retry`."""
    return await _verdict(client, scan_id, "abandon", signal or AbandonSignal())


async def _verdict(client: Client, scan_id: str, update: str,
                   verdict: RetrySignal | AbandonSignal) -> list[str]:
    try:
        applied: list[str] = await handle(client, scan_id).execute_update(
            update, verdict, result_type=list[str])
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        reason = getattr(cause, "message", None) or str(cause)
        raise Rejected(f"{update} rejected by {scan_id}: {reason}") from e
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            raise await _not_running(client, scan_id) from e
        raise
    return applied


async def _not_running(client: Client, scan_id: str) -> Exception:
    """The error for a command sent to a scan that is unknown or has ended."""
    try:
        state = await describe(client, scan_id)
    except ScanNotFound as e:
        return e
    return ScanNotRunning(f"scan {scan_id} is not running: it ended {state.closed_as}"
                          + (f" ({state.failure})" if state.failure else ""))


async def cancel(client: Client, scan_id: str) -> None:
    """Cancel a running scan (its running scanners are stopped). Raises
    :class:`ScanNotFound` for an unknown id and :class:`ScanNotRunning` for a scan that
    has ended: cancelling it would do nothing."""
    state = await describe(client, scan_id)
    if not state.running:
        raise await _not_running(client, scan_id)
    try:
        await handle(client, scan_id).cancel()
    except RPCError as e:  # it ended between the describe and the cancel
        if e.status is RPCStatusCode.NOT_FOUND:
            raise await _not_running(client, scan_id) from e
        raise


async def wait_closed(client: Client, scan_id: str, patience: timedelta) -> ScanState:
    """Poll until the scan's workflow has closed or ``patience`` has passed; returns its
    last state (still running if the patience ran out)."""
    deadline = time.monotonic() + patience.total_seconds()
    while True:
        state = await describe(client, scan_id)
        if not state.running or time.monotonic() >= deadline:
            return state
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------------- visibility


def status_query(status: ScanStatus | None = None, tenant: str | None = None) -> str:
    """A visibility query for scans, e.g. ``ScanStatus = "dead"``."""
    clauses = [f'WorkflowType = "{WORKFLOW}"']
    if status is not None:
        clauses.append(f'{sa.SCAN_STATUS.name} = "{status.value}"')
    if tenant is not None:
        clauses.append(f'{sa.SCAN_TENANT.name} = "{tenant}"')
    return " AND ".join(clauses)


async def list_scans(
    client: Client, status: ScanStatus | None = None, tenant: str | None = None,
    limit: int = 100,
) -> AsyncIterator[tuple[str, ScanStatus | None, WorkflowExecutionStatus | None]]:
    """Scans matching the search attributes, newest first."""
    async for wf in client.list_workflows(status_query(status, tenant), limit=limit):
        raw = wf.typed_search_attributes.get(sa.SCAN_STATUS)
        yield wf.id, ScanStatus(raw) if raw else None, wf.status


async def signal_matching(client: Client, query: str, signal_name: str, payload: Any,
                          reason: str) -> str:
    """Signal every workflow matching ``query`` in one server-side batch operation (as
    ``temporal workflow signal --query`` does); returns the batch job id."""
    job_id = f"scanward-{signal_name}-{uuid.uuid4()}"
    payloads = await client.data_converter.encode([payload])
    await client.workflow_service.start_batch_operation(
        StartBatchOperationRequest(
            namespace=client.namespace,
            visibility_query=query,
            job_id=job_id,
            reason=reason,
            signal_operation=BatchOperationSignal(
                signal=signal_name,
                input=Payloads(payloads=payloads),
                identity=client.identity,
            ),
        )
    )
    return job_id


async def retry_all_dead(client: Client, signal: RetrySignal | None = None,
                         tenant: str | None = None) -> str:
    """Send the ``retry`` signal to every dead scan in one batch (a batch cannot run
    updates); returns the batch job id."""
    return await signal_matching(client, status_query(ScanStatus.DEAD, tenant), "retry",
                                 signal or RetrySignal(), "scanward retry --all-dead")

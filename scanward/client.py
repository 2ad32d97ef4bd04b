"""The typed Python API services use to start and steer scans through Temporal."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import gc
import hashlib
import json
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
    WorkflowUpdateRPCTimeoutOrCancelledError,
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
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
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
from scanward.inputs import InputError, check_scanner_name
from scanward.settings import DEFAULT_TASK_QUEUE, task_queue_for
from scanward.tenants import priority_for, weights_from_env

WORKFLOW = "ScanWorkflow"
RESOLVE_WORKFLOW = "ResolveRef"
# Long enough for a slow remote, short enough that a caller with no worker running
# learns it instead of waiting for ever.
RESOLVE_TIMEOUT = timedelta(seconds=60)
# How long retry / abandon wait for a worker to run the update: a worker that serves the
# scan answers in well under a second; with none (a mistyped cluster, every worker down)
# the update would wait for ever.
UPDATE_TIMEOUT = timedelta(seconds=15)
# The memo entry a scan's start records: a digest of each request field that is not part
# of the scan's id (REQUEST_IDENTITY), so that a second start of the same id can tell
# whether it asks for the same scan (see start_scan).
REQUEST_MEMO = "scanward-request"
REQUEST_IDENTITY = frozenset({"tenant", "repository", "ref", "commit", "scanners",
                              "dedupe_key"})
# The tenant names ScanRequest accepts (its field's pattern, read from the model).
TENANT_RE = re.compile(ScanRequest.model_json_schema()["properties"]["tenant"]["pattern"])
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


class NoWorker(Exception):
    """No worker answered an operator command in time (none serves the scan's queue)."""


class RequestConflict(Exception):
    """A start found the scan it names (same id) already started with a request that
    differs in something the id does not cover (notify, cluster, resources, tuning,
    credentials): joining it would silently drop the difference."""


# ------------------------------------------------------------------------- runtime

# The Temporal core's own log lines (a retried RPC, a failed heartbeat: one per retry
# while the server is down) go to this logger rather than straight to stderr: a worker,
# which configures logging, shows them in its log; a CLI command, which does not, shows
# only its one-line error (the NullHandler keeps Python's last-resort handler quiet).
CORE_LOG = logging.getLogger("scanward.temporal_core")
CORE_LOG.addHandler(logging.NullHandler())


def core_logging() -> LoggingConfig:
    """The core's WARN lines (and others' ERROR), forwarded to :data:`CORE_LOG`."""
    return LoggingConfig(filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                         forwarding=LogForwardingConfig(logger=CORE_LOG))


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
    created = Runtime(telemetry=TelemetryConfig(logging=core_logging()))
    alive = weakref.ref(created)
    runtime: Runtime | None = created
    del created
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
        if not _released(alive):
            log.warning("the Temporal runtime outlived its session: something still holds "
                        "a client, so its threads may abort the interpreter at exit")


def _released(runtime: weakref.ref[Runtime], patience: float = 1.0) -> bool:
    """Whether the session's runtime is gone once its clients are. They sit in
    reference cycles (a collection frees them), and a call the core answers as the
    loop closes holds its client until the core's thread lets go of it: on a busy
    machine that took a moment (2 of 30 `findings` commands warned without waiting)."""
    deadline = time.monotonic() + patience
    while True:
        gc.collect()
        if runtime() is None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


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


def unavailable(e: RPCError) -> bool:
    """Whether ``e`` says Temporal was not reached or did not answer in time (down,
    restarting, a stalled frontend), not that it refused the call: worth waiting out."""
    # CANCELLED: how the SDK reports a transport that timed out ("Timeout expired").
    return e.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED,
                        RPCStatusCode.CANCELLED)


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

    A scan is joined (or returned) only for the same request: the start records a
    digest of each field its id does not cover (notify, cluster, resources, tuning,
    credentials_ref) in the workflow's memo, and a start that finds the scan already
    there with other values raises :class:`RequestConflict` naming them (a new
    ``dedupe_key`` scans with this request).
    """
    problems = request_problems(request)
    if problems:  # the workflow would refuse it too; said here before anything starts
        raise InputError(f"invalid scan request: {'; '.join(problems)}")
    if priority is None:
        priority = priority_for(request.tenant, weights_from_env())
    request = await with_commit(client, request, task_queue=task_queue, priority=priority)
    queue = task_queue_for(request.cluster, task_queue)
    scan_id = request.scan_id()
    digests = request_digests(request)
    try:
        started = await client.start_workflow(
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
            memo={REQUEST_MEMO: digests},
        )
    except WorkflowAlreadyStartedError:
        # This commit was scanned to the end with these scanners: that scan is the answer
        # (if it was asked for with the same request).
        existing = handle(client, scan_id)
        await _check_same_request(existing, digests)
        return existing
    if not _created(started):  # joined the running scan: the same request?
        await _check_same_request(started, digests)
    return started


def request_digests(request: ScanRequest) -> dict[str, str]:
    """A digest of each field of ``request`` that its scan id does not cover (secrets
    are references, and only digests are kept: a webhook URL's token stays out of the
    memo). Defaults are left out of the digest, so a field added later with a default
    does not make an older scan's request look different."""
    values = request.model_dump(mode="json", exclude_defaults=True)
    digests = {}
    for name in sorted(set(type(request).model_fields) - REQUEST_IDENTITY):
        text = json.dumps([name, values.get(name)], sort_keys=True, separators=(",", ":"))
        digests[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return digests


def _created(started: WorkflowHandle[Any, ScanSummary]) -> bool:
    """Whether the start created the run (not: joined the running one). The SDK keeps
    the server's answer on the handle only; without it, treat the run as joined (one
    more describe, which finds the same request)."""
    response = getattr(started, "_start_workflow_response", None)
    return bool(getattr(response, "started", False))


async def _check_same_request(existing: WorkflowHandle[Any, ScanSummary],
                              digests: dict[str, str]) -> None:
    """Raise :class:`RequestConflict` naming the fields in which the request the scan
    was started with differs from ``digests`` (a scan started without the memo, by an
    older client or another sender, is joined as it always was)."""
    desc = await existing.describe()
    recorded = await desc.memo_value(REQUEST_MEMO, None)
    if not isinstance(recorded, dict):
        return
    differ = sorted(name for name, digest in digests.items()
                    if name in recorded and recorded[name] != digest)
    if not differ:
        return
    state = _state(existing.id, desc)
    where = "is running" if state.running else f"ended {state.closed_as}"
    raise RequestConflict(
        f"scan {existing.id} {where} with a different request: {', '.join(differ)} "
        f"{'differs' if len(differ) == 1 else 'differ'} (it was not changed); pass a new "
        "dedupe_key (scanward scan --key) to scan with this request")


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
    task_queue: str | None = None  # where its workflow tasks go (a worker must poll it)
    # What running scanner attempts wait for, as their last heartbeat said ("k-x attempt
    # 1 waiting 40s: not scheduled: 0/3 nodes are available: 3 Insufficient memory").
    waiting: tuple[str, ...] = ()

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

    @property
    def status(self) -> str:
        """What the scan is now: ``running`` or ``dead`` while its workflow runs, else
        how it ended (``terminated`` for a workflow closed without a final ScanStatus)."""
        if self.running:
            return self.scan_status.value if self.scan_status else "running"
        return self.closed_as


async def waiting(client: Client, desc: WorkflowExecutionDescription) -> tuple[str, ...]:
    """The scanner attempts' last heartbeat details that say what they wait for."""
    said: list[str] = []
    for pending in desc.raw_description.pending_activities:
        payloads = pending.heartbeat_details.payloads
        if pending.activity_type.name != "run_scanner" or not payloads:
            continue
        try:
            details = await client.data_converter.decode(payloads)
        except Exception as e:  # a detail it cannot read only goes unsaid
            log.debug("heartbeat details of %s unreadable: %s", pending.activity_id, e)
            continue
        said.extend(d for d in details[:1] if isinstance(d, str) and d)
    return tuple(said)


def _state(scan_id: str, desc: WorkflowExecutionDescription,
           failure: str | None = None) -> ScanState:
    raw = desc.typed_search_attributes.get(sa.SCAN_STATUS)
    try:
        scan_status = ScanStatus(raw) if raw else None
    except ValueError:
        scan_status = None
    dead = desc.typed_search_attributes.get(sa.SCAN_DEAD_SCANNERS) or []
    return ScanState(scan_id, desc.status, scan_status, tuple(dead), failure,
                     desc.task_queue or None)


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
    state = _state(scan_id, desc, failure)
    if state.running:
        state = dataclasses.replace(state, waiting=await waiting(client, desc))
    return state


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
        if state.running and e.status in (RPCStatusCode.DEADLINE_EXCEEDED,
                                          RPCStatusCode.CANCELLED, RPCStatusCode.UNKNOWN):
            # The query waited for a worker that never took it.
            return ScanReport(state, None, (
                f"no worker answered within {query_timeout.total_seconds():g}s on task "
                f"queue {state.task_queue!r}: start a worker for that queue (or cluster)"
                f" ({e.message})"))
        return ScanReport(state, None, e.message)
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as e:
        return ScanReport(state, None, str(e))


# ----------------------------------------------------------------------- operators


async def retry(client: Client, scan_id: str, signal: RetrySignal | None = None, *,
                within: timedelta = UPDATE_TIMEOUT) -> list[str]:
    """Retry dead scanners through the validating ``retry`` update; returns the scanners
    retried. Raises :class:`Rejected` with the workflow's reason (unknown scanner, not
    dead, nothing dead, resources above the cap), :class:`ScanNotFound`,
    :class:`ScanNotRunning`, or :class:`NoWorker` when no worker ran the update
    ``within`` that time (none serves the scan's task queue)."""
    return await _verdict(client, scan_id, "retry", signal or RetrySignal(), within)


async def abandon(client: Client, scan_id: str, signal: AbandonSignal | None = None, *,
                  within: timedelta = UPDATE_TIMEOUT) -> list[str]:
    """Abandon dead scanners through the validating ``abandon`` update; returns the
    scanners abandoned. Raises like :func:`retry`, and :class:`InputError` for a blank
    reason (the scan would show it as its scanners' reason)."""
    signal = signal or AbandonSignal()
    if not signal.reason.strip():
        raise InputError("an abandon needs a reason: it is what the scan shows")
    return await _verdict(client, scan_id, "abandon", signal, within)


async def _verdict(client: Client, scan_id: str, update: str,
                   verdict: RetrySignal | AbandonSignal,
                   within: timedelta = UPDATE_TIMEOUT) -> list[str]:
    try:
        # The RPC deadline, and a bound on the whole call: the SDK asks again while the
        # server answers that the update is only admitted (no worker has taken it).
        async with asyncio.timeout(within.total_seconds() + 1):
            applied: list[str] = await handle(client, scan_id).execute_update(
                update, verdict, result_type=list[str], rpc_timeout=within)
    except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError) as e:
        raise await _no_worker(client, scan_id, update, within) from e
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        reason = getattr(cause, "message", None) or str(cause)
        raise Rejected(f"{update} rejected by {scan_id}: {reason}") from e
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:
            raise await _not_running(client, scan_id) from e
        if e.status is RPCStatusCode.DEADLINE_EXCEEDED:
            raise await _no_worker(client, scan_id, update, within) from e
        raise
    return applied


async def _no_worker(client: Client, scan_id: str, update: str,
                     within: timedelta) -> Exception:
    """The error for an update no worker ran ``within`` its time, naming the scan's task
    queue (where a worker is missing)."""
    try:
        desc = await handle(client, scan_id).describe()
    except RPCError as e:
        return NoWorker(f"{update} of {scan_id}: no worker answered within "
                        f"{within.total_seconds():g}s ({e.message})")
    if desc.status is not WorkflowExecutionStatus.RUNNING:  # it ended meanwhile
        return await _not_running(client, scan_id)
    return NoWorker(f"{update} of {scan_id}: no worker answered within "
                    f"{within.total_seconds():g}s on its task queue {desc.task_queue!r}; "
                    "start a worker for that queue (or cluster) and try again (the "
                    f"{update} may still apply when one starts)")


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


def check_tenant(tenant: str) -> str:
    """``tenant`` if ScanRequest would accept it; :class:`InputError` otherwise."""
    if not TENANT_RE.match(tenant):
        raise InputError(f"invalid tenant {tenant!r}: expected {TENANT_RE.pattern} (as in "
                         "a scan request)")
    return tenant


def _literal(value: str) -> str:
    """``value`` as a visibility-query string. Values are checked before they get here
    (tenant, scanner name); this refuses anything that could end the string anyway."""
    if not re.fullmatch(r"[A-Za-z0-9_.:/-]*", value):
        raise InputError(f"{value!r} cannot be used in a visibility query")
    return f'"{value}"'


# Scan states only a running workflow can be in: a workflow terminated (or timed out)
# keeps the last ScanStatus it set, "running" or "dead", for ever.
_LIVE_STATES = (ScanStatus.RUNNING, ScanStatus.DEAD)


def status_query(status: ScanStatus | None = None, tenant: str | None = None, *,
                 dead_scanner: str | None = None) -> str:
    """A visibility query for scans, e.g. ``ScanStatus = "dead"`` (and, for the states
    only a running workflow is in, ``ExecutionStatus = "Running"``). ``tenant`` and
    ``dead_scanner`` are checked like a request's: :class:`InputError` otherwise."""
    clauses = [f"WorkflowType = {_literal(WORKFLOW)}"]
    if status is not None:
        clauses.append(f"{sa.SCAN_STATUS.name} = {_literal(status.value)}")
        if status in _LIVE_STATES:
            clauses.append('ExecutionStatus = "Running"')
    if tenant is not None:
        clauses.append(f"{sa.SCAN_TENANT.name} = {_literal(check_tenant(tenant))}")
    if dead_scanner is not None:  # a keyword list: "=" matches one of its values
        clauses.append(f"{sa.SCAN_DEAD_SCANNERS.name} = "
                       f"{_literal(check_scanner_name(dead_scanner))}")
    return " AND ".join(clauses)


# A closed run of these statuses can be followed by another run of the same scan (the
# start's reuse policy allows a new run after one that did not complete).
_RESTARTABLE = (WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.CANCELED,
                WorkflowExecutionStatus.TERMINATED, WorkflowExecutionStatus.TIMED_OUT)


async def list_scans(
    client: Client, status: ScanStatus | None = None, tenant: str | None = None,
    limit: int = 100,
) -> AsyncIterator[tuple[str, ScanStatus | None, WorkflowExecutionStatus | None]]:
    """Scans matching the search attributes, newest first: each scan once, as its latest
    run is (visibility lists runs: a scan started again after a run that did not
    complete has several, and only the latest says what the scan is)."""
    if limit < 1:
        raise InputError(f"limit {limit}: list at least 1 scan")
    seen: set[str] = set()
    # Pages about as long as the list: a few more runs than scans when some repeat.
    async for wf in client.list_workflows(status_query(status, tenant),
                                          page_size=min(limit + 10, 1000)):
        if wf.id in seen:
            continue
        if wf.status in _RESTARTABLE and not await _latest_run(client, wf.id, wf.run_id):
            continue  # the newer run is listed in its own place, if it matches
        seen.add(wf.id)
        raw = wf.typed_search_attributes.get(sa.SCAN_STATUS)
        try:
            scan_status = ScanStatus(raw) if raw else None
        except ValueError:
            scan_status = None
        yield wf.id, scan_status, wf.status
        if len(seen) >= limit:
            return


async def _latest_run(client: Client, scan_id: str, run_id: str) -> bool:
    """Whether ``run_id`` is the scan's latest run."""
    try:
        desc = await handle(client, scan_id).describe()
    except RPCError as e:
        if e.status is RPCStatusCode.NOT_FOUND:  # gone (retention) since it was listed
            return False
        raise
    return desc.run_id == run_id


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
    """Send the ``retry`` signal to every dead scan (of ``tenant``, if given; with
    ``signal.scanner``, only to the scans in which that scanner is dead) in one batch (a
    batch cannot run updates); returns the batch job id. Only running workflows are
    signalled: a terminated one keeps its "dead" ScanStatus."""
    signal = signal or RetrySignal()
    query = status_query(ScanStatus.DEAD, tenant, dead_scanner=signal.scanner)
    return await signal_matching(client, query, "retry", signal,
                                 "scanward retry --all-dead")

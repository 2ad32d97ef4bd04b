"""The typed Python API services use to start and steer scans through Temporal."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from temporalio.api.batch.v1 import BatchOperationSignal
from temporalio.api.common.v1 import Payloads
from temporalio.api.workflowservice.v1 import StartBatchOperationRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import Runtime

from scanward import search_attributes as sa
from scanward import tracing
from scanward.catalog import Catalog
from scanward.contract import AbandonSignal, RetrySignal, ScanRequest, ScanStatus, ScanSummary
from scanward.settings import DEFAULT_TASK_QUEUE, task_queue_for

WORKFLOW = "ScanWorkflow"


class TemporalUnavailable(RuntimeError):
    """Temporal could not be reached at the configured address."""


class ScanAlreadyFinished(Exception):
    """The same request was already scanned to completion; pass a new ``dedupe_key``."""


async def connect(profile: str | None = None, *, runtime: Runtime | None = None) -> Client:
    """Connect with Temporal's own conventions (``TEMPORAL_ADDRESS``,
    ``TEMPORAL_NAMESPACE``, ``TEMPORAL_PROFILE``, config file) and the pydantic converter."""
    config = ClientConfigProfile.load(profile=profile).to_client_connect_config()
    target = config.setdefault("target_host", "localhost:7233")
    try:
        return await Client.connect(**config, data_converter=pydantic_data_converter,
                                    runtime=runtime, interceptors=tracing.interceptors())
    except RuntimeError as e:
        why = re.search(r'message: "([^"]+)"', str(e))
        reason = why.group(1) if why else str(e).splitlines()[0]
        raise TemporalUnavailable(f"cannot reach Temporal at {target}: {reason} "
                                  "(set TEMPORAL_ADDRESS or a profile)") from e


async def start_scan(
    client: Client,
    request: ScanRequest,
    *,
    task_queue: str = DEFAULT_TASK_QUEUE,
    catalog: Catalog | None = None,
) -> WorkflowHandle[Any, ScanSummary]:
    """Start (or join, if the same request is running) the ScanWorkflow.

    The workflow id is derived from the request, so a duplicate start never scans twice:
    a running scan is joined; a finished one raises :class:`ScanAlreadyFinished`.
    Unknown scanners raise :class:`scanward.catalog.UnknownScanner` before anything starts.
    """
    (catalog or Catalog.load()).check(request.scanners)
    scan_id = request.scan_id()
    queue = task_queue_for(request.cluster, task_queue)
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
        )
    except WorkflowAlreadyStartedError as e:
        raise ScanAlreadyFinished(
            f"scan {scan_id} already finished for this request; pass a new dedupe key to "
            "scan again"
        ) from e


def handle(client: Client, scan_id: str) -> WorkflowHandle[Any, ScanSummary]:
    return client.get_workflow_handle(scan_id, result_type=ScanSummary)


async def progress(client: Client, scan_id: str) -> ScanSummary:
    """Live progress of a scan (works on finished scans too)."""
    summary: ScanSummary = await handle(client, scan_id).query("progress",
                                                               result_type=ScanSummary)
    return summary


async def retry(client: Client, scan_id: str, signal: RetrySignal | None = None) -> None:
    await handle(client, scan_id).signal("retry", signal or RetrySignal())


async def abandon(client: Client, scan_id: str, signal: AbandonSignal | None = None) -> None:
    await handle(client, scan_id).signal("abandon", signal or AbandonSignal())


async def cancel(client: Client, scan_id: str) -> None:
    await handle(client, scan_id).cancel()


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
    """Send ``retry`` to every dead scan in one batch; returns the batch job id."""
    return await signal_matching(client, status_query(ScanStatus.DEAD, tenant), "retry",
                                 signal or RetrySignal(), "scanward retry --all-dead")

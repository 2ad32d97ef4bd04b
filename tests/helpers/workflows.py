"""A scan as an operator sees it from outside: Temporal's own CLI, the ScanStatus search
attribute, the Web UI's current details, and the failure a workflow ended with."""

from __future__ import annotations

import subprocess

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.testing import WorkflowEnvironment

from scanward import search_attributes as sa
from scanward.devserver import temporal_binary
from tests.conftest import eventually


def temporal_cli(env: WorkflowEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    """Temporal's own CLI against the test server, as an operator would use it."""
    return subprocess.run(
        [temporal_binary(), *args, "--address", env.client.service_client.config.target_host,
         "--namespace", env.client.namespace],
        capture_output=True, text=True, timeout=60, check=False)


async def scan_status_attribute(client: Client, scan_id: str) -> str | None:
    desc = await client.get_workflow_handle(scan_id).describe()
    return desc.typed_search_attributes.get(sa.SCAN_STATUS)


async def ends_failed(client: Client, scan_id: str) -> str:
    """The workflow's failure message, once it has failed."""
    handle = client.get_workflow_handle(scan_id)

    async def failed() -> bool:
        return (await handle.describe()).status is WorkflowExecutionStatus.FAILED

    await eventually(failed, timeout=15, what=f"{scan_id} to fail")
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    return str(failure.value.cause)


async def current_details(handle: WorkflowHandle[object, object]) -> str:
    """The workflow's current details, read the way the Web UI reads them."""
    meta: WorkflowMetadata = await handle.query("__temporal_workflow_metadata",
                                                result_type=WorkflowMetadata)
    return meta.current_details

"""What the Temporal Web UI shows of a scan without a query: the static summary set at
start, the current details the workflow keeps (a markdown table with the dead reason),
and a summary on every activity, read back from the real server the way the UI reads
them (describe, the __temporal_workflow_metadata query, the history's user metadata)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from scanward import client as api
from scanward.contract import ScannerStatus, ScanStatus
from scanward.settings import Settings
from tests.conftest import eventually, scan_request, start
from tests.helpers.workflows import current_details

pytestmark = pytest.mark.usefixtures("scan_worker_task")


async def activity_summaries(handle: WorkflowHandle[object, object]) -> list[str]:
    converter = pydantic_data_converter.payload_converter
    return [converter.from_payload(e.user_metadata.summary, str)
            for e in (await handle.fetch_history()).events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.user_metadata.HasField("summary")]


async def test_the_scan_page_tells_the_story(client: Client, settings: Settings,
                                             flawed_repo: Path) -> None:
    handle = await start(client, settings, scan_request(flawed_repo, "flaky", "fake"))
    desc = await handle.describe()
    summary = await desc.static_summary()
    assert summary is not None and summary.startswith(f"{flawed_repo.as_uri()}@main (")
    assert "fake, flaky" in summary and "tenant default" in summary

    async def flaky_dead() -> bool:
        runs = {r.scanner: r for r in (await api.progress(client, handle.id)).scanners}
        return runs["flaky"].status is ScannerStatus.DEAD

    await eventually(flaky_dead, what="flaky dead")
    table = await current_details(handle)
    assert table.startswith("**dead** at `"), table
    assert "| scanner | status | attempts | memory | findings | reason |" in table
    assert "| flaky | dead | 2 |" in table and "crashed after 2 attempt(s)" in table, table
    assert "| fake | succeeded | 1 |" in table
    assert f"scanward retry {handle.id}" in table

    names = await activity_summaries(handle)
    assert names[0].startswith("clone main at ")
    assert any(n.startswith("flaky attempt 2 · ") and n.endswith("retry after crashed")
               for n in names), names
    assert "persist fake attempt 1" in names

    await api.abandon(client, handle.id)
    assert (await handle.result()).status is ScanStatus.PARTIAL
    assert (await current_details(handle)).startswith("**partial**")

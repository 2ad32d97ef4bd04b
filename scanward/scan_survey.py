"""Scans by status from Temporal's visibility, for the worker's ``/metrics``.

Every interval the worker counts the running scans of its task queue by ``ScanStatus``
(running, dead), those that ended in the last hour by final status, and how long the
longest-dead scan has been dead. That age is exact: the time of the history event that
last set ``ScanStatus`` to ``dead``, read once per dead run (a waiting scan's history
does not change, so the answer is cached until its history grows). Every worker of a
task queue reports the same figures: aggregate them with ``max by (task_queue)``, never
``sum``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecution
from temporalio.converter import decode_search_attributes

from scanward import metrics
from scanward import search_attributes as sa
from scanward.contract import ScanStatus

log = logging.getLogger("scanward.scan_survey")
# Failed rounds after which the last figures are dropped rather than shown as current.
STALE_SURVEYS = 3
SURVEY_TIMEOUT = 10.0  # seconds a survey may take, at the least

SCANS = 'WorkflowType = "ScanWorkflow"'
CLOSED_STATUSES = (ScanStatus.COMPLETED, ScanStatus.PARTIAL, ScanStatus.FAILED,
                   ScanStatus.CANCELLED)


def dead_since(changes: Iterable[tuple[datetime, str]]) -> datetime | None:
    """When the scan last became dead, from the ``ScanStatus`` values its history set
    (in order); None when the last value is not ``dead``. Setting ``dead`` again while
    dead (another scanner died) does not restart the clock."""
    since: datetime | None = None
    current: str | None = None
    for at, status in changes:
        if status == ScanStatus.DEAD.value:
            if current != status:
                since = at
        else:
            since = None
        current = status
    return since if current == ScanStatus.DEAD.value else None


def status_changes(events: Iterable[HistoryEvent]) -> Iterable[tuple[datetime, str]]:
    """(event time, ScanStatus) for the history events that set ``ScanStatus``."""
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            attrs = event.workflow_execution_started_event_attributes.search_attributes
        elif event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            attrs = event.upsert_workflow_search_attributes_event_attributes.search_attributes
        else:
            continue
        values = decode_search_attributes(attrs).get(sa.SCAN_STATUS.name)
        if values:
            yield event.event_time.ToDatetime(tzinfo=UTC), str(values[0])


class ScanSurveyor:
    """Surveys scans into :data:`scanward.metrics.SCANS`."""

    def __init__(self, client: Client, task_queue: str,
                 gauges: metrics.ScanGauges = metrics.SCANS) -> None:
        self._client = client
        self._queue = task_queue
        self._gauges = gauges
        self._dead_since: dict[tuple[str, str, int], datetime | None] = {}

    async def _count(self, query: str) -> int:
        return (await self._client.count_workflows(query)).count

    async def _since(self, wf: WorkflowExecution) -> datetime | None:
        key = (wf.id, wf.run_id, wf.history_length)
        if key not in self._dead_since:
            handle = self._client.get_workflow_handle(wf.id, run_id=wf.run_id)
            events = [e async for e in handle.fetch_history_events()]
            self._dead_since[key] = dead_since(status_changes(events))
        return self._dead_since[key]

    async def survey(self) -> metrics.ScanCounts:
        now = datetime.now(UTC)
        scans = f'{SCANS} AND TaskQueue = "{self._queue}"'
        running = f'{scans} AND ExecutionStatus = "Running"'
        dead = [wf async for wf in self._client.list_workflows(
            f'{running} AND {sa.SCAN_STATUS.name} = "{ScanStatus.DEAD.value}"')]
        since = {(wf.id, wf.run_id, wf.history_length): await self._since(wf) for wf in dead}
        # Only the runs that are still dead stay cached.
        self._dead_since = {k: v for k, v in self._dead_since.items() if k in since}
        ages = [(now - s).total_seconds() for s in since.values() if s is not None]
        alive = await self._count(
            f'{running} AND {sa.SCAN_STATUS.name} = "{ScanStatus.RUNNING.value}"')
        hour_ago = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        closed = {s.value: await self._count(
            f'{scans} AND ExecutionStatus != "Running" AND CloseTime > "{hour_ago}" '
            f'AND {sa.SCAN_STATUS.name} = "{s.value}"') for s in CLOSED_STATUSES}
        counts = metrics.ScanCounts(
            open={ScanStatus.RUNNING.value: alive, ScanStatus.DEAD.value: len(dead)},
            closed_last_hour=closed, oldest_dead_seconds=max(ages, default=0.0))
        self._gauges.set(self._queue, counts)
        return counts

    async def run(self, every: float) -> None:
        """Survey every ``every`` seconds until cancelled. A failed survey is logged and
        the previous figures kept for :data:`STALE_SURVEYS` rounds, then dropped: during
        a Temporal outage the dashboard showed the last "running" and "dead" counts as if
        current (the worker's unreadiness alerts on its own)."""
        last_success = time.monotonic()
        while True:
            try:
                # Bounded: against an unreachable server the client retries for ever,
                # and a survey that never ends never fails either.
                await asyncio.wait_for(self.survey(), max(2 * every, SURVEY_TIMEOUT))
                last_success = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next round tries again
                log.warning("surveying scans failed: %s", e)
                if time.monotonic() - last_success > STALE_SURVEYS * every:
                    self._gauges.forget(self._queue)
            await asyncio.sleep(every)

"""Reading a scan's recorded history in tests: what it scheduled, which patches it
carries, and whether today's ScanWorkflow replays it."""

from __future__ import annotations

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import ActivityTaskScheduledEventAttributes
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.scan import ScanWorkflow


def scheduled_by_type(history: WorkflowHistory) -> dict[str, ActivityTaskScheduledEventAttributes]:
    """Each scheduled activity's attributes, by activity type (the last of each)."""
    return {e.activity_task_scheduled_event_attributes.activity_type.name:
            e.activity_task_scheduled_event_attributes for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED}


def patch_markers(history: WorkflowHistory) -> str:
    """The details of every marker recorded (patch ids among them), as one string."""
    return " ".join(str(e.marker_recorded_event_attributes.details) for e in history.events
                    if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED)


async def replays_today(history: WorkflowHistory) -> bool:
    """True when today's ScanWorkflow replays ``history`` without a failure."""
    replayer = Replayer(workflows=[ScanWorkflow], data_converter=pydantic_data_converter)
    return (await replayer.replay_workflow(history)).replay_failure is None

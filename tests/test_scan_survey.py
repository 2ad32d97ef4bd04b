"""Scans by status for /metrics (scanward/scan_survey.py): the dead-since rule on its
own, then a real survey of a real dead scan on the dev server, through a retry that
dies again (the clock restarts) and a retry that succeeds (nothing dead, one closed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scanward import client as api
from scanward import search_attributes as sa
from scanward.devserver import temporal_binary
from scanward.metrics import ScanGauges
from scanward.scan_survey import STALE_SURVEYS, SURVEY_TIMEOUT, ScanSurveyor, dead_since
from scanward.settings import Settings
from tests.conftest import eventually, scan_request, start

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.mark.parametrize(("changes", "expected"), [
    ([], None),
    ([(at(0), "running")], None),
    ([(at(0), "running"), (at(5), "dead")], at(5)),
    # a second scanner dies while the scan is dead: still dead since the first
    ([(at(0), "running"), (at(5), "dead"), (at(9), "dead")], at(5)),
    # retried (running again), died again: the clock restarts
    ([(at(0), "running"), (at(5), "dead"), (at(60), "running"), (at(61), "dead")], at(61)),
    ([(at(0), "running"), (at(5), "dead"), (at(60), "running")], None),
    ([(at(0), "dead"), (at(1), "completed")], None),
])
def test_dead_since(changes: list[tuple[datetime, str]], expected: datetime | None) -> None:
    assert dead_since(changes) == expected


@pytest.mark.usefixtures("scan_worker_task")
async def test_survey_of_a_real_dead_scan(client: Client, settings: Settings,
                                          flawed_repo: Path, state_dir: Path) -> None:
    gauges = ScanGauges()
    surveyor = ScanSurveyor(client, settings.task_queue, gauges)
    assert list(gauges.collect()) == []  # nothing before the first survey
    started = time.monotonic()
    handle = await start(client, settings, scan_request(flawed_repo, "flaky"))

    async def dead_survey() -> bool:
        counts = await surveyor.survey()
        return counts.open["dead"] == 1

    await eventually(dead_survey, what="the survey to see the dead scan")
    first = await surveyor.survey()
    assert first.open == {"running": 0, "dead": 1}
    assert 0 < first.oldest_dead_seconds <= time.monotonic() - started + 1
    await asyncio.sleep(2)
    # Still dead: the age grows with the clock (from the cached history answer).
    later = await surveyor.survey()
    assert later.oldest_dead_seconds >= first.oldest_dead_seconds + 2

    # Retried, it crashes again: dead again, since just now.
    retried_at = time.monotonic()
    await api.retry(client, handle.id)

    async def dead_again() -> bool:
        counts = await surveyor.survey()
        return counts.open["dead"] == 1 and counts.oldest_dead_seconds < later.oldest_dead_seconds

    await eventually(dead_again, what="the scan dead again, with a new age")
    again = await surveyor.survey()
    assert again.oldest_dead_seconds <= time.monotonic() - retried_at + 1

    # Fixed and retried: completed; nothing dead, one completed in the last hour.
    (state_dir / "fixed").touch()
    await api.retry(client, handle.id)
    await handle.result()

    async def closed() -> bool:
        counts = await surveyor.survey()
        return counts.closed_last_hour.get("completed") == 1

    await eventually(closed, what="the survey to count the completed scan")
    done = await surveyor.survey()
    assert done.open == {"running": 0, "dead": 0} and done.oldest_dead_seconds == 0
    assert done.closed_last_hour == {"completed": 1, "partial": 0, "failed": 0,
                                     "cancelled": 0}
    exported = {(m.name, tuple(sorted(s.labels.items()))): s.value
                for m in gauges.collect() for s in m.samples}
    queue = ("task_queue", settings.task_queue)
    assert exported[("scanward_scans", (("status", "dead"), queue))] == 0
    assert exported[("scanward_scans_closed_1h", (("status", "completed"), queue))] == 1
    assert exported[("scanward_dead_scans_oldest_seconds", (queue,))] == 0


async def test_figures_are_dropped_when_surveys_fail_for_too_long() -> None:
    """During a Temporal outage the gauges kept the last survey's "running" and "dead"
    counts for as long as it lasted, as if current. Now they go after STALE_SURVEYS
    failed rounds; when they were last surveyed stays exported. A dev server of its
    own, stopped halfway (the shared one serves the other tests)."""
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_binary(),
                                                search_attributes=sa.ALL, ui=False,
                                                dev_server_log_level="error")
    gauges = ScanGauges()
    surveyor = ScanSurveyor(env.client, "survey-outage", gauges)
    every = 0.2
    task = asyncio.create_task(surveyor.run(every))
    try:
        def names() -> set[str]:
            return {family.name for family in gauges.collect()}

        async def surveyed() -> bool:
            return "scanward_scans" in names()

        await eventually(surveyed, what="a first survey")
        await env.shutdown()
        stopped = time.monotonic()

        async def dropped() -> bool:
            return names() == {"scanward_scans_surveyed_timestamp_seconds"}

        await eventually(dropped, timeout=60, what="the figures dropped")
        # The first survey against the stopped server hangs until its timeout.
        assert time.monotonic() - stopped < SURVEY_TIMEOUT + every * (STALE_SURVEYS + 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await env.shutdown()

"""Production workers run ScanWorkflow without Temporal's sandbox (its per-scan cost,
bench/README.md); its determinism checks run where they catch mistakes before a deploy:
test workers and `scanward replay`. Here: the worker runs workflows as the settings
say, and a scan run unsandboxed replays under the sandbox."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import worker as scan_worker
from scanward.contract import ScanStatus
from scanward.settings import Settings
from scanward.store import Store
from tests.conftest import scan_request, start
from workflows.scan import ScanWorkflow


def test_sandbox_is_off_unless_asked() -> None:
    assert Settings.from_env({}).workflow_sandbox is False
    assert Settings.from_env({"SCANWARD_WORKFLOW_SANDBOX": "on"}).workflow_sandbox is True


@pytest.mark.parametrize("sandbox", [True, False])
async def test_the_worker_runs_workflows_as_the_settings_say(client: Client,
                                                             settings: Settings,
                                                             sandbox: bool) -> None:
    chosen = dataclasses.replace(settings, workflow_sandbox=sandbox)
    store = Store.open(chosen.database_url)
    try:
        with ThreadPoolExecutor(chosen.max_concurrent_activities) as executor:
            built, _ = scan_worker.build_worker(client, chosen, store, executor,
                                             scan_worker.make_backend(chosen))
            runner = built.config()["workflow_runner"]
    finally:
        store.close()
    expected = SandboxedWorkflowRunner if sandbox else UnsandboxedWorkflowRunner
    assert type(runner) is expected


async def test_an_unsandboxed_scan_replays_in_the_sandbox(client: Client, settings: Settings,
                                                          flawed_repo: Path) -> None:
    production = dataclasses.replace(settings, workflow_sandbox=False)
    async with scan_worker.running(production, client, stop_timeout=30):
        handle = await start(client, production, scan_request(flawed_repo, "fake"))
        assert (await handle.result()).status is ScanStatus.COMPLETED
    history = await handle.fetch_history()
    replayer = Replayer(workflows=[ScanWorkflow], data_converter=pydantic_data_converter,
                        workflow_runner=SandboxedWorkflowRunner())
    await replayer.replay_workflow(history)  # raises on nondeterminism

"""Record ScanWorkflow histories into tests/histories/ for the replay test.

    .venv/bin/python tools/record_history.py

Runs real scans on a throwaway dev server with an in-process local worker: a completed
bandit scan, and a scan whose scanner dies, is retried by signal and completes. Re-record
only on purpose: the point of the files is that today's workflow code must replay the
histories that older code wrote.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import worker as scan_worker  # noqa: E402
from scanward import client as api  # noqa: E402
from scanward import search_attributes as sa  # noqa: E402
from scanward.contract import RetrySignal, RetryTuning, ScannerStatus, ScanRequest  # noqa: E402
from scanward.devserver import temporal_binary  # noqa: E402
from scanward.example import create_example_repo  # noqa: E402
from scanward.settings import Settings  # noqa: E402

FLAKY = """import json, pathlib, sys
state = pathlib.Path(sys.argv[3])
if not (state / "fixed").exists():
    sys.exit(3)
pathlib.Path(sys.argv[2]).write_text(json.dumps({"version": "2.1.0", "runs": [
    {"tool": {"driver": {"name": "flaky"}}, "results": []}]}))
"""
TUNING = RetryTuning(initial_interval=timedelta(milliseconds=200),
                     maximum_interval=timedelta(seconds=1), scanner_attempts=2,
                     heartbeat_timeout=timedelta(seconds=5))


async def main() -> None:
    out_dir = ROOT / "tests" / "histories"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="scanward-record-"))
    (tmp / "flaky.py").write_text(FLAKY)
    (tmp / "state").mkdir()
    catalog = tmp / "catalog.json"
    catalog.write_text(json.dumps({"scanners": [{
        "name": "flaky", "image": "example.invalid/flaky:1", "command": ["flaky"],
        "local_command": ["{python}", str(tmp / "flaky.py"), "{source}", "{sarif}",
                          str(tmp / "state")]}]}))
    settings = dataclasses.replace(
        Settings.from_env({"SCANWARD_HOME": str(tmp / "home")}),
        allow_local_repositories=True, catalog_file=catalog, task_queue="record")
    repo = create_example_repo(tmp / "flawed-app")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), search_attributes=sa.ALL,
        data_converter=pydantic_data_converter)
    stop = asyncio.Event()
    task = asyncio.create_task(scan_worker.run(settings, stop, env.client))
    try:
        done = await api.start_scan(env.client, ScanRequest(
            repository=repo.as_uri(), ref="main", scanners=("bandit",), tuning=TUNING),
            task_queue="record")
        await done.result()
        retried = await api.start_scan(env.client, ScanRequest(
            repository=repo.as_uri(), ref="main", scanners=("bandit", "flaky"), tuning=TUNING),
            task_queue="record")
        while not any(r.status is ScannerStatus.DEAD  # noqa: ASYNC110 - polls a query
                      for r in (await api.progress(env.client, retried.id)).scanners):
            await asyncio.sleep(0.2)
        (tmp / "state" / "fixed").touch()
        await api.retry(env.client, retried.id, RetrySignal())
        await retried.result()
        for name, handle in (("scan_completed", done), ("scan_dead_retried", retried)):
            history = await handle.fetch_history()
            (out_dir / f"{name}.json").write_text(history.to_json())
            print(f"wrote {out_dir / name}.json ({len(history.events)} events)")
    finally:
        stop.set()
        await task
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())

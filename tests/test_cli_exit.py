"""The CLI never aborts at exit.

The Temporal core's Rust threads hand RPC results back to Python by taking the GIL; a
thread still doing so when the interpreter finalizes was killed inside Rust and the
process aborted with ``Fatal Python error: PyGILState_Release`` (exit 134) in a few
percent of runs. ``scanward.client.run`` now shuts the runtime down (joins its threads)
before the interpreter exits.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scanward.settings import Settings
from tests.conftest import scan_request, start
from tests.helpers.processes import cli_env, scanward

RUNS = 100
CONCURRENCY = 4  # 2 cores: keeps the 100 runs well under a minute


# Run in a fresh interpreter: this test process has other Temporal runtimes (the
# session's client, in-process workers) whose Tokio pools grow threads on demand, which
# would be counted as the session runtime's under load.
_CHECK = """
import os, sys
from pathlib import Path
from scanward import client as api

def tokio():
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            if Path(f"/proc/self/task/{tid}/comm").read_text().startswith("tokio-"):
                found.add(tid)
        except FileNotFoundError:
            pass
    return found

async def listing():
    client = await api.connect()
    _ = [s async for s in api.list_scans(client, limit=5)]
    return tokio()

async def failing():
    client = await api.connect()
    await api.describe(client, "scan-default-00000000000000000000")

during = api.run(listing())
print("during", len(during), "after", len(tokio()))
try:
    api.run(failing())
except api.ScanNotFound:
    print("raised", "after", len(tokio()))
"""


def test_run_joins_the_runtimes_threads(temporal_env: WorkflowEnvironment) -> None:
    """The root cause, checked directly: after ``api.run`` the runtime it created has no
    thread left, whether the command returned or raised."""
    env = {**os.environ,
           "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    during, after = int(lines[0].split()[1]), int(lines[0].split()[3])
    assert during > 0, "the session's runtime started no thread?"
    assert after == 0, done.stdout
    assert lines[1] == "raised after 0", done.stdout


@pytest.mark.usefixtures("scan_worker_task")
async def test_100_cli_runs_exit_cleanly(temporal_env: WorkflowEnvironment, client: Client,
                                         settings: Settings, flawed_repo: Path) -> None:
    handle = await start(client, settings, scan_request(flawed_repo, "fake"))
    await handle.result()
    env = cli_env(temporal_env, settings)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(args: tuple[str, ...]) -> tuple[tuple[str, ...], int, str, str]:
        async with gate:
            code, out, err = await scanward(*args, env=env, timeout=60)
        return args, code, out, err

    commands = [("list", "--limit", "5"), ("status", handle.id)] * (RUNS // 2)
    results = await asyncio.gather(*(one(args) for args in commands))
    bad = [(args, code, err[:300]) for args, code, _, err in results
           if code != 0 or "Fatal Python error" in err]
    assert not bad, f"{len(bad)} of {RUNS} runs failed: {bad[:3]}"
    assert all(handle.id in out for args, _, out, _ in results if args[0] == "status")

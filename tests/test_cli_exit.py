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
import os, sys, time
from pathlib import Path
from scanward import client as api

def tokio():
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            task = Path(f"/proc/self/task/{tid}")
            if (task / "comm").read_text().startswith("tokio-"):
                found[tid] = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found

def left():
    # The threads still there, or not yet parked, 2 s after the session (most are gone
    # at once; one exiting may show R for a moment).
    deadline = time.monotonic() + 2
    while ((len(threads := tokio()) > 1 or set(threads.values()) - {"S"})
           and time.monotonic() < deadline):
        time.sleep(0.01)
    return len(threads), "".join(sorted(threads.values())) or "-"

async def listing():
    client = await api.connect()
    _ = [s async for s in api.list_scans(client, limit=5)]
    return len(tokio())

async def failing():
    client = await api.connect()
    await api.describe(client, "scan-default-00000000000000000000")

during = api.run(listing())
print("during", during, "left %d %s" % left())
try:
    api.run(failing())
except api.ScanNotFound:
    pass
print("raised", "left %d %s" % left())
"""


def test_run_releases_the_runtime_and_its_threads_stop(temporal_env: WorkflowEnvironment
                                                        ) -> None:
    """The root cause, checked directly: after ``api.run`` nothing holds the runtime it
    created (it would say so on stderr) and its threads have stopped, whether the command
    returned or raised. The core sometimes leaves one worker thread parked (state S,
    in a futex wait) after its runtime is dropped: seen in 2 of 40 runs of this check,
    after a session that raised. It runs no Python code; more than one left, or one
    still running (R), fails."""
    env = {**os.environ,
           "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "outlived its session" not in done.stderr, done.stderr
    lines = done.stdout.split("\n")
    words = lines[0].split()
    assert int(words[1]) > 0, "the session's runtime started no thread?"
    for line in lines[:2]:
        count, states = int(line.split()[-2]), line.split()[-1]
        assert count <= 1 and states in ("-", "S"), done.stdout


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

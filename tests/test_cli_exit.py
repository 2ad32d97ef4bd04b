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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scanward import client as api
from scanward.settings import Settings
from tests.conftest import scan_request, start
from tests.test_cli import cli_env, scanward

RUNS = 100
CONCURRENCY = 4  # 2 cores: keeps the 100 runs well under a minute


def temporal_threads() -> set[int]:
    """This process's threads of Temporal's Rust runtimes (Tokio's threads), by id."""
    found = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            if Path(f"/proc/self/task/{tid}/comm").read_text().startswith("tokio-"):
                found.add(int(tid))
        except FileNotFoundError:  # the thread just ended
            pass
    return found


def test_run_joins_the_runtimes_threads(temporal_env: WorkflowEnvironment,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The root cause, checked directly: after ``api.run`` the runtime it created has no
    thread left, whether the command returned or raised."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    before = temporal_threads()  # the session's own client has a runtime too

    async def listing() -> set[int]:
        client = await api.connect()
        _ = [s async for s in api.list_scans(client, limit=5)]
        return temporal_threads() - before

    async def failing() -> None:
        client = await api.connect()
        await api.describe(client, "scan-default-00000000000000000000")  # ScanNotFound

    def in_thread() -> None:
        assert api.run(listing()), "the session's runtime started no thread?"
        assert not temporal_threads() - before
        with pytest.raises(api.ScanNotFound):
            api.run(failing())
        assert not temporal_threads() - before

    # api.run calls asyncio.run: off the test's thread (as run_async does).
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(in_thread).result()


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

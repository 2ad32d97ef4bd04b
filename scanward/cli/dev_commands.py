"""`scanward dev` and `scanward demo`: a dev server and a local worker in one process."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from temporalio.client import Client

from scanward import client as api
from scanward.cli.app import CliError, out, run_command
from scanward.cli.findings_view import print_findings
from scanward.cli.progress import watch
from scanward.contract import ScanRequest, ScanStatus
from scanward.devserver import DevServer, free_port
from scanward.example import create_example_repo
from scanward.settings import Settings


async def _with_dev_stack(settings: Settings, server: DevServer,
                          body: Callable[[Client], Awaitable[None]]) -> None:
    """Run ``body`` with a dev server and an in-process local worker around it."""
    # Imported here: the worker pulls in the activities, the Kubernetes client and the
    # store (most of the CLI's start-up time), which only dev and demo need.
    import worker as scan_worker

    server.start()
    try:
        os.environ["TEMPORAL_ADDRESS"] = server.address
        client = await api.connect()
        async with scan_worker.running(settings, client) as worker_task:
            body_task: asyncio.Future[None] = asyncio.ensure_future(body(client))
            try:
                # Whichever ends first: a worker that dies at start (an unreachable
                # cluster, a bad store URL) ends the command with its error, not a hang.
                await asyncio.wait({worker_task, body_task},
                                   return_when=asyncio.FIRST_COMPLETED)
                if worker_task.done() and not body_task.done():
                    worker_task.result()  # raises the worker's error
                    raise CliError("the local worker stopped unexpectedly")
                body_task.result()
            finally:
                body_task.cancel()
    finally:
        server.stop()


def dev(
    port: int = 7233,
    ui_port: int = 8233,
) -> None:
    """Temporal dev server (Web UI on, search attributes registered) + a local worker."""
    settings = dataclasses.replace(Settings.from_env(), allow_local_repositories=True)
    server = DevServer(port=port, ui_port=ui_port, db_file=settings.home / "temporal.db",
                       log_file=settings.home / "temporal.log")

    async def serve(_client: Client) -> None:
        out.print(f"Temporal on {server.address}, Web UI http://127.0.0.1:{ui_port}; "
                  f"worker on task queue {settings.task_queue}. Ctrl-C stops.",
                  highlight=False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal as _signal

        for sig in (_signal.SIGINT, _signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    run_command(_with_dev_stack(settings, server, serve))


def demo() -> None:
    """A real scan of the bundled flawed app on the embedded defaults (offline)."""
    home = Path(tempfile.mkdtemp(prefix="scanward-demo-"))
    os.environ["SCANWARD_HOME"] = str(home)
    os.environ.pop("SCANWARD_DATABASE_URL", None)
    settings = dataclasses.replace(Settings.from_env(), allow_local_repositories=True)
    server = DevServer(port=free_port(), ui_port=None, log_file=home / "temporal.log")
    started = time.monotonic()

    async def body(client: Client) -> None:
        repo = create_example_repo(home / "flawed-app")
        # semgrep is an optional extra (tools/setup.sh installs it).
        has_semgrep = (Path(sysconfig.get_path("scripts")) / "semgrep").exists()
        scanners = ("bandit", "semgrep") if has_semgrep else ("bandit",)
        request = ScanRequest(repository=repo.as_uri(), ref="main", scanners=scanners)
        handle = await api.start_scan(client, request, task_queue=settings.task_queue)
        out.print(f"scanning {repo} (bundled flawed app) as {handle.id}", highlight=False)
        summary = await watch(client, handle.id)
        found = print_findings(handle.id)
        out.print(f"scan {summary.status.value}: {len(found)} finding(s) in "
                  f"{time.monotonic() - started:.1f}s (store: {settings.database_url})",
                  highlight=False)
        if summary.status is not ScanStatus.COMPLETED or not found:
            raise CliError("the demo scan did not complete with findings")

    run_command(_with_dev_stack(settings, server, body))



"""scanward's own processes for tests: the CLI (``python -m starter``) and the worker
(``python -m worker``), run for real against the test session's Temporal."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
from temporalio.testing import WorkflowEnvironment

from scanward.settings import Settings
from tests.conftest import SECRET_HOSTS, WEBHOOK_SECRET

REPO_ROOT = Path(__file__).parent.parent.parent


async def spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """``scanward ARGS`` as a real process, its output piped."""
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
                "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200", **(env or {})}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter", *args, cwd=REPO_ROOT, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finish(proc: asyncio.subprocess.Process, timeout: float = 180) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def scanward(*args: str, env: dict[str, str] | None = None,
                   timeout: float = 180) -> tuple[int, str, str]:
    return await finish(await spawn(*args, env=env), timeout)


def cli_env(temporal_env: WorkflowEnvironment, settings: Settings) -> dict[str, str]:
    return {
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "SCANWARD_DATABASE_URL": settings.database_url,
        "SCANWARD_TASK_QUEUE": settings.task_queue,
        "SCANWARD_CATALOG": str(settings.catalog_file),
    }


def worker_env(env: WorkflowEnvironment, settings: Settings) -> dict[str, str]:
    """A worker process's environment for ``settings``, on ``env``'s server."""
    return worker_env_at(env.client.service_client.config.target_host, settings,
                         env.client.namespace)


def worker_env_at(address: str, settings: Settings,
                  namespace: str = "default") -> dict[str, str]:
    """A worker process's environment for ``settings``, on the server at ``address``."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(settings.home),
        "PYTHONPATH": str(REPO_ROOT),
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": namespace,
        "SCANWARD_HOME": str(settings.home),
        "SCANWARD_WORKSPACE": str(settings.workspace_root),
        "SCANWARD_RESULTS": str(settings.results_root),
        "SCANWARD_DATABASE_URL": settings.database_url,
        "SCANWARD_TASK_QUEUE": settings.task_queue,
        "SCANWARD_ALLOW_LOCAL_REPOS": "1",
        "SCANWARD_CATALOG": str(settings.catalog_file),
        "SCANWARD_SECRET_HOOK": WEBHOOK_SECRET,
        **SECRET_HOSTS,
        "SCANWARD_GRACEFUL_SHUTDOWN_SECONDS": "20",
        "SCANWARD_WORKFLOW_SANDBOX": "1",  # tests run workflows sandboxed (conftest)
    }


def spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "worker"], cwd=REPO_ROOT, env=env,
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL)


async def probe(port: int, path: str, status: int, text: str = "") -> bool:
    """Whether the worker's health server on ``port`` answers ``path`` with ``status``
    and a body holding ``text``."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}{path}", timeout=2)
    return response.status_code == status and text in response.text

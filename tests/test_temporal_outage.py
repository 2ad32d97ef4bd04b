"""Temporal's bad days under running scans: a dev server of the test's own, on a SQLite
file, killed (or frozen with SIGSTOP) and started again with its state (the shared one
serves the other tests). Real workers and the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from scanward import client as api
from scanward.cli.app import CliError
from scanward.cli.progress import watch
from scanward.devserver import DevServer, free_port
from scanward.settings import Settings
from tests.conftest import eventually, scan_request
from tests.helpers.processes import finish, probe, spawn, spawn_worker, worker_env_at


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DevServer]:
    """A dev server on a db file, so that it can be stopped and started with its state."""
    dev = DevServer(port=free_port(), ui_port=None, db_file=tmp_path / "temporal.db",
                    log_file=tmp_path / "temporal.log")
    dev.start()
    try:
        yield dev
    finally:
        if dev.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                dev.proc.send_signal(signal.SIGCONT)  # a frozen one must hear SIGTERM
        dev.stop()


def _env(server: DevServer, settings: Settings) -> dict[str, str]:
    return worker_env_at(server.address, settings) | {
        "SCANWARD_GRACEFUL_SHUTDOWN_SECONDS": "10"}


async def test_scan_wait_rides_out_a_temporal_restart(
        server: DevServer, settings: Settings, flawed_repo: Path, state_dir: Path,
        tmp_path: Path) -> None:
    """`scan --wait` lost Temporal ~10 s into an outage and exited 1 with "temporal: tcp
    connect error" after several of the core's WARN lines, while the scan carried on.
    Now it says once that Temporal is away, waits, and ends with the scan's outcome;
    its stderr holds only scanward's own lines."""
    (state_dir / "seconds").write_text("6")
    env = _env(server, settings)
    log = tmp_path / "worker.log"
    worker = spawn_worker(env, log)
    try:
        cli = await spawn("scan", str(flawed_repo), "--ref", "main", "-s", "sleepy",
                          "--key", uuid.uuid4().hex, "--wait", env=env)
        await eventually(lambda: _exists(state_dir / "pid"), timeout=60,
                         what="the scanner started")
        assert server.proc is not None
        server.proc.kill()  # SIGKILL: no goodbye to its clients
        server.proc.wait()
        await asyncio.sleep(15)  # past the SDK's own RPC retries (~10 s)
        assert cli.returncode is None, "scan --wait gave up during a 15 s outage"
        back = time.monotonic()
        await asyncio.to_thread(server.start)
        code, stdout, stderr = await finish(cli, timeout=75)
        waited = time.monotonic() - back
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
    assert code == 0, (stdout, stderr, log.read_text()[-3000:])
    assert "succeeded" in stdout
    lines = stderr.strip().splitlines()
    assert lines and all(line.startswith("scanward: ") for line in lines), stderr
    assert "lost contact with Temporal" in stderr and "answers again" in stderr, stderr
    assert waited < 60, waited


async def test_scan_wait_on_a_frozen_server_gives_up_with_one_line(
        server: DevServer, settings: Settings, flawed_repo: Path) -> None:
    """A frontend that accepts connections and never answers (SIGSTOP) held `scan
    --wait` until the transport gave up (~45 s), then "temporal: http2 error". The watch
    now bounds each call and gives up after its patience, naming Temporal and the scan
    (which is durable: `status` once Temporal is back)."""
    client = await Client.connect(server.address, data_converter=pydantic_data_converter)
    # With a commit no worker needs to answer: the scan waits for one, running.
    request = scan_request(flawed_repo, "fake", commit="0" * 40)
    handle = await api.start_scan(client, request, task_queue=settings.task_queue)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    try:
        with pytest.raises(CliError) as caught:
            await asyncio.wait_for(
                watch(client, handle.id, outage_patience=timedelta(seconds=5)), 75)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    message = str(caught.value)
    assert f"Temporal at {server.address} unreachable" in message, message
    assert f"scanward status {handle.id}" in message, message
    assert time.monotonic() - started < 60


async def test_cancel_interrupted_by_an_outage_says_the_cancel_was_requested(
        server: DevServer, settings: Settings, flawed_repo: Path) -> None:
    """The server went away while `cancel` waited for the scan to close: it printed
    "temporal: tcp connect error" and exit 1, as if nothing had happened, though the
    cancel was in the history. No worker here: the scan cannot close, so `cancel` waits."""
    client = await Client.connect(server.address, data_converter=pydantic_data_converter)
    request = scan_request(flawed_repo, "fake", commit="0" * 40)
    handle = await api.start_scan(client, request, task_queue=settings.task_queue)
    cli = await spawn("cancel", handle.id, "--wait-seconds", "60",
                      env=_env(server, settings))
    history = await handle.fetch_history()  # wait until the cancel is recorded
    while not any(e.event_type is EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
                  for e in history.events):
        await asyncio.sleep(0.2)
        history = await handle.fetch_history()
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    code, _, stderr = await finish(cli, timeout=60)
    assert code == 1, stderr
    assert stderr.strip().startswith(f"scanward: error: cancel requested for {handle.id}, "
                                     "but Temporal stopped answering before it closed"), stderr


async def _exists(path: Path) -> bool:
    return path.exists() and bool(path.read_text())


def test_unavailable_means_an_outage_not_a_refusal() -> None:
    from temporalio.service import RPCStatusCode

    assert api.unavailable(RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b""))
    assert not api.unavailable(RPCError("no such scan", RPCStatusCode.NOT_FOUND, b""))


async def test_a_worker_started_before_temporal_waits_for_it_and_says_so(
        settings: Settings, tmp_path: Path) -> None:
    """A worker whose Temporal was not (yet) up exited 1 at once: deployed beside a
    restarting server it sat in the restart back-off after Temporal was back. It now
    waits (SCANWARD_TEMPORAL_WAIT_SECONDS), live and saying on /readyz what it waits
    for, and polls once the server answers."""
    dev = DevServer(port=free_port(), ui_port=None, log_file=tmp_path / "temporal.log")
    health = free_port()
    env = _env(dev, settings) | {"SCANWARD_HEALTH_PORT": str(health)}
    log = tmp_path / "worker.log"
    worker = spawn_worker(env, log)
    try:
        async def waiting() -> bool:
            return (await probe(health, "/readyz", 503, "waiting for Temporal: cannot reach "
                                f"Temporal at {dev.address}")
                    and await probe(health, "/livez", 200, "ok"))

        await eventually(waiting, timeout=30, what="the worker live, waiting for Temporal")
        await asyncio.sleep(3)
        assert worker.poll() is None, log.read_text()
        said = log.read_text()
        assert said.count("waiting up to") == 1, said  # said once, not at every try
        dev.start()
        try:
            await eventually(lambda: "worker polling" in log.read_text(), timeout=60,
                             what="the worker polling once Temporal answers")
            assert await probe(health, "/readyz", 200, "ok")
            assert "Temporal answered after" in log.read_text()
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 30) == 0
        finally:
            dev.stop()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


async def test_a_worker_gives_up_on_temporal_after_its_patience_or_stops_on_sigterm(
        settings: Settings, tmp_path: Path) -> None:
    """Waiting has an end: past SCANWARD_TEMPORAL_WAIT_SECONDS the worker exits 1 naming
    the address and the variable; SIGTERM while it waits is a clean stop."""
    nowhere = f"127.0.0.1:{free_port()}"
    env = worker_env_at(nowhere, settings) | {"SCANWARD_TEMPORAL_WAIT_SECONDS": "2"}
    started = time.monotonic()
    proc = spawn_worker(env, tmp_path / "gives-up.log")
    assert await asyncio.to_thread(proc.wait, 60) == 1
    assert time.monotonic() - started < 30
    last = (tmp_path / "gives-up.log").read_text().strip().splitlines()[-1]
    assert last.startswith(f"scanward-worker: error: cannot reach Temporal at {nowhere}"), last
    assert last.endswith("; waited 2s (SCANWARD_TEMPORAL_WAIT_SECONDS)"), last

    log = tmp_path / "stopped.log"
    proc = spawn_worker(worker_env_at(nowhere, settings), log)
    try:
        await eventually(lambda: "waiting up to 300s" in log.read_text(), timeout=30,
                         what="the worker waiting for Temporal")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert "stopped while waiting for Temporal" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

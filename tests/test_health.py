"""The health server's port: taken at bind (before the worker's start-up), answered once
served, and given back by close whether or not it was ever served. And what the probes
of a real worker process say while it stops."""

from __future__ import annotations

import errno
import signal
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from scanward import metrics
from scanward.devserver import free_port
from scanward.health import Health
from scanward.settings import Settings
from tests.helpers.processes import spawn_worker, worker_env
from tests.prometheus_fixture import PrometheusStack


def test_bind_takes_the_port_and_serve_answers_on_it() -> None:
    health = Health()
    port = health.bind(0, host="127.0.0.1")
    try:
        with socket.socket() as other, pytest.raises(OSError) as taken:
            other.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE
        assert health.serve() == port
        response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert (response.status_code, response.text) == (503, "worker not started\n")
    finally:
        health.close()
    _rebind(port)


def _rebind(port: int) -> None:
    """The port is free again: another health server (SO_REUSEADDR, as every HTTP
    server: the served connection's TIME_WAIT remains) binds it."""
    again = Health()
    try:
        assert again.bind(port, host="127.0.0.1") == port
    finally:
        again.close()


def test_a_client_that_resets_mid_request_prints_nothing(
        capfd: pytest.CaptureFixture[str]) -> None:
    """A probe that times out and resets its connection printed socketserver's
    ConnectionResetError traceback into the worker's log (seen in CI's output)."""
    health = Health()
    port = health.serve(0, host="127.0.0.1")
    try:
        with socket.create_connection(("127.0.0.1", port)) as probe:
            probe.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")  # and no end
            time.sleep(0.2)
            # SO_LINGER 0: close sends RST, as a client that gave up does
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(0.5)
        response = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5)
        assert response.status_code == 200  # and it serves on
    finally:
        health.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err, err


def test_close_gives_back_a_port_never_served() -> None:
    """A start-up that fails after the bind (Temporal unreachable) closes at once."""
    health = Health()
    port = health.bind(0, host="127.0.0.1")
    health.close()  # would wait for ever on shutdown() of a server never served
    _rebind(port)


def test_livez_stays_live_while_a_clean_stop_waits_to_delete_its_pushgateway_group(
        temporal_env: WorkflowEnvironment, settings: Settings, tmp_path: Path,
        prometheus_stack: PrometheusStack) -> None:
    """On SIGTERM a worker that pushed a change within the last interval waits up to
    that interval (here 20 s) before deleting its group, still serving probes: /livez
    must keep saying its (healthy) event loop is alive, not "has not ticked"."""
    port = free_port()
    env = worker_env(temporal_env, settings) | {
        "SCANWARD_HEALTH_PORT": str(port), "SCANWARD_PUSHGATEWAY": prometheus_stack.pushgateway,
        metrics.INTERVAL_VARIABLE: "20"}
    log = tmp_path / "worker.log"
    proc = spawn_worker(env, log)
    try:
        deadline = time.monotonic() + 60
        while not _answers(port, "/readyz", 200):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        seen: list[tuple[float, int, str]] = []
        stopped = time.monotonic()
        while proc.poll() is None and time.monotonic() - stopped < 60:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2)
                seen.append((round(time.monotonic() - stopped, 1), r.status_code, r.text))
            except httpx.HTTPError:
                pass  # the server closed: the worker is about to exit
            time.sleep(0.5)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
        # The stop did wait past /livez's 10 s staleness limit while serving probes.
        assert seen and seen[-1][0] > 12, seen
        assert all(code == 200 for _, code, _ in seen), [s for s in seen if s[1] != 200]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _answers(port: int, path: str, status: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == status
    except httpx.HTTPError:
        return False

"""Scanner attempts are recorded by the worker and pushed to a Pushgateway as soon as
each ends (scanner Jobs are shorter than a scrape). The Pushgateway here is a local HTTP
server speaking its push API (PUT /metrics/job/<job>/instance/<instance>): the real
Pushgateway is a separate Go service not installed on this machine."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

import worker as scan_worker
from scanward.devserver import free_port
from scanward.settings import Settings
from tests.conftest import eventually, scan_request, start


class PushReceiver:
    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, str]] = []  # (method, path, body)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _store(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.pushes.append((self.command, self.path, body.decode()))
                self.send_response(200)
                self.end_headers()

            do_PUT = _store
            do_POST = _store

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def gateway() -> Iterator[PushReceiver]:
    r = PushReceiver()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


async def test_attempts_are_pushed_and_served(client: Client, settings: Settings,
                                              flawed_repo: Path,
                                              gateway: PushReceiver) -> None:
    port = free_port()
    pushed = dataclasses.replace(settings, pushgateway=gateway.url, health_port=port)
    stop = asyncio.Event()
    task = asyncio.create_task(scan_worker.run(pushed, stop, client))
    try:
        handle = await start(client, pushed, scan_request(flawed_repo, "fake", "badinput"))
        await eventually(lambda: _async(len(gateway.pushes) >= 2), what="two pushes")
        await handle.cancel()
        async with httpx.AsyncClient() as http:
            served = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        stop.set()
        await task
    method, path, body = gateway.pushes[-1]
    assert method == "PUT" and path.startswith("/metrics/job/scanward_scanner/instance/")
    for text in (body, served):
        assert ('scanward_scanner_attempts_total{backend="local",outcome="succeeded",'
                'scanner="fake"}') in text
        assert ('scanward_scanner_attempts_total{backend="local",outcome="bad_input",'
                'scanner="badinput"}') in text
        assert 'scanward_scanner_attempt_seconds_count{backend="local",scanner="fake"}' in text


async def _async(value: bool) -> bool:
    return value

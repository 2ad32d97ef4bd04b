"""Honest liveness and readiness for the worker (``SCANWARD_HEALTH_PORT``).

``/livez`` fails when the worker's event loop has not ticked recently (a blocked loop
also blocks every workflow and heartbeat): restarting is the right cure. ``/readyz``
fails while the worker is starting or draining, or when the store or Temporal cannot be
reached: not a reason to restart. A worker polls Temporal rather than being sent work,
so not-ready does not stop it taking tasks (the SDK cannot pause its pollers); it is
what the rollout, the dashboard and the ScanwardWorkerNotReady alert read. With the
store down, scans it takes wait at their store step, retried until the store answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from scanward.http_server import QuietHTTPServer
from scanward.metrics import exposition

Check = Callable[[], Awaitable[None]]
NOT_STARTED = "worker not started"  # /readyz before start-up says what it waits for


class Health:
    """Probe state, updated from the event loop and served from a thread."""

    def __init__(self, *, stale_after: float = 10.0, check_every: float = 5.0) -> None:
        self.stale_after = stale_after
        self.check_every = check_every
        self._tick = time.monotonic()
        self._ready = False
        self._starting = NOT_STARTED
        self._draining = False
        self._problem: str | None = "starting"
        self._checks: dict[str, Check] = {}
        self._server: QuietHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def set_starting(self, stage: str) -> None:
        """What start-up waits for, which /readyz says until the worker is ready."""
        self._starting = stage

    def set_draining(self) -> None:
        self._draining = True

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self._tick
        if age > self.stale_after:
            return False, f"event loop has not ticked for {age:.1f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining: shutting down"
        if not self._ready:
            return False, self._starting
        if self._problem:
            return False, self._problem
        return True, "ok"

    async def run(self) -> None:
        """Tick and run the dependency checks until cancelled; after that, keep ticking
        from the event loop until :meth:`close`."""
        last_check = 0.0
        try:
            while True:
                self._tick = time.monotonic()
                if self._tick - last_check >= self.check_every:
                    last_check = self._tick
                    self._problem = await self._run_checks()
                await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            # A stopping worker cancels this first, then spends up to an interval on its
            # last Pushgateway push while still serving probes: without ticks, /livez
            # would report a healthy loop as blocked (and invite a restart mid-drain).
            self._keep_ticking(asyncio.get_running_loop())
            raise

    def _keep_ticking(self, loop: asyncio.AbstractEventLoop) -> None:
        def tick() -> None:
            if self._server is None:  # closed (or never served): nobody asks any more
                return
            self._tick = time.monotonic()
            loop.call_later(1.0, tick)

        tick()

    async def _run_checks(self) -> str | None:
        for name, check in self._checks.items():
            try:
                await asyncio.wait_for(check(), timeout=self.check_every)
            except Exception as e:  # a probe reports any failure, it never raises
                return f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        return None

    def bind(self, port: int, host: str = "0.0.0.0") -> int:  # noqa: S104 - probes come from the kubelet
        """Listen on ``port`` now, before the rest of start-up, so that a port in use
        fails at once (``OSError``); requests wait until :meth:`serve`. Returns the
        bound port (``0`` picks a free one)."""
        return int(self._bind(port, host).server_address[1])

    def _bind(self, port: int, host: str) -> QuietHTTPServer:
        if self._server is not None:
            raise RuntimeError("health server already bound")
        self._server = QuietHTTPServer((host, port), _handler(self))
        return self._server

    def serve(self, port: int | None = None, host: str = "0.0.0.0") -> int:  # noqa: S104 - probes come from the kubelet
        """Serve ``/livez``, ``/readyz`` and ``/metrics`` (scanner attempts) from a daemon
        thread, on the port :meth:`bind` took or else on ``port``; returns the bound
        port."""
        server = self._server
        if server is None:
            if port is None:
                raise ValueError("no port: bind() one first or pass it")
            server = self._bind(port, host)
        self._thread = threading.Thread(target=server.serve_forever, name="health",
                                        daemon=True)
        self._thread.start()
        return int(server.server_address[1])

    def close(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            with contextlib.suppress(OSError):
                if thread is not None:  # shutdown() waits for a serve_forever that ran
                    server.shutdown()
                server.server_close()


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                payload = exposition()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            probes = {"/livez": health.live, "/healthz": health.live,
                      "/readyz": health.ready}
            probe = probes.get(self.path)
            ok, text = probe() if probe else (False, "not found")
            body = (text + "\n").encode()
            self.send_response(200 if ok else (404 if probe is None else 503))
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler

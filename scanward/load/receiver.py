"""The webhook receiver of the ``webhook`` scenario: a stdlib HTTP server on 127.0.0.1 in
a thread that is *down* (answers 503) for its first ``down_seconds`` and *slow* (waits
``delay_seconds`` before answering) throughout. Otherwise it behaves as a receiver
should: it verifies the signature (401 if it does not) and deduplicates by
idempotency key (200 the first time, 409 after), so the report can say whether every
scan was delivered exactly once despite the outage."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from scanward.webhook import IDEMPOTENCY_HEADER, verify


class FlakyReceiver:
    def __init__(self, secret: bytes, *, down_seconds: float = 0.0,
                 delay_seconds: float = 0.0) -> None:
        self.secret = secret
        self.down_seconds = down_seconds
        self.delay_seconds = delay_seconds
        self._lock = threading.Lock()
        self._accepted: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self._up_at = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()

    def start(self) -> FlakyReceiver:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._up_at = time.monotonic() + self.down_seconds
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="load-webhook-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._stopping.set()
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("receiver not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    @property
    def accepted_keys(self) -> set[str]:
        with self._lock:
            return set(self._accepted)

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        if time.monotonic() < self._up_at:
            status = 503
        elif not verify(self.secret, headers, body):
            status = 401
        else:
            key = next((v for k, v in headers.items()
                        if k.lower() == IDEMPOTENCY_HEADER.lower()), "")
            with self._lock:
                status = 409 if key in self._accepted else 200
                self._accepted.add(key)
        with self._lock:
            self.statuses[status] += 1
        return status

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"down_seconds": self.down_seconds, "delay_seconds": self.delay_seconds,
                    "requests": sum(self.statuses.values()),
                    "answers": {str(k): v for k, v in sorted(self.statuses.items())},
                    "delivered_scans": len(self._accepted)}


def _handler(receiver: FlakyReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status = receiver.answer(dict(self.headers.items()), body)
            if receiver.delay_seconds and receiver._stopping.wait(receiver.delay_seconds):
                return
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:  # the sender gave up waiting
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler

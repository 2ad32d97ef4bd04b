"""A real webhook receiver (tests, ``scanward load``): a stdlib HTTP server on 127.0.0.1
in a thread.

It does what a well-behaved receiver does: checks the signature with
:func:`scanward.webhook.verify` (401 if it does not verify) and deduplicates by
idempotency key (200 the first time, 409 for a key it has already accepted).
Tests can force the next responses with :meth:`WebhookReceiver.respond_with` and slow
it down with ``delay_s``. Everything it records is guarded by a lock.

    receiver = WebhookReceiver(secret=b"key")
    receiver.start()
    ...  # POST to receiver.url
    receiver.stop()
    assert [d.verified for d in receiver.deliveries] == [True]
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple

from scanward.http_server import QuietHTTPServer
from scanward.webhook import IDEMPOTENCY_HEADER, verify

MAX_BODY_BYTES = 10 * 1024 * 1024


class Delivery(NamedTuple):
    """One request as the receiver saw it."""

    key: str | None  # the Idempotency-Key header
    body: Any  # the parsed JSON body (None if it was not JSON)
    verified: bool  # the signature and timestamp verified


class _Forced(NamedTuple):
    status: int
    retry_after: str | None


class WebhookReceiver:
    """A signature-checking, deduplicating webhook receiver on ``127.0.0.1:<free port>``."""

    def __init__(self, secret: bytes, *, path: str = "/hook", tolerance_s: int = 300,
                 delay_s: float = 0.0) -> None:
        self.secret = secret
        self.path = path
        self.tolerance_s = tolerance_s
        self.delay_s = delay_s
        self._lock = threading.Condition()
        self._deliveries: list[Delivery] = []
        self._statuses: list[int] = []
        self._seen: set[str] = set()
        self._forced: deque[_Forced] = deque()
        self._stopping = threading.Event()
        self._server: QuietHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> WebhookReceiver:
        """Listen on a free port of 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("receiver already started")
        server = QuietHTTPServer(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(target=server.serve_forever, name="webhook-receiver",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port><path>``."""
        if self._server is None:
            raise RuntimeError("receiver not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.path}"

    @property
    def deliveries(self) -> list[Delivery]:
        """Every request received, in order (a copy)."""
        with self._lock:
            return list(self._deliveries)

    @property
    def statuses(self) -> list[int]:
        """The status answered to each of :attr:`deliveries`."""
        with self._lock:
            return list(self._statuses)

    @property
    def accepted(self) -> list[Delivery]:
        """The deliveries answered with 2xx: one per idempotency key at most."""
        with self._lock:
            return [d for d, s in zip(self._deliveries, self._statuses, strict=True)
                    if 200 <= s < 300]

    def respond_with(self, *statuses: int, retry_after: str | None = None) -> None:
        """Answer the next requests with these statuses, whatever they carry (a forced
        answer does not mark the key as seen)."""
        with self._lock:
            self._forced.extend(_Forced(s, retry_after) for s in statuses)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Delivery]:
        """Block until at least ``count`` requests have arrived; return them all."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while len(self._deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self._deliveries)} webhook deliveries after "
                                       f"{timeout_s}s, expected {count}")
                self._lock.wait(left)
            return list(self._deliveries)

    # -- request handling (called from server threads)

    def refusal(self) -> int | None:
        """A status to answer every request with for now (a receiver that is down),
        before anything is checked; None to handle it."""
        return None

    def _handle(self, headers: dict[str, str], body: bytes) -> _Forced:
        verified = verify(self.secret, headers, body, tolerance_s=self.tolerance_s)
        refused = self.refusal()
        key = next((v for k, v in headers.items() if k.lower() == IDEMPOTENCY_HEADER.lower()),
                   None)
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        with self._lock:
            if self._forced:
                answer = self._forced.popleft()
            elif refused is not None:
                answer = _Forced(refused, None)
            elif not verified:
                answer = _Forced(401, None)
            elif key is None:
                answer = _Forced(400, None)
            elif key in self._seen:
                answer = _Forced(409, None)
            else:
                self._seen.add(key)
                answer = _Forced(200, None)
            self._deliveries.append(Delivery(key, parsed, verified))
            self._statuses.append(answer.status)
            self._lock.notify_all()
        return answer


def _handler_class(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(_Forced(413, None))
                return
            body = self.rfile.read(length)
            if self.path.split("?", 1)[0] != receiver.path:
                self._reply(_Forced(404, None))
                return
            answer = receiver._handle(dict(self.headers.items()), body)
            if receiver.delay_s and receiver._stopping.wait(receiver.delay_s):
                return
            self._reply(answer)

        def _reply(self, answer: _Forced) -> None:
            payload = json.dumps({"status": answer.status}).encode()
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if answer.retry_after is not None:
                    self.send_header("Retry-After", answer.retry_after)
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up (e.g. timed out)
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler

"""Debian's headless Chromium, driven over the DevTools protocol, for tests that check
what a person sees in the Temporal Web UI.

Why not ``--dump-dom``: the Web UI is a single-page app that keeps polling, so
``--virtual-time-budget`` never runs out and nothing is dumped; here a test waits for
the text it expects instead. The protocol's WebSocket goes through ``websocket-client``,
already installed as a dependency of the kubernetes client. Nothing is downloaded: every
host name but 127.0.0.1 is unresolvable for this browser, and the test can check which
responses came from where (``responses``)."""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import websocket

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Only the local Web UI can be reached: the UI's own outbound fetches (news) fail.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


class Chromium:
    """One headless browser with one page; a context manager."""

    def __init__(self, profile: Path, *, width: int = 1600, height: int = 1100) -> None:
        self.profile = profile
        self.size = (width, height)
        self.responses: list[str] = []  # URL of every response the page received
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: websocket.WebSocket | None = None
        self._ids = itertools.count(1)

    def __enter__(self) -> Chromium:
        if not CHROMIUM.exists():  # a failure, not a skip: .ci/run installs it
            raise RuntimeError(f"{CHROMIUM} missing: apt-get install chromium")
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={self.profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(f"{CHROMIUM} did not open its DevTools port")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as reply:
                page = next(t for t in json.load(reply) if t["type"] == "page")
            # No Origin header: Chromium refuses DevTools sockets from other origins.
            self._ws = websocket.create_connection(page["webSocketDebuggerUrl"],
                                                   suppress_origin=True, timeout=60)
            self.call("Page.enable")
            self.call("Network.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=self.size[0],
                      height=self.size[1], deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are recorded."""
        assert self._ws is not None, "not started"
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("method") == "Network.responseReceived":
                self.responses.append(message["params"]["response"]["url"])
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                          awaitPromise=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression[:80]}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, *, timeout: float = 60, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value. On timeout: an
        AssertionError with the last value and the page's visible text."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
                if last:
                    return last
            except RuntimeError as e:  # the page is between two documents
                last = e
            time.sleep(0.3)
        text = self.evaluate("document.body ? document.body.innerText : ''")
        raise AssertionError(f"timed out after {timeout}s waiting for {what or expression}; "
                             f"last: {last!r}; page text: {str(text)[:3000]}")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the page as a person would see it."""
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

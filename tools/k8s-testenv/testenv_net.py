"""Loopback networking for the test plane: free ports, and HTTP(S) requests that never
go through a proxy."""

from __future__ import annotations

import socket
import ssl
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_url(req: urllib.request.Request, timeout: float, ctx: ssl.SSLContext | None) -> Any:
    # No ProxyHandler: never send loopback requests to an HTTP(S)_PROXY from the environment.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ctx is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    return urllib.request.build_opener(*handlers).open(req, timeout=timeout)

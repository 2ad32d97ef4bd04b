"""The standard library's threading HTTP server, without a traceback for a client that
hung up."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any


class QuietHTTPServer(ThreadingHTTPServer):
    """socketserver prints a traceback to stderr for every error in a request, including
    a client that resets its connection mid-request (a probe that timed out, a load tool
    stopped). Nothing went wrong on this side then, so nothing is printed; any other
    error still is."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

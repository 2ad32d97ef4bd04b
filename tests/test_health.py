"""The health server's port: taken at bind (before the worker's start-up), answered once
served, and given back by close whether or not it was ever served."""

from __future__ import annotations

import errno
import socket

import httpx
import pytest

from scanward.health import Health


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


def test_close_gives_back_a_port_never_served() -> None:
    """A start-up that fails after the bind (Temporal unreachable) closes at once."""
    health = Health()
    port = health.bind(0, host="127.0.0.1")
    health.close()  # would wait for ever on shutdown() of a server never served
    _rebind(port)

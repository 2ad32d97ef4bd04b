"""The dev server that `scanward dev`, `demo` and `load --start-local-server` start is
ready when its frontend serves, not when its port listens.

Seen in CI: `scanward dev` connected the moment the port opened, got "Frontend is not
healthy yet" and exited 1 while its Web UI was already up.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from temporalio.client import Client

from scanward.devserver import DevServer, free_port, serving


def test_a_listening_port_that_does_not_serve_is_not_ready() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not serving(f"127.0.0.1:{listener.getsockname()[1]}")


async def test_started_means_serving_and_a_frozen_frontend_is_not(tmp_path: Path) -> None:
    server = DevServer(port=free_port(), ui_port=None, db_file=tmp_path / "temporal.db",
                       log_file=tmp_path / "temporal.log")
    server.start()
    try:
        assert server.proc is not None
        # Ready means a client connects at once, as `scanward dev` does next.
        await Client.connect(server.address)
        assert serving(server.address)
        # Its port still accepts (the kernel's backlog) but nothing answers.
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            assert not serving(server.address)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert serving(server.address)
    finally:
        server.stop()

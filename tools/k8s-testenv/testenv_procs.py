"""The plane's child processes: started with their output in a log file, from one
long-lived thread so that they die with the Python process (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from testenv_errors import ControlPlaneError

_T = TypeVar("_T")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):  # best effort
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Spawner:
    """One long-lived daemon thread that forks every child process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
    process: a process started from a short-lived thread (asyncio.to_thread, a
    ThreadPoolExecutor worker, a test's helper thread) would be SIGKILLed as soon
    as that thread ends. Forking from this thread, which lives as long as the
    Python process, makes "die with the parent" mean the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_SpawnJob] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable[[], _T]) -> _T:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="testenv-spawner", daemon=True
                )
                self._thread.start()
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            fn, future = self._jobs.get()
            try:
                future.set_result(fn())
            except BaseException as e:  # handed to the caller
                future.set_exception(e)


_SpawnJob = tuple[Callable[[], Any], concurrent.futures.Future[Any]]
_SPAWNER = _Spawner()


class Proc:
    """One component of the plane, running, its stdout and stderr in `log`."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        env: dict[str, str],
        die_with_parent: bool,
        *,
        append_log: bool = False,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self._logf = open(log, "ab" if append_log else "wb")
        logf = self._logf
        pdeathsig = die_with_parent and sys.platform == "linux"

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # ^C in a terminal reaches only us; we stop in order
                preexec_fn=_set_pdeathsig if pdeathsig else None,
            )

        self.popen = _SPAWNER.run(popen) if pdeathsig else popen()  # see _Spawner

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        rc = self.popen.poll()
        if rc is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {rc}; log tail ({self.log}):\n{_tail(self.log)}"
            )

    def terminate(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def wait_or_kill(self, timeout: float) -> None:
        try:
            self.popen.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._logf.close()

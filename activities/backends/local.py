"""The ``local`` job backend: the scanner runs as a subprocess of the worker against the
shared checkout, writing SARIF into the results directory (never read from stdout)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import child_process
from activities.backends import (
    Heartbeat,
    JobPaths,
    ScannerFailed,
    classify_exit,
    job_paths,
    wait_heartbeating,
)
from scanward.attempt_logs import with_log_tail
from scanward.catalog import ScannerSpec
from scanward.contract import FailureClass, ScannerJobInput, ScannerJobResult
from scanward.tracing import traceparent_env
from scanward.volumes import FULL_ERRNOS, free_bytes, volume_free

RULES_DIR = Path(str(resources.files("scanward") / "rules"))
PID_FILE = "scanner.pid"  # who runs the attempt, so that stop() can find it
STOPPED_FILE = "stopped"  # written by stop(): the exit that follows is a cancel
EXIT_FILE = "exit.json"  # the scanner's exit code, once it has exited (for a later try)
_EXIT_FILE_WAIT = 10.0  # seconds an adopting try waits for the owner to record the exit
# scanner.log keeps this much of a scanner's output, then its last 64 KiB: the results
# volume is shared by every scan, and one scanner printing gigabytes must not fill it.
LOG_CAP_BYTES = 64 * 1024 * 1024
# Below this much free space on the results volume, a failed scanner's reason says so:
# with no room its log is empty too, and "exited 1" alone would hide the cause.
LOW_SPACE_BYTES = 1024 * 1024
RESULTS_FULL = "ResultsVolumeFull"


class LocalBackend:
    """Runs catalog entries that have a ``local_command`` as subprocesses."""

    name = "local"

    def __init__(self, workspace_root: Path, results_root: Path, *,
                 kill_grace: float = 5.0, log_cap: int = LOG_CAP_BYTES) -> None:
        self._workspace_root = workspace_root
        self._results_root = results_root
        self._kill_grace = kill_grace
        self._log_cap = log_cap
        # Exit recorders of scanners whose activity Temporal gave up (kept referenced).
        self._detached: set[asyncio.Future[None]] = set()

    def start(self) -> None:
        """Nothing to connect to."""

    def close(self) -> None:
        """Nothing to release."""

    async def run(self, job: ScannerJobInput, spec: ScannerSpec, heartbeat: Heartbeat,
                  heartbeat_every: float) -> ScannerJobResult:
        if spec.local_command is None:
            raise ScannerFailed(
                FailureClass.BAD_IMAGE,
                f"scanner {spec.name!r} has no local command; run it with the kubernetes backend",
            )
        paths = job_paths(self._workspace_root, self._results_root, job)
        if not paths.source.is_dir():
            raise ScannerFailed(FailureClass.BAD_INPUT, f"checkout {paths.source} is missing")
        started = time.monotonic()
        earlier = await self._earlier_exit(job, spec, paths, heartbeat, heartbeat_every)
        code = (earlier if earlier is not None
                else await self._start_and_wait(job, spec, paths, heartbeat, heartbeat_every))
        return self._outcome(job, spec, paths, code, started)

    async def _start_and_wait(self, job: ScannerJobInput, spec: ScannerSpec, paths: JobPaths,
                              heartbeat: Heartbeat, heartbeat_every: float) -> int:
        """Start the scanner anew and wait for it; its exit code (recorded in EXIT_FILE)."""
        try:
            if paths.out_dir.exists():  # an earlier try of this attempt died half-way
                shutil.rmtree(paths.out_dir)
            paths.out_dir.mkdir(parents=True)
        except OSError as e:
            raise self._volume_error(e, paths.out_dir) from e
        values = {"source": paths.source, "sarif": paths.sarif, "python": sys.executable,
                  "bindir": _bindir(), "rules": RULES_DIR}
        argv = [a.format(**values) for a in spec.local_command or ()]
        cwd = spec.local_cwd.format(**values)
        # A minimal environment: the worker's secrets must not reach scanners.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(paths.out_dir),
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **spec.local_env,
               **traceparent_env()}
        try:
            log = paths.log.open("wb")
        except OSError as e:
            raise self._volume_error(e, paths.log) from e
        with log:
            try:
                # Under the reaper: whatever the scanner starts (semgrep-core, ...) dies
                # with it, with a stop, and with a SIGKILLed worker.
                proc = await child_process.spawn(argv, cwd=Path(cwd), env=env,
                                                 stdout=log.fileno(), stderr=log.fileno(),
                                                 log_cap=self._log_cap)
            except OSError as e:
                raise ScannerFailed(FailureClass.BAD_IMAGE, f"cannot start {argv[0]}: {e}") from e
            try:
                (paths.out_dir / PID_FILE).write_text(json.dumps(_identity(proc.pid)))
            except OSError as e:
                # The scanner runs already: a retry of this activity must not find it
                # still running beside the next one.
                await self._kill(proc)
                raise self._volume_error(e, paths.out_dir / PID_FILE) from e
            exited = asyncio.ensure_future(proc.wait())
            await self._await_exit(
                exited, job, spec, paths, heartbeat, heartbeat_every,
                stop=lambda: self._kill(proc),
                # The retry adopts it (_earlier_exit) once this try has recorded its exit.
                detach=lambda: self._record_exit_later(exited, paths))
        code = exited.result()
        _record_exit(paths, code)
        return code

    async def _await_exit(self, waiter: asyncio.Future[Any], job: ScannerJobInput,
                          spec: ScannerSpec, paths: JobPaths, heartbeat: Heartbeat,
                          heartbeat_every: float, *, stop: Callable[[], Awaitable[None]],
                          detach: Callable[[], None]) -> None:
        """Wait for the scanner, heartbeating, up to the attempt's deadline (the same as
        a Job's activeDeadlineSeconds, decided in one place: policy.job_deadline); past
        it ``stop`` it and fail as deadline_exceeded. Cancelled because Temporal gave
        this try up (its heartbeats did not arrive: an outage, a stalled worker), not the
        scan, the scanner runs on (``detach``) for the retry to adopt; any other way out
        stops it."""
        try:
            await asyncio.wait_for(wait_heartbeating(waiter, heartbeat, heartbeat_every),
                                   timeout=job.deadline_seconds)
        except TimeoutError:
            await stop()
            raise self._past_deadline(job, spec, paths) from None
        except asyncio.CancelledError:
            if _given_up():
                detach()
                raise
            await stop()
            raise
        except BaseException:
            await stop()
            raise

    def _outcome(self, job: ScannerJobInput, spec: ScannerSpec, paths: JobPaths, code: int,
                 started: float) -> ScannerJobResult:
        """The attempt's result from its scanner's exit code, log and SARIF."""
        if (paths.out_dir / STOPPED_FILE).exists():
            raise asyncio.CancelledError(f"{spec.name} attempt {job.attempt} stopped")
        failure = classify_exit(spec, code)
        if failure is not None:
            # The reaper reports a scanner killed by a signal as 128 + signal, as shells do.
            how = f"exited {code}" + (f" (signal {code - 128})" if 128 < code < 160 else "")
            raise ScannerFailed(failure, with_log_tail(
                f"{spec.name} {how}{self._low_space_note()}", paths.out_dir))
        if not paths.sarif.is_file():
            raise ScannerFailed(FailureClass.BROKEN_SARIF, with_log_tail(
                f"{spec.name} exited {code} but wrote no SARIF file{self._low_space_note()}",
                paths.out_dir))
        return ScannerJobResult(scanner=spec.name, attempt=job.attempt,
                                sarif_subpath=paths.sarif_subpath, exit_code=code,
                                duration_seconds=round(time.monotonic() - started, 3),
                                source_root=str(paths.source))

    def _past_deadline(self, job: ScannerJobInput, spec: ScannerSpec,
                       paths: JobPaths) -> ScannerFailed:
        return ScannerFailed(
            FailureClass.DEADLINE_EXCEEDED,
            with_log_tail(f"{spec.name} ran past its deadline of {job.deadline_seconds}s "
                          "and was killed", paths.out_dir))

    async def _earlier_exit(self, job: ScannerJobInput, spec: ScannerSpec, paths: JobPaths,
                            heartbeat: Heartbeat, heartbeat_every: float) -> int | None:
        """The exit code of this attempt's scanner as an earlier try of this activity on
        this host started it: recorded if it has exited (its try's result never reached
        Temporal), or waited for while it still runs (Temporal gave that try up). None:
        no such scanner (it was never started, was stopped, or died with its worker):
        start it anew."""
        try:
            recorded = json.loads((paths.out_dir / PID_FILE).read_text())
        except (OSError, ValueError):
            return None
        if (paths.out_dir / STOPPED_FILE).exists():
            return None
        code = _read_exit(paths)
        if code is not None:
            activity.logger.info("%s attempt %d exited %d in an earlier try: its results "
                                 "are used", spec.name, job.attempt, code)
            return code
        pid = int(recorded.get("pid", 0))
        if pid <= 0 or _identity(pid) != recorded:
            return None
        activity.logger.info("%s attempt %d still runs from an earlier try (reaper %d): "
                             "waiting for it rather than starting it again", spec.name,
                             job.attempt, pid)
        await self._await_exit(asyncio.ensure_future(_exited(pid)), job, spec, paths,
                               heartbeat, heartbeat_every,
                               stop=lambda: self._signal_reaper(pid),
                               detach=lambda: None)  # its owner records its exit
        # Its owner (the earlier try's worker) records the code once it has reaped it.
        for _ in range(int(_EXIT_FILE_WAIT / 0.1)):
            if (code := _read_exit(paths)) is not None:
                return code
            await asyncio.sleep(0.1)
        return None

    def _record_exit_later(self, exited: asyncio.Future[int], paths: JobPaths) -> None:
        """Record the scanner's exit code when it exits, after its activity has ended."""
        async def record() -> None:
            with contextlib.suppress(BaseException):
                _record_exit(paths, await exited)

        task = asyncio.ensure_future(record())
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    async def _signal_reaper(self, pid: int) -> None:
        """Stop a scanner this try does not own (SIGTERM its reaper, then SIGKILL)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(_exited(pid), self._kill_grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def stop(self, job: ScannerJobInput) -> str:
        """Stop the attempt's process group now, from any worker on the same host (the
        scan was cancelled). Idempotent: an attempt that is gone is fine."""
        paths = job_paths(self._workspace_root, self._results_root, job)
        try:
            recorded = json.loads((paths.out_dir / PID_FILE).read_text())
        except (OSError, ValueError):
            return f"{job.scanner} attempt {job.attempt}: no process recorded"
        pid = int(recorded.get("pid", 0))
        if pid <= 0 or _identity(pid) != recorded:
            # Exited already, or runs on another host: its own activity stops it when the
            # cancel reaches it at its next heartbeat.
            return f"{job.scanner} attempt {job.attempt}: not running on this host"
        (paths.out_dir / STOPPED_FILE).touch()
        # The recorded process is the scanner's reaper, maybe another worker's child:
        # SIGTERM makes it kill the scanner's whole group; if it is stuck, SIGKILL it
        # and the scanner dies with it (PDEATHSIG).
        await self._signal_reaper(pid)
        return f"{job.scanner} attempt {job.attempt}: stopped (reaper {pid})"

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        await child_process.stop(proc, self._kill_grace)

    def _volume_error(self, e: OSError, path: Path) -> Exception:
        """A full results volume named as such (retryable: space may be freed; the
        workflow's attempts bound it); any other error as it is."""
        if e.errno not in FULL_ERRNOS:
            return e
        return ApplicationError(
            f"results volume {self._results_root} is full ({volume_free(self._results_root)}): "
            f"cannot write {path}: {e.strerror}",
            type=RESULTS_FULL)

    def _low_space_note(self) -> str:
        """Why a scanner may have failed that its (then empty) log cannot say."""
        free = free_bytes(self._results_root)
        if free is None or free >= LOW_SPACE_BYTES:
            return ""
        return (f" (the results volume {self._results_root} is full: "
                f"{volume_free(self._results_root)}; its SARIF and log may be cut short)")


def _given_up() -> bool:
    """Whether this activity was cancelled because Temporal gave it up (its heartbeat
    timed out, or the server no longer knows it), rather than by a cancel request."""
    details = activity.cancellation_details() if activity.in_activity() else None
    return (details is not None and (details.timed_out or details.not_found)
            and not details.cancel_requested)


def _record_exit(paths: JobPaths, code: int) -> None:
    """Write the scanner's exit code for a later try of the same attempt (atomically)."""
    with contextlib.suppress(OSError):  # a full volume: a later try runs it again
        tmp = paths.out_dir / f".{EXIT_FILE}.tmp"
        tmp.write_text(json.dumps({"code": code}))
        tmp.replace(paths.out_dir / EXIT_FILE)


def _read_exit(paths: JobPaths) -> int | None:
    try:
        return int(json.loads((paths.out_dir / EXIT_FILE).read_text())["code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def _exited(pid: int) -> None:
    """Return once ``pid`` (a child or not) has exited, told by its pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@functools.cache
def _bindir() -> str:
    """The interpreter's scripts directory (sysconfig works it out anew on every call)."""
    return sysconfig.get_path("scripts")


@functools.cache
def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _identity(pid: int) -> dict[str, object]:
    """What tells this process apart from a later one with the same pid, on this host:
    its start time in clock ticks since boot, and the boot and host it runs on. A zombie
    (exited, not reaped) is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = _boot_id()
    except OSError:
        return {}
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    if fields[0] == "Z":
        return {}
    return {"pid": pid, "started": int(fields[19]), "boot": boot,
            "host": socket.gethostname()}

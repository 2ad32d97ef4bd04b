"""The ``local`` job backend: the scanner runs as a subprocess of the worker against the
shared checkout, writing SARIF into the results directory (never read from stdout)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import sysconfig
import time
from importlib import resources
from pathlib import Path

from activities.backends import (
    Heartbeat,
    ScannerFailed,
    classify_exit,
    job_paths,
    tail,
    wait_heartbeating,
)
from scanward.catalog import ScannerSpec
from scanward.contract import FailureClass, ScannerJobInput, ScannerJobResult
from scanward.tracing import traceparent_env

_PR_SET_PDEATHSIG = 1
RULES_DIR = Path(str(resources.files("scanward") / "rules"))


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # If the worker is SIGKILLed, the kernel kills the scanner too: no orphans.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalBackend:
    """Runs catalog entries that have a ``local_command`` as subprocesses."""

    name = "local"

    def __init__(self, workspace_root: Path, results_root: Path, *,
                 kill_grace: float = 5.0) -> None:
        self._workspace_root = workspace_root
        self._results_root = results_root
        self._kill_grace = kill_grace

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
        if paths.out_dir.exists():  # an earlier try of this attempt died half-way
            shutil.rmtree(paths.out_dir)
        paths.out_dir.mkdir(parents=True)
        values = {"source": paths.source, "sarif": paths.sarif, "python": sys.executable,
                  "bindir": sysconfig.get_path("scripts"), "rules": RULES_DIR}
        argv = [a.format(**values) for a in spec.local_command]
        cwd = spec.local_cwd.format(**values)
        # A minimal environment: the worker's secrets must not reach scanners.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(paths.out_dir),
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **spec.local_env,
               **traceparent_env()}
        started = time.monotonic()
        with paths.log.open("wb") as log:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=log, start_new_session=True,
                    preexec_fn=_die_with_parent,  # prctl only: takes no locks
                )
            except OSError as e:
                raise ScannerFailed(FailureClass.BAD_IMAGE, f"cannot start {argv[0]}: {e}") from e
            exited = asyncio.ensure_future(proc.wait())
            try:
                await wait_heartbeating(exited, heartbeat, heartbeat_every)
            except BaseException:
                await self._kill(proc)
                raise
        code = proc.returncode if proc.returncode is not None else -1
        failure = classify_exit(spec, code)
        if failure is not None:
            how = f"killed by signal {-code}" if code < 0 else f"exited {code}"
            raise ScannerFailed(failure, f"{spec.name} {how}; last log lines:\n{tail(paths.log)}")
        if not paths.sarif.is_file():
            raise ScannerFailed(FailureClass.BROKEN_SARIF,
                                f"{spec.name} exited {code} but wrote no SARIF file")
        return ScannerJobResult(scanner=spec.name, attempt=job.attempt,
                                sarif_subpath=paths.sarif_subpath, exit_code=code,
                                duration_seconds=round(time.monotonic() - started, 3),
                                source_root=str(paths.source))

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the scanner's whole process group, SIGKILL after the grace period."""
        for sig, wait in ((signal.SIGTERM, self._kill_grace), (signal.SIGKILL, 5.0)):
            if proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=wait)

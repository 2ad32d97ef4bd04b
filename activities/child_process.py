"""Child processes of the worker that cannot outlive it.

* :func:`die_with_parent` is a ``preexec_fn`` for a child that starts no processes of
  its own: PR_SET_PDEATHSIG=SIGKILL, so a SIGKILLed worker takes it along.
* :func:`spawn` / :func:`stop` are for a command that does start children (git): the
  death signal is not inherited across fork, so the command runs under ``reaper.py``,
  in a process group of its own, and the reaper kills that whole group when the worker
  dies, when :func:`stop` asks, and when the command exits.

PR_SET_PDEATHSIG fires when the *thread* that forked the child exits: spawn from the
event loop's thread (asyncio does), not from a short-lived worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
REAPER = Path(__file__).with_name("reaper.py")


def _load_prctl() -> Callable[[int, int], int] | None:
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no death signal to set
        return None
    return prctl


# Resolved once, here: between fork and exec the child must not dlopen (it may take a
# lock that another thread of the worker held at fork time).
_prctl = _load_prctl()


def die_with_parent() -> None:
    """``preexec_fn``: the kernel SIGKILLs this child when the worker dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None,
                stdout: int = asyncio.subprocess.PIPE,
                stderr: int = asyncio.subprocess.PIPE,
                log_cap: int | None = None) -> asyncio.subprocess.Process:
    """Start ``argv`` under the reaper. The returned process is the reaper: its exit
    status is the command's (``128 + signal`` when the command was killed).

    ``log_cap``: the command's stdout and stderr both go to ``stdout``, at most that many
    bytes of them, then only their last lines (``reaper.py --cap``)."""
    words = ["--", *argv] if log_cap is None else ["--cap", str(log_cap), "--", *argv]
    return await _reaper(words, env=env, cwd=cwd, stdout=stdout, stderr=stderr)


async def spawn_steps(steps: Sequence[Sequence[str]], *, env: Mapping[str, str],
                      cwd: Path | None = None) -> asyncio.subprocess.Process:
    """Start ``steps`` one after the other under one reaper, up to the first that fails;
    read which with :func:`last_step` from its stdout. The commands' own output is on
    its stderr."""
    words = ["--steps"]
    for argv in steps:
        words += [str(len(argv)), *argv]
    return await _reaper(words, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                         stderr=asyncio.subprocess.PIPE)


def last_step(stdout: bytes) -> int | None:
    """The index of the last step a :func:`spawn_steps` reaper ran (None if it ran
    none: it was stopped or could not start)."""
    line = stdout.decode(errors="replace").strip().rpartition("\n")[2]
    if line.startswith("step=") and " code=" in line:
        step = line[len("step="):line.index(" code=")]
        return int(step) if step.isdigit() else None
    return None


async def _reaper(words: Sequence[str], *, env: Mapping[str, str], cwd: Path | None,
                  stdout: int, stderr: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", str(REAPER), str(os.getpid()), *words,
        cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL, stdout=stdout,
        stderr=stderr,
        # Its own session: no terminal to prompt on, and a Ctrl-C or SIGTERM sent to the
        # worker's group does not reach it (the worker drains in-flight work first).
        start_new_session=True,
    )


async def stop(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """Kill a :func:`spawn`-ed command and everything it started, and reap the reaper."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)  # the reaper SIGKILLs the command's whole group
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=grace)
    except TimeoutError:
        # Only if the reaper itself is stuck: the command dies with it (PDEATHSIG).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

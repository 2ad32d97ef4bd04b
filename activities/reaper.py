"""Run a command, or a few in a row, so that nothing they start can outlive the worker.

    python -I -S reaper.py <worker-pid> -- <command> [args...]
    python -I -S reaper.py <worker-pid> --steps <n> <command> [args...] <n> <command> ...
    python -I -S reaper.py <worker-pid> --cap <bytes> -- <command> [args...]

PR_SET_PDEATHSIG only reaches a process's direct child and is cleared on fork, so a
command that starts children of its own (``git fetch`` runs ``upload-pack``,
``pack-objects`` and ``index-pack``) would leave them running when the worker is
SIGKILLed. This supervisor closes that gap:

* it runs the command in a process group of its own (the command's children stay in
  it), with PR_SET_PDEATHSIG=SIGKILL on the command;
* its own death signal is SIGTERM, which it handles by SIGKILLing that whole group:
  when the worker dies, the kernel tells the reaper, and the reaper kills everything;
* the worker stops a command the same way (SIGTERM to the reaper), e.g. when the
  activity is cancelled;
* when the command exits, stragglers in its group are killed before the reaper exits
  with the command's status (``128 + signal`` if it was killed);
* it is a child subreaper: what it kills is reparented to it and reaped here, not left
  as zombies of the worker (PID 1 of its container, which reaps nobody's children).

``--steps`` runs several commands one after the other, each as above, and stops at the
first that fails (a clone's init, fetch and checkout: one interpreter start instead of
three); each command is preceded by its number of words. The commands' output goes to
stderr; the reaper's stdout carries one line, ``step=<i> code=<c>``: the last step run
(from 0) and its status, which is also the exit status.

``--cap`` is for a scanner's log (the reaper's stdout): the command's stdout and stderr
go through a pipe that the reaper copies to its stdout up to ``<bytes>``, then keeps
reading (the command never blocks on it) and holds only the last :data:`TAIL_BYTES`,
written after a marker when the command ends: a scanner printing gigabytes cannot fill
the results volume every other scan writes to, and the last lines, which say why it
failed, are kept. A full volume stops the copy, not the command.

It imports the standard library only and is run with ``-I -S``: about 20 ms to start.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# Resolved before any fork: the child calls it between fork and exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
TAIL_BYTES = 64 * 1024  # kept past the cap: the last lines say why a scanner failed
_CHUNK = 64 * 1024
_PUMP_JOIN_SECONDS = 5.0  # the pipe's writers are all dead by then; never hang on it


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _pump(read_fd: int, out_fd: int, cap: int) -> None:
    """Copy ``read_fd`` to ``out_fd`` up to ``cap`` bytes, then keep only the tail; drain
    to EOF whatever happens, so that the command is never blocked on a full pipe."""
    written = dropped = 0
    tail = bytearray()
    writable = True
    while chunk := os.read(read_fd, _CHUNK):
        room = max(0, cap - written)
        head, rest = chunk[:room], chunk[room:]
        if head and writable:
            try:
                _write_all(out_fd, head)
            except OSError:  # a full volume: stop writing, keep draining
                writable = False
        written += len(head)
        if rest:
            dropped += len(rest)
            tail += rest
            del tail[:-TAIL_BYTES]
    os.close(read_fd)
    if dropped and writable:
        with contextlib.suppress(OSError):
            _write_all(out_fd, (f"\n[scanward: log capped at {cap} bytes: "
                                f"{dropped - len(tail)} bytes dropped, the last "
                                f"{len(tail)} follow]\n").encode() + tail)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _children() -> list[int] | None:
    """This process's children (the command, and descendants reparented to it), or None
    on a kernel without /proc/<pid>/task/<tid>/children."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:
        return None


def _reap_all() -> None:
    """Kill and reap every remaining descendant, including any that left the group."""
    while True:
        children = _children()
        if children is None:  # cannot list them: reap the dead ones, wait for no one
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            return
        if not children:
            return
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, 0)


def _exec_child(command: list[str], reaper: int, stdout_to_stderr: bool,
                output: tuple[int, int] | None = None) -> None:
    """In the forked child: own process group, die with the reaper, become ``command``
    (its stdout and stderr the write end of ``output``, a pipe, when given)."""
    try:
        os.setpgid(0, 0)
        if stdout_to_stderr:
            os.dup2(2, 1)
        if output is not None:
            os.dup2(output[1], 1)
            os.dup2(output[1], 2)
            os.close(output[0])
            os.close(output[1])
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != reaper:  # the reaper died before prctl took effect
            os._exit(128 + signal.SIGKILL)
        # Python ignores SIGPIPE and exec keeps ignored signals: give git the defaults
        # (what subprocess's restore_signals does).
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *_STOP_SIGNALS):
            signal.signal(sig, signal.SIG_DFL)
        os.execvp(command[0], command)  # noqa: S606 (argv from the worker, no shell)
    except BaseException as e:  # exec failed: say why, exit like a shell would
        with contextlib.suppress(BaseException):
            os.write(2, f"reaper: cannot run {command[0]}: {e}\n".encode())
        os._exit(127)


def _parse(argv: list[str]) -> tuple[int, list[list[str]], bool, int | None] | None:
    """(worker pid, commands, steps mode, log cap) or None for a bad command line."""
    if len(argv) >= 5 and argv[1] == "--cap" and argv[2].isdigit() and argv[3] == "--":
        return int(argv[0]), [argv[4:]], False, int(argv[2])
    if len(argv) >= 3 and argv[1] == "--":
        return int(argv[0]), [argv[2:]], False, None
    if len(argv) >= 4 and argv[1] == "--steps":
        steps, rest = [], argv[2:]
        while rest:
            n = int(rest[0]) if rest[0].isdigit() else 0
            if n < 1 or len(rest) < 1 + n:
                return None
            steps.append(rest[1:1 + n])
            rest = rest[1 + n:]
        return int(argv[0]), steps, True, None
    return None


def main(argv: list[str]) -> int:
    parsed = _parse(argv)
    if parsed is None:
        os.write(2, b"usage: reaper.py <worker-pid> -- <command> [args...]\n"
                    b"       reaper.py <worker-pid> --steps <n> <command> [args...] ...\n"
                    b"       reaper.py <worker-pid> --cap <bytes> -- <command> [args...]\n")
        return 2
    worker, commands, steps_mode, cap = parsed
    child = 0
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child:
            _kill_group(child)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, stop)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != worker:  # the worker died before prctl took effect
        return 128 + signal.SIGTERM
    reaper = os.getpid()
    code, step = 0, -1
    for command in commands:
        step += 1
        if stopping:  # stopped before this command started
            code = 128 + signal.SIGTERM
            break
        output = os.pipe() if cap is not None else None
        pid = os.fork()
        if pid == 0:
            _exec_child(command, reaper, steps_mode, output)
        pump = None
        if output is not None and cap is not None:
            os.close(output[1])  # EOF once the command and all it started are gone
            pump = threading.Thread(target=_pump, args=(output[0], 1, cap), daemon=True)
            pump.start()
        # Both sides set the group (the usual race-free idiom); it exists before `child`
        # is set, so the handler never signals a group that is not there yet.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        child = pid
        if stopping:
            _kill_group(child)
        # Wait without reaping: while the exited command is a zombie its pid cannot be
        # reused, so killing its group afterwards cannot hit an unrelated process.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        _kill_group(pid)
        _, status = os.waitpid(pid, 0)
        child = 0
        _reap_all()
        if pump is not None:
            pump.join(_PUMP_JOIN_SECONDS)
        code = os.waitstatus_to_exitcode(status)
        code = code if code >= 0 else 128 - code
        if code != 0:
            break
    if steps_mode:
        os.write(1, f"step={step} code={code}\n".encode())
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

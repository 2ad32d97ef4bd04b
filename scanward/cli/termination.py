"""SIGTERM as an interruption: what ``timeout``, a CI job's cancel, ``kill`` and
Kubernetes send. Python's default ends the process at once, so a command that started
work elsewhere (``scanward load``: scans on a deployment, a dev server and a worker
process) left it all running. Within :func:`sigterm_interrupts` SIGTERM cancels the
command's task instead, as Ctrl-C does, so its clean-up runs, and the command ends with
one line saying so."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

from scanward.cli.app import CliError


@contextlib.asynccontextmanager
async def sigterm_interrupts() -> AsyncIterator[None]:
    """Run the body so that SIGTERM cancels the current task; the cancellation, once
    the body has cleaned up, becomes a :class:`CliError` ``terminated (SIGTERM)``."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    got: list[bool] = []

    def terminate() -> None:
        got.append(True)
        if task is not None:
            task.cancel()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        yield
    except asyncio.CancelledError:
        if not got:
            raise
        if task is not None:
            task.uncancel()
        raise CliError("terminated (SIGTERM)") from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)

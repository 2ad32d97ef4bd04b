"""Job backends: where a scanner attempt runs. One interface, chosen by worker
configuration (``SCANWARD_BACKEND``): ``local`` (a subprocess, the embedded default) or
``kubernetes`` (a batch/v1 Job)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from temporalio import activity

from scanward.catalog import ScannerSpec
from scanward.contract import FailureClass, ScannerJobInput, ScannerJobResult
from scanward.job_spec import LOG_FILE, SARIF_FILE, results_subpath

# Called with no argument, or with one detail: what the attempt waits for (Temporal
# keeps an activity's last heartbeat details; `scanward status` shows them).
Heartbeat = Callable[..., Awaitable[None] | None]
T = TypeVar("T")


class ScannerFailed(Exception):
    """A scanner attempt failed; ``failure`` says how, so the policy can choose."""

    def __init__(self, failure: FailureClass, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message


@dataclass(frozen=True)
class JobPaths:
    """Where one attempt reads its source and writes its SARIF and log."""

    source: Path
    out_dir: Path
    sarif: Path
    log: Path
    sarif_subpath: str  # relative to the results root


def job_paths(workspace_root: Path, results_root: Path, job: ScannerJobInput) -> JobPaths:
    """The attempt's paths: the same results layout as a Job's results subPath."""
    sub = results_subpath(job)
    out = results_root / sub
    return JobPaths(
        source=workspace_root / job.checkout.source_subpath,
        out_dir=out,
        sarif=out / SARIF_FILE,
        log=out / LOG_FILE,
        sarif_subpath=f"{sub}/{SARIF_FILE}",
    )


async def wait_heartbeating(waiter: asyncio.Future[T], heartbeat: Heartbeat,
                            every: float) -> T:
    """Await ``waiter``, heartbeating every ``every`` seconds until it is done. The
    waiter is not cancelled when this is: the caller decides what stops it."""
    while not waiter.done():
        await asyncio.wait({waiter}, timeout=every)
        if not waiter.done():
            await heartbeat_once(heartbeat)
    return waiter.result()


async def heartbeat_once(heartbeat: Heartbeat, *details: object) -> None:
    """Heartbeat once (with ``details``), awaiting a heartbeat that is a coroutine."""
    pending = heartbeat(*details)
    if pending is not None:
        await pending


class JobBackend(Protocol):
    """Runs one scanner attempt to its end and reports where the SARIF is.

    ``run`` raises :class:`ScannerFailed` for a classified failure, and must stop the
    job (no orphans) when cancelled with ``asyncio.CancelledError``. ``stop`` ends an
    attempt from outside its ``run``, so that a cancel does not wait for a heartbeat."""

    name: str

    def start(self) -> None:
        """Connect and check the configuration before the worker polls; raise on error."""

    def close(self) -> None:
        """Release connections and threads."""

    async def run(self, job: ScannerJobInput, spec: ScannerSpec, heartbeat: Heartbeat,
                  heartbeat_every: float) -> ScannerJobResult: ...

    async def stop(self, job: ScannerJobInput) -> str:
        """Stop the attempt now, from any worker (the scan was cancelled); idempotent.
        Returns what was done, for the activity's log."""
        ...


def worker_leaving() -> bool:
    """True in an activity cancelled because its worker is shutting down (a deploy), not
    because the scan was cancelled: a job that can outlive the worker is left running
    for the retried activity on another worker to adopt."""
    if not activity.in_activity():
        return False
    details = activity.cancellation_details()
    return bool(details and details.worker_shutdown and not details.cancel_requested)


def classify_exit(spec: ScannerSpec, exit_code: int) -> FailureClass | None:
    """None when ``exit_code`` means success (0 or a "findings" code), else the class."""
    if exit_code == 0 or exit_code in spec.findings_exit_codes:
        return None
    if exit_code in spec.bad_input_exit_codes:
        return FailureClass.BAD_INPUT
    return FailureClass.CRASHED

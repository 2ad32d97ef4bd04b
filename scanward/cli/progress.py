"""A scan's progress as the CLI shows it: the per-scanner table, reasons, the live watch."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from datetime import timedelta
from enum import StrEnum

from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHistoryEventFilterType,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.exceptions import CancelledError, TerminatedError
from temporalio.service import RPCError, RPCStatusCode

from scanward import client as api
from scanward.cli.app import EXIT_DEAD, CliError, err, note, one_line, out
from scanward.contract import ScannerRun, ScannerStatus, ScanStatus, ScanSummary
from scanward.job_status import read_waiting_detail


class Format(StrEnum):
    table = "table"
    json = "json"


def progress_table(summary: ScanSummary, *, reasons: bool = True,
                   title: str | None = None) -> Table:
    """Per-scanner progress; with ``reasons``, each reason's first line (the live view:
    ``status`` prints them in full below the table instead)."""
    table = Table(title=title or f"{summary.scan_id}: {summary.status.value}",
                  title_justify="left")
    columns = ["scanner", "status", "attempts", "memory", "findings", "failure"]
    for col in columns + (["reason"] if reasons else []):
        table.add_column(col)
    for run in summary.scanners:
        row = [
            run.scanner, run.status.value, str(run.attempts),
            f"{run.resources.memory_mib} MiB" if run.resources else "",
            "" if run.finding_count is None else str(run.finding_count),
            run.failure_class.value if run.failure_class else "",
        ]
        if reasons:
            row.append((run.reason or "").splitlines()[0][:80] if run.reason else "")
        table.add_row(*row)
    return table


def _print_reasons(summary: ScanSummary) -> None:
    """The scan's and each scanner's reason in full (log lines included), each under a
    heading, wrapped with an indent."""
    reasons = [("scan", summary.status.value, summary.reason)] + [
        (run.scanner, run.status.value, run.reason) for run in summary.scanners] + [
        (run.scanner, f"{run.status.value}, with errors of its own", run.warning)
        for run in summary.scanners if run.warning] + [
        ("webhook", "not delivered", hook) for hook in summary.undelivered_webhooks]
    for name, state, reason in reasons:
        if reason:
            out.print(f"{name} ({state}):", markup=False, highlight=False)
            for line in reason.splitlines():
                out.print(textwrap.fill(line, width=max(out.width, 40), initial_indent="  ",
                                        subsequent_indent="    ", break_long_words=False,
                                        break_on_hyphens=False),
                          markup=False, highlight=False, soft_wrap=True)


def print_report(report: api.ScanReport, fmt: Format) -> None:
    state, summary = report.state, report.summary
    workflow = state.workflow_status.name if state.workflow_status else None
    if fmt is Format.json:
        print(json.dumps({
            "scan_id": state.scan_id,
            "status": state.status,  # the scan's state now, "terminated" included
            "workflow_status": workflow,
            "scan_status": state.scan_status.value if state.scan_status else None,
            "failure": state.failure,
            "query_error": report.query_error,
            "waiting": list(state.waiting),
            "summary": summary.model_dump(mode="json") if summary else None,
        }, indent=2))
        return
    if summary is not None:
        title = None
        if not state.running and summary.status in (ScanStatus.RUNNING, ScanStatus.DEAD):
            # The workflow closed (terminated, timed out) before the scan ended: its
            # last answer still says running or dead.
            title = (f"{state.scan_id}: {state.closed_as} (workflow {workflow} while the "
                     f"scan was {summary.status.value})")
        out.print(progress_table(summary, reasons=False, title=title))
        _print_reasons(summary)
    else:
        scan_status = state.scan_status.value if state.scan_status else "unknown"
        out.print(f"{state.scan_id}: {state.status} (workflow {workflow}, ScanStatus "
                  f"{scan_status})", markup=False, highlight=False)
        out.print(f"no progress from the workflow: {report.query_error}", markup=False,
                  highlight=False)
    for waiting in state.waiting:
        # A scanner attempt whose pod has not started: what holds it (its heartbeat).
        out.print(f"waiting: {waiting}", markup=False, highlight=False, soft_wrap=True)
    if state.failure and not (summary and summary.reason and state.failure in summary.reason):
        out.print(f"workflow {workflow}: {state.failure}", markup=False, highlight=False)


def _dead_notice(scan_id: str, run: ScannerRun) -> str:
    """The scanner, its reason (the last log lines indented below) and what to run."""
    first, *rest = (run.reason or run.failure_class or "no reason given").splitlines()
    return "\n".join([f"{run.scanner} is dead: {first}", *(f"  {line}" for line in rest),
                      f"  retry with `scanward retry {scan_id}` or abandon with "
                      f"`scanward abandon {scan_id}`"])


def ended_reason(summary: ScanSummary) -> str:
    """Why a scan that ended but did not complete ended so: for a partial one, the
    abandoned scanners and their reasons."""
    abandoned = [f"{r.scanner} abandoned: {r.reason or 'no reason given'}"
                 for r in summary.scanners if r.status is ScannerStatus.ABANDONED]
    parts = ([summary.reason] if summary.reason else []) + abandoned
    return one_line("; ".join(parts)) or "no reason recorded"


async def _final_view(client: Client, scan_id: str) -> Table | Text:
    """A closed scan's final table (its progress query, answered by a worker replaying
    it), or, when no worker answers, how Temporal says it closed."""
    try:
        return progress_table(await api.progress(client, scan_id, timedelta(seconds=5)))
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        state = await api.describe(client, scan_id)
        return Text(f"{scan_id}: {state.closed_as}")


async def _termination_reason(client: Client, scan_id: str) -> str:
    """The reason given to ``temporal workflow terminate`` (the SDK's error only says
    "terminated by user via frontend"); empty if it cannot be read."""
    try:
        async for event in client.get_workflow_handle(scan_id).fetch_history_events(
                event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT):
            return str(event.workflow_execution_terminated_event_attributes.reason)
    except RPCError:
        pass
    return ""


# How long `scan --wait` keeps waiting through a Temporal outage (the scan itself is
# durable and carries on once the server is back) before it gives up with one line.
OUTAGE_PATIENCE = timedelta(minutes=5)
# A live-view query or a result poll that takes longer than this is a stalled server:
# without a deadline the SDK waits on a frozen frontend for ever.
WATCH_RPC_TIMEOUT = timedelta(seconds=10)
DESCRIBE_EVERY = 5.0  # seconds between two "has it closed?" asks while it runs
_OPEN = (ScanStatus.RUNNING, ScanStatus.DEAD)


async def watch(client: Client, scan_id: str, *, stop_on_dead: bool = False,
                outage_patience: timedelta = OUTAGE_PATIENCE) -> ScanSummary:
    """Show live per-scanner progress until the scan ends; return its summary. A scanner
    that dies is announced once (again if it dies again after a retry); with
    ``stop_on_dead`` the watch ends there with :data:`EXIT_DEAD`. A Temporal outage is
    announced on stderr and waited through for up to ``outage_patience``."""
    announced: set[str] = set()
    said: dict[str, str] = {}  # what each waiting scanner attempt was said to wait for
    outage = _Outage(client, scan_id, outage_patience)
    try:
        with Live(console=out, refresh_per_second=4, transient=False) as live:
            try:
                current: ScanSummary | None = None
                described = 0.0
                while True:
                    # Whether it has closed: at once when the live answer says it ended
                    # or there is none, else every few seconds (a terminated scan's
                    # query answers "running" for ever); not twice a second per waiter.
                    if (current is None or current.status not in _OPEN
                            or time.monotonic() - described >= DESCRIBE_EVERY):
                        described = time.monotonic()
                        if (summary := await _next(client, scan_id, outage,
                                                   said)) is not None:
                            break
                    try:
                        current = await api.progress(client, scan_id, WATCH_RPC_TIMEOUT)
                        outage.back()
                    except RPCError as e:
                        current = None
                        if api.unavailable(e):  # noticed here first, as often as not
                            outage.lost(e)
                    except (WorkflowQueryFailedError, WorkflowQueryRejectedError):
                        current = None  # no first workflow task yet
                    if current is not None:
                        live.update(progress_table(current))
                        dead = {r.scanner: r for r in current.scanners
                                if r.status is ScannerStatus.DEAD}
                        for name in sorted(dead.keys() - announced):
                            err.print(f"scanward: {_dead_notice(scan_id, dead[name])}",
                                      markup=False, highlight=False, soft_wrap=True)
                        announced = set(dead)
                        if dead and stop_on_dead:
                            raise CliError(f"scan {scan_id} is waiting for an operator: "
                                           f"{', '.join(sorted(dead))} dead", EXIT_DEAD)
                    await asyncio.sleep(0.5 if outage.since is None else 2.0)
            except WorkflowFailureError as e:
                # The table shows the last live answer (running, pending): show how the
                # scan ended instead, before the error.
                live.update(await _final_view(client, scan_id))
                cause = e.cause
                if isinstance(cause, CancelledError):  # not a failure of the scan's own
                    raise CliError(f"scan {scan_id} was cancelled") from e
                if isinstance(cause, TerminatedError):
                    why = await _termination_reason(client, scan_id)
                    raise CliError(f"scan {scan_id} was terminated"
                                   + (f": {one_line(why)}" if why else "")) from e
                raise CliError(f"scan {scan_id} failed: "
                               f"{getattr(cause, 'message', cause)}") from e
            live.update(progress_table(summary))
    finally:
        out.print()
    return summary


def waiting_notes(said: dict[str, str], waiting: tuple[str, ...]) -> list[str]:
    """What to announce of ``waiting`` (scanner attempts' heartbeat lines, "k attempt 1
    waiting 40s: why"): each attempt's reason once, again only when it changes; ``said``
    (attempt -> reason) is updated, and forgets attempts no longer waiting."""
    now = {}
    for line in waiting:
        if (read := read_waiting_detail(line)) is not None:
            now[read[0]] = one_line(read[1])
    notes = [f"{who} is waiting: {why}" for who, why in now.items() if said.get(who) != why]
    said.clear()
    said.update(now)
    return notes


async def _next(client: Client, scan_id: str, outage: _Outage,
                said: dict[str, str] | None = None) -> ScanSummary | None:
    """The scan's result once it has closed, else None; None too while Temporal is
    unreachable, until ``outage`` runs out of patience. While it runs, what its scanner
    attempts wait for is announced on stderr (``said``: what was, from the same
    describe: no request of its own)."""
    try:
        summary = await _poll_result(client, scan_id, said)
    except RPCError as e:
        if not api.unavailable(e):
            raise
        outage.lost(e)  # raises CliError once the patience has run out
        return None
    outage.back()
    return summary


async def _poll_result(client: Client, scan_id: str,
                       said: dict[str, str] | None = None) -> ScanSummary | None:
    """The scan's result if it has closed, else None, within one short RPC. Why not
    ``handle.result()``: its long poll has no deadline (a stalled frontend holds it for
    ever) and fails for good on the first outage longer than the SDK's retries."""
    h = api.handle(client, scan_id)
    try:
        async with asyncio.timeout(WATCH_RPC_TIMEOUT.total_seconds()):
            desc = await h.describe(rpc_timeout=WATCH_RPC_TIMEOUT)
            if desc.status is WorkflowExecutionStatus.RUNNING:
                if said is not None:
                    for note in waiting_notes(said, await api.waiting(client, desc)):
                        err.print(f"scanward: {note}", markup=False, highlight=False,
                                  soft_wrap=True)
                return None
            # Closed: its close event is there at once (no long poll).
            result: ScanSummary = await h.result(rpc_timeout=WATCH_RPC_TIMEOUT)
            return result
    except TimeoutError as e:  # the RPC deadline did not hold: a frozen server
        raise RPCError(f"no answer from Temporal within "
                       f"{WATCH_RPC_TIMEOUT.total_seconds():g}s",
                       RPCStatusCode.DEADLINE_EXCEEDED, b"") from e


class _Outage:
    """Tracks a Temporal outage during a watch: one note when it starts and one when it
    ends, and a :class:`CliError` once it has lasted longer than the patience."""

    def __init__(self, client: Client, scan_id: str, patience: timedelta) -> None:
        self.address = client.service_client.config.target_host
        self.scan_id = scan_id
        self.patience = patience
        self.since: float | None = None

    def lost(self, e: RPCError) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            note(f"lost contact with Temporal at {self.address} ({e.message}); scan "
                 f"{self.scan_id} keeps running there: waiting up to "
                 f"{self.patience.total_seconds():g}s for Temporal to come back")
        elif now - self.since >= self.patience.total_seconds():
            raise CliError(
                f"Temporal at {self.address} unreachable for {now - self.since:.0f}s while "
                f"waiting for scan {self.scan_id} ({e.message}); the scan is durable: see "
                f"`scanward status {self.scan_id}` once Temporal is back")

    def back(self) -> None:
        if self.since is not None:
            note(f"Temporal at {self.address} answers again after "
                 f"{time.monotonic() - self.since:.0f}s; waiting for scan {self.scan_id}")
            self.since = None

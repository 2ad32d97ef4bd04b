"""A scan's progress as the CLI shows it: the per-scanner table, reasons, the live watch."""

from __future__ import annotations

import asyncio
import json
import textwrap
from datetime import timedelta
from enum import StrEnum

from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHistoryEventFilterType,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.exceptions import CancelledError, TerminatedError
from temporalio.service import RPCError

from scanward import client as api
from scanward.cli.app import EXIT_DEAD, CliError, err, one_line, out
from scanward.contract import ScannerRun, ScannerStatus, ScanStatus, ScanSummary


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


async def watch(client: Client, scan_id: str, *, stop_on_dead: bool = False) -> ScanSummary:
    """Show live per-scanner progress until the scan ends; return its summary. A scanner
    that dies is announced once (again if it dies again after a retry); with
    ``stop_on_dead`` the watch ends there with :data:`EXIT_DEAD`."""
    handle = api.handle(client, scan_id)
    result: asyncio.Task[ScanSummary] = asyncio.ensure_future(handle.result())
    announced: set[str] = set()
    try:
        with Live(console=out, refresh_per_second=4, transient=False) as live:
            while not result.done():
                try:
                    summary = await api.progress(client, scan_id)
                except RPCError:
                    summary = None  # the workflow has not run its first task yet
                if summary is not None:
                    live.update(progress_table(summary))
                    dead = {r.scanner: r for r in summary.scanners
                            if r.status is ScannerStatus.DEAD}
                    for name in sorted(dead.keys() - announced):
                        err.print(f"scanward: {_dead_notice(scan_id, dead[name])}",
                                  markup=False, highlight=False, soft_wrap=True)
                    announced = set(dead)
                    if dead and stop_on_dead:
                        raise CliError(f"scan {scan_id} is waiting for an operator: "
                                       f"{', '.join(sorted(dead))} dead", EXIT_DEAD)
                await asyncio.wait({result}, timeout=0.5)
            try:
                summary = result.result()
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
        result.cancel()
        out.print()
    return summary



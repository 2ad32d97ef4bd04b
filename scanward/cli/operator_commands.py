"""Operator commands on running scans: retry, abandon, cancel."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from scanward import client as api
from scanward.cli.app import EXIT_USAGE, CliError, out, run_command
from scanward.contract import AbandonSignal, RetrySignal, ScanStatus


def retry(
    scan_id: Annotated[str | None, typer.Argument()] = None,
    scanner: Annotated[str | None, typer.Option(
        help="Only this dead scanner (with --all-dead: only the scans in which it is "
             "dead).")] = None,
    memory_mib: Annotated[int | None, typer.Option(help="Memory for the retry.")] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Every dead scan, in one "
                                           "batch (not with a scan id).")] = False,
    tenant: Annotated[str | None, typer.Option(help="With --all-dead: only this tenant's "
                                               "scans.")] = None,
) -> None:
    """Retry dead scanners of a scan (refused, with the reason, if none would be), or of
    every dead scan (one batch signal)."""

    async def go() -> None:
        signal = RetrySignal(scanner=scanner, memory_mib=memory_mib)
        if all_dead and scan_id is not None:
            # The id used to be ignored: every dead scan in the namespace was retried.
            raise CliError("give a scan id or --all-dead, not both", EXIT_USAGE)
        if not (all_dead or scan_id):
            raise CliError("give a scan id or --all-dead", EXIT_USAGE)
        if tenant is not None and not all_dead:
            raise CliError("--tenant selects scans for --all-dead; a scan id names one", EXIT_USAGE)
        if all_dead:
            # Checked before connecting: they become part of a visibility query.
            api.status_query(ScanStatus.DEAD, tenant, dead_scanner=scanner)
            client = await api.connect()
            job = await api.retry_all_dead(client, signal, tenant=tenant)
            which = " ".join(filter(None, [f"of tenant {tenant}" if tenant else "",
                                           f"with {scanner} dead" if scanner else ""]))
            out.print(f"batch {job} signalled every dead scan{' ' + which if which else ''}",
                      highlight=False)
        elif scan_id is not None:
            retried = await api.retry(await api.connect(), scan_id, signal)
            out.print(f"{scan_id}: retrying {', '.join(retried)}", highlight=False)

    run_command(go())


def abandon(
    scan_id: str,
    scanner: Annotated[str | None, typer.Option(help="Only this dead scanner.")] = None,
    reason: Annotated[str, typer.Option(help="Why (the scan shows it).")
                      ] = "abandoned by operator",
) -> None:
    """Give up on dead scanners (refused, with the reason, if none is dead); the scan
    ends partial."""

    async def go() -> None:
        if not reason.strip():
            raise CliError("--reason must say why (the scan shows it as the scanners' "
                           "reason)")
        abandoned = await api.abandon(await api.connect(), scan_id,
                                      AbandonSignal(scanner=scanner, reason=reason.strip()))
        out.print(f"{scan_id}: abandoned {', '.join(abandoned)}", highlight=False)

    run_command(go())


def cancel(
    scan_id: str,
    wait: Annotated[bool, typer.Option(help="Wait until the scan has closed.")] = True,
    wait_seconds: Annotated[float, typer.Option(help="How long to wait.")] = 10.0,
) -> None:
    """Cancel a running scan: its running scanners are stopped."""

    async def go() -> None:
        client = await api.connect()
        await api.cancel(client, scan_id)
        if not wait:
            out.print(f"cancel requested for {scan_id}", highlight=False)
            return
        try:
            state = await api.wait_closed(client, scan_id, timedelta(seconds=wait_seconds))
        except RPCError as e:
            if not api.unavailable(e):
                raise
            # The cancel was recorded: saying "temporal: tcp connect error" alone read as
            # if it had not been.
            raise CliError(f"cancel requested for {scan_id}, but Temporal stopped answering "
                           f"before it closed ({e.message}); see `scanward status {scan_id}` "
                           "once Temporal is back") from e
        if state.running:
            raise CliError(f"cancel requested, but {scan_id} is still running after "
                           f"{wait_seconds:g}s (stopping its scanners); see `scanward status "
                           f"{scan_id}`")
        if state.workflow_status is not WorkflowExecutionStatus.CANCELED:
            raise CliError(f"scan {scan_id} ended {state.closed_as} before the cancel took "
                           "effect")
        summary = (await api.report(client, scan_id)).summary
        if summary is not None and summary.not_stopped:
            # Cancelled, but not everything it started has stopped: not done.
            raise CliError(f"scan {scan_id} cancelled, but could not stop "
                           f"{'; '.join(summary.not_stopped)}: it may still be running")
        out.print(f"scan {scan_id} cancelled", highlight=False)

    run_command(go())



"""Commands that start scans and read them: scan, status, findings, triage, history,
logs, list."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from typing import Annotated

import typer
from rich.table import Table
from temporalio.service import RPCError

from scanward import client as api
from scanward.cli.app import (
    EXIT_DEAD,
    EXIT_GATE,
    CliError,
    err,
    fail,
    notify_targets,
    one_line,
    open_store,
    out,
    repository_url,
    run_command,
)
from scanward.cli.findings_view import (
    FindingsFormat,
    FindingsView,
    ScanNotStored,
    check_gate,
    print_findings,
)
from scanward.cli.progress import Format, ended_reason, print_report, watch
from scanward.contract import ScanRequest, ScanStatus, Severity
from scanward.lifecycle import TriageState
from scanward.settings import Settings

Scanners = Annotated[list[str], typer.Option("--scanner", "-s", help="Scanner to run (repeat).")]


def scan(
    repository: Annotated[str, typer.Argument(help="Repository URL or local directory.")],
    ref: Annotated[str, typer.Option(help="Branch, tag or HEAD.")] = "HEAD",
    commit: Annotated[str | None, typer.Option(help="Exact commit SHA.")] = None,
    scanner: Scanners = ["bandit"],  # noqa: B006 - typer reads the default
    tenant: str = "default",
    key: Annotated[str, typer.Option(help="Dedupe key: a new key scans again.")] = "",
    notify: Annotated[list[str], typer.Option(help="Webhook as URL=SECRET_NAME.")] = [],  # noqa: B006
    cluster: Annotated[str | None, typer.Option(help="Route to this cluster's workers.")] = None,
    wait: Annotated[bool, typer.Option(help="Show progress, then the findings.")] = False,
    wait_dead: Annotated[bool, typer.Option(
        help="With --wait: keep waiting while a scanner is dead (announced on stderr); "
             f"--no-wait-dead exits {EXIT_DEAD} instead.")] = True,
    fail_on: Annotated[Severity | None, typer.Option(
        help=f"With --wait: exit {EXIT_GATE} if the scan has open findings at or above "
             "this severity (suppressed and triaged ones do not count).")] = None,
    fail_on_new: Annotated[Severity | None, typer.Option(
        help=f"With --wait: exit {EXIT_GATE} if the scan has NEW open findings at or above "
             "this severity (new: not in the previous scan of this ref).")] = None,
) -> None:
    """Scan the commit REF names now: the same commit with the same scanners is the same
    scan (joined while it runs, its result shown once ended); a moved branch is a new one."""

    if (fail_on or fail_on_new) and not wait:
        raise typer.BadParameter("--fail-on and --fail-on-new need --wait")

    async def go() -> None:
        settings = Settings.from_env()
        # Scanner names are checked for syntax here; which scanners exist is the
        # workers' catalog's call (a scan naming an unknown one fails at once).
        request = ScanRequest(
            repository=repository_url(repository), ref=ref, commit=commit,
            scanners=tuple(scanner), tenant=tenant, dedupe_key=key,
            notify=notify_targets(notify), cluster=cluster,
        )
        client = await api.connect()
        request = await api.with_commit(client, request, task_queue=settings.task_queue)
        handle = await api.start_scan(client, request, task_queue=settings.task_queue)
        what = f"{request.ref} at {(request.commit or '')[:12]}"
        state = await api.describe(client, handle.id)
        if state.running:
            out.print(f"scan {handle.id} of {what} running", highlight=False)
        else:  # this commit was scanned already with these scanners: that is the answer
            # The scan's own word (partial, failed ...), not its workflow's (completed).
            out.print(f"scan {handle.id} of {what} already ended ({state.closed_as}); "
                      "--key scans again", highlight=False)
        if wait:
            summary = await watch(client, handle.id, stop_on_dead=not wait_dead)
            if summary.status in (ScanStatus.FAILED, ScanStatus.CANCELLED):
                # Its stored findings (if any scanner finished) are not the scan's.
                raise CliError(f"scan ended {summary.status.value}: {ended_reason(summary)}")
            shown = print_findings(handle.id)
            if summary.status is not ScanStatus.COMPLETED:
                raise CliError(f"scan ended {summary.status.value}: {ended_reason(summary)}")
            check_gate(shown, fail_on, fail_on_new)

    run_command(go())


def status(scan_id: str, format: Format = Format.table) -> None:
    """Progress of a scan: each scanner, and every reason in full."""

    async def go() -> None:
        print_report(await api.report(await api.connect(), scan_id), format)

    run_command(go())


def findings(
    scan_id: str,
    new: Annotated[bool, typer.Option("--new", help="Only new findings: not in the previous "
                                      "scan of the same ref and scanners.")] = False,
    fixed: Annotated[bool, typer.Option("--fixed", help="The previous scan's findings this "
                                        "one no longer has.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Every finding, also those suppressed "
                                       "by the tool or triaged.")] = False,
    severity: Annotated[list[Severity] | None, typer.Option(
        help="Only these severities (repeat).")] = None,
    format: FindingsFormat = FindingsFormat.table,
) -> None:
    """Stored findings of a scan: by default the open ones (new and existing, not
    suppressed), with their state since the previous scan of the ref. An unknown scan is
    an error, not an empty list. --format sarif writes SARIF 2.1.0 (GitHub, GitLab)."""
    from scanward.store import StoreError  # see open_store

    if new + fixed + all_ > 1:
        raise typer.BadParameter("--new, --fixed and --all exclude each other")
    view = (FindingsView.new if new else FindingsView.fixed if fixed
            else FindingsView.all if all_ else FindingsView.open)
    try:
        print_findings(scan_id, format, view, tuple(severity or ()))
    except ScanNotStored as e:
        fail(api.run(_not_stored(scan_id, str(e))))
    except (CliError, StoreError) as e:
        fail(str(e))


async def _not_stored(scan_id: str, otherwise: str) -> str:
    """Why the store has no row for ``scan_id``, as Temporal knows it: no such scan, a
    scan still running, or one that ended (failed, cancelled) before any scanner stored
    findings; ``otherwise`` when Temporal cannot be asked."""
    try:
        async with asyncio.timeout(15):
            state = await api.describe(await api.connect(), scan_id)
    except api.ScanNotFound:
        return f"no such scan: {scan_id} (neither in the store nor in Temporal)"
    except (RuntimeError, RPCError, TimeoutError):
        return otherwise
    if state.running:
        return (f"scan {scan_id} has no stored findings yet: it is {state.status} (see "
                f"`scanward status {scan_id}`)")
    why = f": {one_line(state.failure)}" if state.failure else ""
    return f"scan {scan_id} ended {state.closed_as} before any findings were stored{why}"


def triage(
    fingerprint: Annotated[str, typer.Argument(
        help="The finding's fingerprint as `findings` shows it (8+ hex digits).")],
    state: Annotated[TriageState, typer.Option(help="false_positive or accepted_risk "
                                               "(not counted), or open (counted again).")],
    reason: Annotated[str | None, typer.Option(help="Why (required unless --state open).")
                      ] = None,
    by: Annotated[str | None, typer.Option(help="Who decides (default: $USER).")] = None,
    tenant: Annotated[str | None, typer.Option(help="When the fingerprint is in several "
                                               "tenants.")] = None,
    repository: Annotated[str | None, typer.Option(help="When the fingerprint is in "
                                                   "several repositories.")] = None,
) -> None:
    """Triage a finding in its repository, for every scan of it, past and future: it
    keeps the state when its line moves. Unknown fingerprints are an error."""
    import getpass

    from scanward.store import StoreError

    chosen = TriageState(state)
    if chosen is not TriageState.OPEN and not (reason and reason.strip()):
        raise typer.BadParameter(f"--reason is required for --state {chosen.value}")
    who = by or os.environ.get("USER") or getpass.getuser()
    try:
        store = open_store()
        try:
            done = store.set_triage(
                fingerprint, chosen, reason=(reason or "reopened").strip(), by=who,
                tenant=tenant,
                repository=repository_url(repository) if repository else None)
        finally:
            store.close()
    except StoreError as e:
        fail(str(e))
    out.print(f"{done.match_fingerprint[:12]} in {done.tenant} {done.repository}: "
              f"{done.triage.state.value} by {done.triage.by} ({done.triage.reason}); "
              f"{done.findings} stored finding(s), and every later scan", markup=False,
              highlight=False, soft_wrap=True)


def history(
    repository: Annotated[str, typer.Argument(help="Repository URL or local directory.")],
    ref: Annotated[str | None, typer.Option(help="Only scans of this ref.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only scans of this tenant.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
    format: Format = Format.table,
) -> None:
    """A repository's scans, latest first, with new / existing / fixed per scan."""
    from scanward.store import StoreError

    repo = repository_url(repository)
    try:
        store = open_store()
        try:
            entries = store.history(repo, ref=ref, tenant=tenant, limit=limit)
        finally:
            store.close()
    except StoreError as e:
        fail(str(e))
    if not entries:
        fail(f"no scans of {repo} in the store"
              + (f" for ref {ref}" if ref else "") + (f" in tenant {tenant}" if tenant else ""))
    if format is Format.json:
        print(json.dumps([{**dataclasses.asdict(h), "status": h.status.value,
                           "created_at": h.created_at.isoformat(),
                           "finished_at": h.finished_at.isoformat() if h.finished_at else None}
                          for h in entries], indent=2))
        return
    title = f"scans of {repo}" + (f" at {ref}" if ref else "")
    table = Table(title=title, title_justify="left")
    # Each tenant's scans are compared among themselves: with several tenants in one
    # table, a row's counts make sense only beside its tenant.
    tenants = len({h.tenant for h in entries}) > 1
    columns = ["scan", *(["tenant"] if tenants else []), *([] if ref else ["ref"]), "commit",
               "status", "finished", "open", "new", "existing", "fixed", "suppressed"]
    for col in columns:
        table.add_column(col, no_wrap=True, min_width=len(col))

    def n(value: int | None) -> str:
        return "" if value is None else str(value)

    for h in entries:
        # Open: new + existing (not suppressed); the stored count for scans without one.
        opened = h.finding_count if h.new is None else h.new + (h.existing or 0)
        table.add_row(h.scan_id, *([h.tenant] if tenants else []), *([] if ref else [h.ref]),
                      (h.commit or "")[:7],
                      h.status.value,
                      f"{h.finished_at:%m-%d %H:%M}" if h.finished_at else "",
                      str(opened), n(h.new), n(h.existing), n(h.fixed), n(h.suppressed))
    out.print(table, markup=False, highlight=False)


def logs(
    scan_id: str,
    scanner: Annotated[str, typer.Option(help="The scanner whose log to print.")],
    attempt: Annotated[int | None, typer.Option(min=1, help="Which attempt (default: the "
                                                "last).")] = None,
) -> None:
    """Print a scanner attempt's log (scanner.log), kept after the scan ended for
    SCANWARD_LOG_RETENTION_DAYS days (14). Read from the workers' results volume at
    SCANWARD_RESULTS: run it on a worker's machine or where that volume is mounted."""
    import sys

    from scanward import attempt_logs

    try:
        found = attempt_logs.find_log(Settings.from_env().results_root, scan_id, scanner,
                                      attempt)
        err.print(f"{scan_id} {found.scanner} attempt {found.attempt} of "
                  f"{len(found.attempts)}: {found.path}", markup=False, highlight=False,
                  soft_wrap=True)
        attempt_logs.copy_log(found, sys.stdout.buffer)
    except (attempt_logs.LogUnavailable, OSError) as e:
        fail(str(e))


def list_scans(
    status: Annotated[ScanStatus | None, typer.Option(help="Only scans in this state.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's scans.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many scans.")] = 50,
) -> None:
    """Scans by their ScanStatus search attribute (e.g. --status dead), newest first,
    each once (as its latest run is)."""

    async def go() -> None:
        if tenant is not None:  # before connecting: it becomes part of a visibility query
            api.check_tenant(tenant)
        client = await api.connect()
        table = Table()
        for col in ("scan", "status", "workflow"):
            table.add_column(col)
        async for scan_id, scan_status, wf_status in api.list_scans(client, status, tenant,
                                                                     limit):
            # A workflow closed without a final ScanStatus (terminated while running or
            # dead) shows how it closed.
            state = api.ScanState(scan_id, wf_status, scan_status, ())
            table.add_row(scan_id, state.status, wf_status.name if wf_status else "")
        out.print(table)

    run_command(go())

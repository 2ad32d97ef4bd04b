"""scanward: the command line for services and operators.

Every command exits non-zero with a one-line reason on error. Temporal connection
settings follow Temporal's conventions (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``,
``TEMPORAL_PROFILE``); scanward's own settings are ``SCANWARD_*`` (see the README).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError

from scanward import client as api
from scanward import tracing
from scanward.contract import (
    AbandonSignal,
    NotifyTarget,
    RetrySignal,
    ScannerRun,
    ScannerStatus,
    ScanRequest,
    ScanStatus,
    ScanSummary,
    Severity,
)
from scanward.devserver import DevServer, DevServerError, free_port
from scanward.env_values import ConfigError
from scanward.example import create_example_repo
from scanward.inputs import InputError
from scanward.lifecycle import TriageState
from scanward.settings import Settings

if TYPE_CHECKING:
    from scanward.store import FindingRecord, Store

# markdown: docstrings wrapped at 88 columns reflow to the terminal instead of
# breaking mid-sentence in the command list.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Durable security scans on Temporal.")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

# Exit codes (the README lists them): 0 the command did what it says; 1 it did not
# (the one-line reason is on stderr); 2 bad usage (typer/click); 3 `scan --wait
# --no-wait-dead` stopped waiting because a scanner is dead.
EXIT_ERROR = 1
EXIT_DEAD = 3
# `scan --wait --fail-on/--fail-on-new S`: the scan has (new) open findings at or above S.
EXIT_GATE = 4


class CliError(Exception):
    """A failure to report as one line and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on a Temporal runtime that is shut down before the
    interpreter exits (see :func:`scanward.client.run`), turning every expected error
    into one line and a non-zero exit."""
    try:
        return api.run(coro)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        _fail(f"invalid request: {where}: {msg}" if where else f"invalid request: {msg}")
    except CliError as e:
        _fail(str(e), e.code)
    except (InputError, DevServerError, api.RefNotResolved, api.ScanNotFound,
            api.ScanNotRunning, api.Rejected) as e:
        _fail(str(e))
    except ConfigError as e:  # met while running: `dev`'s worker reads the backend's own
        _fail(str(e))
    except RPCError as e:
        _fail(f"temporal: {e.message}")
    except RuntimeError as e:  # cannot connect to Temporal; StoreError (one line)
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        _fail("interrupted")
    raise AssertionError("unreachable")


@app.callback()
def _check_configuration() -> None:
    # Before any command: a bad SCANWARD_* value is one line naming the variable and
    # exit 1, whichever command meets it first (or none would, like `list`).
    try:
        settings = Settings.from_env()
        if settings.backend == "kubernetes":  # a worker's environment (`dev`, a pod)
            from activities.backends.kubernetes import KubeSettings

            KubeSettings.from_env(settings.env)
    except ConfigError as e:
        _fail(str(e))


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    err.print(f"scanward: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _one_line(text: str) -> str:
    """``text`` with its line breaks folded, for one-line error messages."""
    return " ".join(text.split())


def _repository_url(repo: str) -> str:
    """A local directory becomes a file:// URL (only local workers accept those)."""
    path = Path(repo)
    if "://" not in repo and path.is_dir():
        return path.resolve().as_uri()
    return repo


def _notify_targets(specs: list[str]) -> tuple[NotifyTarget, ...]:
    targets = []
    for spec in specs:
        url, sep, secret = spec.rpartition("=")
        if not sep or not url:
            raise CliError(f"--notify {spec!r}: expected URL=SECRET_NAME")
        targets.append(NotifyTarget(url=url, secret_ref=secret))
    return tuple(targets)


def _open_store() -> Store:
    # Imported here: the store pulls in SQLAlchemy and Alembic, which most commands
    # (and their start-up time) do not need.
    from scanward.store import Store

    return Store.open(Settings.from_env().database_url)


# --------------------------------------------------------------------------- render


class Format(StrEnum):
    table = "table"
    json = "json"


def _progress_table(summary: ScanSummary, *, reasons: bool = True) -> Table:
    """Per-scanner progress; with ``reasons``, each reason's first line (the live view:
    ``status`` prints them in full below the table instead)."""
    table = Table(title=f"{summary.scan_id}: {summary.status.value}", title_justify="left")
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
        (run.scanner, run.status.value, run.reason) for run in summary.scanners]
    for name, state, reason in reasons:
        if reason:
            out.print(f"{name} ({state}):", markup=False, highlight=False)
            for line in reason.splitlines():
                out.print(textwrap.fill(line, width=max(out.width, 40), initial_indent="  ",
                                        subsequent_indent="    ", break_long_words=False,
                                        break_on_hyphens=False),
                          markup=False, highlight=False, soft_wrap=True)


def _print_report(report: api.ScanReport, fmt: Format) -> None:
    state, summary = report.state, report.summary
    workflow = state.workflow_status.name if state.workflow_status else None
    if fmt is Format.json:
        print(json.dumps({
            "scan_id": state.scan_id,
            "workflow_status": workflow,
            "scan_status": state.scan_status.value if state.scan_status else None,
            "failure": state.failure,
            "query_error": report.query_error,
            "summary": summary.model_dump(mode="json") if summary else None,
        }, indent=2))
        return
    if summary is not None:
        out.print(_progress_table(summary, reasons=False))
        _print_reasons(summary)
    else:
        scan_status = state.scan_status.value if state.scan_status else "unknown"
        out.print(f"{state.scan_id}: workflow {workflow}, ScanStatus {scan_status}",
                  markup=False, highlight=False)
        out.print(f"no progress from the workflow: {report.query_error}", markup=False,
                  highlight=False)
    if state.failure and not (summary and summary.reason and state.failure in summary.reason):
        out.print(f"workflow {workflow}: {state.failure}", markup=False, highlight=False)


class FindingsFormat(StrEnum):
    table = "table"
    json = "json"
    sarif = "sarif"


class FindingsView(StrEnum):
    open = "open"  # new and existing, not suppressed (the default)
    new = "new"  # new, not suppressed
    fixed = "fixed"  # the previous scan's findings this one no longer has
    all = "all"  # every finding of the scan, suppressed ones too


def _shown_state(record: FindingRecord) -> str:
    """What the state column says: the lifecycle state, or why it is not counted."""
    if record.finding.suppression is not None:
        return f"suppressed ({record.finding.suppression})"[:40]
    if record.triage is not None and record.triage.state.value != "open":
        return record.triage.state.value
    return record.state.value if record.state is not None else ""


def _first_seen(record: FindingRecord) -> str:
    """The commit a finding was first seen at (its date is in --format json)."""
    return (record.first_seen_commit or "")[:7]


def _findings_table(records: list[FindingRecord], title: str) -> Table:
    """One finding a line: every column but the message keeps its width (the message is
    cut to what is left; --format json has it whole)."""
    rows = []
    for r in records:
        f = r.finding
        where = f"{f.path}:{f.start_line}" if f.start_line else f.path
        rows.append([_shown_state(r), f.severity.value, f.scanner, f.rule_id, where,
                     _first_seen(r), r.key[:12], f.message])
    table = Table(title=title, title_justify="left")
    names = ("state", "severity", "scanner", "rule", "location", "since", "fingerprint")
    widths = [max([len(col), *(len(row[i]) for row in rows)]) for i, col in enumerate(names)]
    for col, width in zip(names, widths, strict=True):
        table.add_column(col, no_wrap=True, width=width)
    # What is left of the terminal after the other columns and the borders (3 a column).
    left = max(10, out.width - sum(widths) - 3 * (len(names) + 1) - 1)
    table.add_column("message", no_wrap=True, width=min(left, max(
        [len("message"), *(len(row[-1]) for row in rows)])))
    for row in rows:
        message = row[-1] if len(row[-1]) <= left else row[-1][:left - 1] + "…"
        table.add_row(*row[:-1], message)
    return table


def _lifecycle_line(store: Store, scan_id: str) -> str:
    lifecycle = store.lifecycle(scan_id)
    if lifecycle is None:
        return ("no lifecycle: the scan has not finished, failed, or was stored before "
                "findings were tracked")
    since = (f"since {lifecycle.previous_scan_id} ({(lifecycle.previous_commit or '')[:7]})"
             if lifecycle.previous_scan_id else "(first scan of this ref and scanners)")
    return (f"{lifecycle.new} new, {lifecycle.existing} existing, {lifecycle.fixed} fixed "
            f"{since}; {lifecycle.suppressed} suppressed")


def _record_json(r: FindingRecord) -> dict[str, Any]:
    return {
        **r.finding.model_dump(mode="json"),
        "state": r.state.value if r.state is not None else None,
        "suppressed": r.suppressed,
        "first_seen": None if r.first_seen_scan_id is None else {
            "scan_id": r.first_seen_scan_id, "commit": r.first_seen_commit,
            "at": r.first_seen_at.isoformat() if r.first_seen_at else None},
        "triage": None if r.triage is None else {
            "state": r.triage.state.value, "reason": r.triage.reason, "by": r.triage.by,
            "at": r.triage.at.isoformat()},
    }


def _print_findings(scan_id: str, fmt: FindingsFormat = FindingsFormat.table,
                    view: FindingsView = FindingsView.open,
                    severities: tuple[Severity, ...] = ()) -> list[FindingRecord]:
    """The scan's stored findings in ``view``; a scan the store has never heard of is an
    error, not an empty list. Returns the findings shown."""
    from scanward.sarif_export import to_sarif
    from scanward.store.tracking import select_records

    store = _open_store()
    try:
        scan = store.get_scan(scan_id)
        if scan is None:
            raise CliError(f"no such scan in the store: {scan_id} (unknown id, or no scanner "
                           "of it has finished yet; see `scanward status`)")
        if view is FindingsView.fixed:
            records = store.fixed_findings(scan_id)
        else:
            records = store.scan_findings(scan_id)
        shown = select_records(records, new_only=view is FindingsView.new,
                               include_suppressed=view in (FindingsView.all,
                                                           FindingsView.fixed),
                               severities=severities)
        hidden = sum(r.suppressed for r in records) if view is not FindingsView.all else 0
        summary = _lifecycle_line(store, scan_id)
    finally:
        store.close()
    if fmt is FindingsFormat.json:
        print(json.dumps([_record_json(r) for r in shown], indent=2))
    elif fmt is FindingsFormat.sarif:
        doc = to_sarif([(r.finding, r.state, r.triage) for r in shown],
                       repository=scan.repository, commit=scan.commit, ref=scan.ref)
        print(json.dumps(doc, indent=2))
    else:
        what = {FindingsView.open: "open (new and existing)", FindingsView.new: "new",
                FindingsView.fixed: "fixed (gone since the previous scan)",
                FindingsView.all: "all, suppressed ones too"}[view]
        out.print(_findings_table(shown, f"{len(shown)} finding(s), {what}"),
                  markup=False, highlight=False)
        hint = " (not shown: --all shows them)" if hidden and view is FindingsView.open else ""
        out.print(f"{scan_id}: {summary}{hint}", markup=False, highlight=False,
                  soft_wrap=True)
    return shown


def _gate(records: list[FindingRecord], fail_on: Severity | None,
          fail_on_new: Severity | None) -> None:
    """Exit :data:`EXIT_GATE` when open findings (new ones, for ``fail_on_new``) at or
    above the threshold remain; suppressed and triaged findings never count."""
    from scanward.lifecycle import FindingState, gate

    def severity(r: FindingRecord) -> Severity:
        return r.finding.severity

    def is_open(r: FindingRecord) -> bool:
        return not r.suppressed

    def is_new(r: FindingRecord) -> bool:
        # A scan without a lifecycle (a worker before it): every finding counts as new.
        return not r.suppressed and r.state in (FindingState.NEW, None)

    failed: list[str] = []
    for threshold, new_only in ((fail_on, False), (fail_on_new, True)):
        if threshold is None:
            continue
        hits = gate(records, threshold, severity=severity,
                    counted=is_new if new_only else is_open)
        if hits:
            kind = "new " if new_only else ""
            failed.append(f"{len(hits)} {kind}finding(s) at or above {threshold.value} "
                          f"(--fail-on{'-new' if new_only else ''} {threshold.value})")
    if failed:
        raise CliError("gate failed: " + "; ".join(failed), EXIT_GATE)


def _dead_notice(scan_id: str, run: ScannerRun) -> str:
    """The scanner, its reason (the last log lines indented below) and what to run."""
    first, *rest = (run.reason or run.failure_class or "no reason given").splitlines()
    return "\n".join([f"{run.scanner} is dead: {first}", *(f"  {line}" for line in rest),
                      f"  retry with `scanward retry {scan_id}` or abandon with "
                      f"`scanward abandon {scan_id}`"])


def _ended_reason(summary: ScanSummary) -> str:
    """Why a scan that ended but did not complete ended so: for a partial one, the
    abandoned scanners and their reasons."""
    abandoned = [f"{r.scanner} abandoned: {r.reason or 'no reason given'}"
                 for r in summary.scanners if r.status is ScannerStatus.ABANDONED]
    parts = ([summary.reason] if summary.reason else []) + abandoned
    return _one_line("; ".join(parts)) or "no reason recorded"


async def _watch(client: Client, scan_id: str, *, stop_on_dead: bool = False) -> ScanSummary:
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
                    live.update(_progress_table(summary))
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
                cause = e.cause
                raise CliError(f"scan {scan_id} failed: "
                               f"{getattr(cause, 'message', cause)}") from e
            live.update(_progress_table(summary))
    finally:
        result.cancel()
        out.print()
    return summary


# ------------------------------------------------------------------------- commands

Scanners = Annotated[list[str], typer.Option("--scanner", "-s", help="Scanner to run (repeat).")]


@app.command()
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
            repository=_repository_url(repository), ref=ref, commit=commit,
            scanners=tuple(scanner), tenant=tenant, dedupe_key=key,
            notify=_notify_targets(notify), cluster=cluster,
        )
        client = await api.connect()
        request = await api.with_commit(client, request, task_queue=settings.task_queue)
        handle = await api.start_scan(client, request, task_queue=settings.task_queue)
        what = f"{request.ref} at {(request.commit or '')[:12]}"
        state = (await handle.describe()).status
        if state is WorkflowExecutionStatus.RUNNING:
            out.print(f"scan {handle.id} of {what} running", highlight=False)
        else:  # this commit was scanned already with these scanners: that is the answer
            out.print(f"scan {handle.id} of {what} already ended "
                      f"({state.name.lower() if state else 'unknown'}); --key scans again",
                      highlight=False)
        if wait:
            summary = await _watch(client, handle.id, stop_on_dead=not wait_dead)
            shown = _print_findings(handle.id)
            if summary.status is not ScanStatus.COMPLETED:
                raise CliError(f"scan ended {summary.status.value}: {_ended_reason(summary)}")
            _gate(shown, fail_on, fail_on_new)

    _run(go())


@app.command()
def status(scan_id: str, format: Format = Format.table) -> None:
    """Progress of a scan: each scanner, and every reason in full."""

    async def go() -> None:
        _print_report(await api.report(await api.connect(), scan_id), format)

    _run(go())


@app.command()
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
    from scanward.store import StoreError  # see _open_store

    if new + fixed + all_ > 1:
        raise typer.BadParameter("--new, --fixed and --all exclude each other")
    view = (FindingsView.new if new else FindingsView.fixed if fixed
            else FindingsView.all if all_ else FindingsView.open)
    try:
        _print_findings(scan_id, format, view, tuple(severity or ()))
    except (CliError, StoreError) as e:
        _fail(str(e))


@app.command()
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
        store = _open_store()
        try:
            done = store.set_triage(
                fingerprint, chosen, reason=(reason or "reopened").strip(), by=who,
                tenant=tenant,
                repository=_repository_url(repository) if repository else None)
        finally:
            store.close()
    except StoreError as e:
        _fail(str(e))
    out.print(f"{done.match_fingerprint[:12]} in {done.tenant} {done.repository}: "
              f"{done.triage.state.value} by {done.triage.by} ({done.triage.reason}); "
              f"{done.findings} stored finding(s), and every later scan", markup=False,
              highlight=False, soft_wrap=True)


@app.command()
def history(
    repository: Annotated[str, typer.Argument(help="Repository URL or local directory.")],
    ref: Annotated[str | None, typer.Option(help="Only scans of this ref.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only scans of this tenant.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
    format: Format = Format.table,
) -> None:
    """A repository's scans, latest first, with new / existing / fixed per scan."""
    from scanward.store import StoreError

    repo = _repository_url(repository)
    try:
        store = _open_store()
        try:
            entries = store.history(repo, ref=ref, tenant=tenant, limit=limit)
        finally:
            store.close()
    except StoreError as e:
        _fail(str(e))
    if not entries:
        _fail(f"no scans of {repo} in the store"
              + (f" for ref {ref}" if ref else "") + (f" in tenant {tenant}" if tenant else ""))
    if format is Format.json:
        print(json.dumps([{**dataclasses.asdict(h), "status": h.status.value,
                           "created_at": h.created_at.isoformat(),
                           "finished_at": h.finished_at.isoformat() if h.finished_at else None}
                          for h in entries], indent=2))
        return
    title = f"scans of {repo}" + (f" at {ref}" if ref else "")
    table = Table(title=title, title_justify="left")
    columns = ["scan", *([] if ref else ["ref"]), "commit", "status", "finished", "open", "new",
               "existing", "fixed", "suppressed"]
    for col in columns:
        table.add_column(col, no_wrap=True, min_width=len(col))

    def n(value: int | None) -> str:
        return "" if value is None else str(value)

    for h in entries:
        # Open: new + existing (not suppressed); the stored count for scans without one.
        opened = h.finding_count if h.new is None else h.new + (h.existing or 0)
        table.add_row(h.scan_id, *([] if ref else [h.ref]), (h.commit or "")[:7],
                      h.status.value,
                      f"{h.finished_at:%m-%d %H:%M}" if h.finished_at else "",
                      str(opened), n(h.new), n(h.existing), n(h.fixed), n(h.suppressed))
    out.print(table, markup=False, highlight=False)


@app.command()
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
        _fail(str(e))


@app.command(name="list")
def list_scans(
    status: Annotated[ScanStatus | None, typer.Option(help="Only scans in this state.")] = None,
    tenant: str | None = None,
    limit: int = 50,
) -> None:
    """Scans by their ScanStatus search attribute (e.g. --status dead)."""

    async def go() -> None:
        client = await api.connect()
        table = Table()
        for col in ("scan", "status", "workflow"):
            table.add_column(col)
        async for scan_id, scan_status, wf_status in api.list_scans(client, status, tenant,
                                                                     limit):
            table.add_row(scan_id, scan_status.value if scan_status else "",
                          wf_status.name if wf_status else "")
        out.print(table)

    _run(go())


@app.command()
def retry(
    scan_id: Annotated[str | None, typer.Argument()] = None,
    scanner: Annotated[str | None, typer.Option(help="Only this dead scanner.")] = None,
    memory_mib: Annotated[int | None, typer.Option(help="Memory for the retry.")] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Every dead scan, in one "
                                           "batch.")] = False,
) -> None:
    """Retry dead scanners of a scan (refused, with the reason, if none would be), or of
    every dead scan (one batch signal)."""

    async def go() -> None:
        signal = RetrySignal(scanner=scanner, memory_mib=memory_mib)
        if not (all_dead or scan_id):
            raise CliError("give a scan id or --all-dead")
        client = await api.connect()
        if all_dead:
            job = await api.retry_all_dead(client, signal)
            out.print(f"batch {job} signalled every dead scan", highlight=False)
        elif scan_id is not None:
            retried = await api.retry(client, scan_id, signal)
            out.print(f"{scan_id}: retrying {', '.join(retried)}", highlight=False)

    _run(go())


@app.command()
def abandon(
    scan_id: str,
    scanner: Annotated[str | None, typer.Option(help="Only this dead scanner.")] = None,
    reason: str = "abandoned by operator",
) -> None:
    """Give up on dead scanners (refused, with the reason, if none is dead); the scan
    ends partial."""

    async def go() -> None:
        abandoned = await api.abandon(await api.connect(), scan_id,
                                      AbandonSignal(scanner=scanner, reason=reason))
        out.print(f"{scan_id}: abandoned {', '.join(abandoned)}", highlight=False)

    _run(go())


@app.command()
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
        state = await api.wait_closed(client, scan_id, timedelta(seconds=wait_seconds))
        if state.running:
            raise CliError(f"cancel requested, but {scan_id} is still running after "
                           f"{wait_seconds:g}s (stopping its scanners); see `scanward status "
                           f"{scan_id}`")
        if state.workflow_status is not WorkflowExecutionStatus.CANCELED:
            raise CliError(f"scan {scan_id} ended {state.closed_as} before the cancel took "
                           "effect")
        out.print(f"scan {scan_id} cancelled", highlight=False)

    _run(go())


# ---------------------------------------------------------------- replay (pre-deploy gate)


@app.command()
def replay(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="History files or directories (every **/*.json), as `temporal workflow show "
             "--output json` writes them.")] = None,
    query: Annotated[str | None, typer.Option(
        help='Replay the namespace\'s histories matching this visibility query '
             '(default WorkflowType="ScanWorkflow").')] = None,
    running: Annotated[bool, typer.Option(
        "--running", help="Only running executions (from the namespace).")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N from the namespace.")
                     ] = None,
    save: Annotated[Path | None, typer.Option(
        help="Write every history replayed to DIR (one JSON per workflow run): grows a "
             "corpus.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Histories replayed at once.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON on stdout.")
                       ] = False,
) -> None:
    """Replay ScanWorkflow histories against this code (the pre-deploy gate): from files,
    or from the namespace (no PATH, or --query/--running). Exits 1 naming every history
    that does not replay, and when none was found."""
    # Imported here: the replayer imports the workflow and its activities, which the
    # other commands do not need.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from scanward import replay as replaying

    async def go() -> None:
        try:
            sources: list[replaying.Source] = replaying.file_sources(paths or [])
        except replaying.ReplayError as e:
            raise CliError(str(e)) from e
        total = len(sources)
        where = [", ".join(str(p) for p in paths)] if paths else []
        stream: Any = sources
        client: Client | None = None
        if not paths or query is not None or running:
            client = await api.connect()
            q = replaying.namespace_query(query, running)
            total += await replaying.count(client, q, limit)
            where.append(f"namespace {client.namespace} ({q})")
            stream = _chain(sources, replaying.namespace_sources(client, q, limit))
        if total == 0:
            raise CliError(f"no histories found in {' and '.join(where)}: nothing to replay")
        progress = Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} replays/s"), TimeElapsedColumn(),
                            console=err)
        task = progress.add_task("replay", total=total, rate="-")
        workflows = replaying.default_workflows()  # imported before the clock starts
        started = time.monotonic()

        def done(outcome: replaying.Outcome) -> None:
            if outcome.error is not None:
                progress.console.print(
                    f"FAILED {outcome.workflow_id} (run {outcome.run_id or '?'}, "
                    f"{outcome.origin}): {outcome.error}", markup=False, highlight=False,
                    soft_wrap=True)
            completed = progress.tasks[0].completed + 1
            progress.update(task, completed=completed,
                            rate=f"{completed / max(time.monotonic() - started, 1e-6):.1f}")

        with progress:
            report = await replaying.replay(stream, workflows=workflows,
                                            concurrency=concurrency, save_dir=save,
                                            on_outcome=done)
        if as_json:
            print(json.dumps(report.as_json(), indent=2))
        if not report.outcomes:
            raise CliError(f"no histories found in {' and '.join(where)}: nothing replayed")
        failures = report.failures
        if not as_json:
            out.print(f"replayed {len(report.outcomes)} histories in {report.seconds:.2f}s: "
                      f"{report.replays_per_second:.1f} replays/s, {len(failures)} failed"
                      + (f"; saved to {save}" if save is not None else ""), highlight=False)
        if failures:
            ids = ", ".join(sorted({f.workflow_id for f in failures}))
            raise CliError(f"{len(failures)} of {len(report.outcomes)} histories do not "
                           f"replay against this code: {ids}")

    _run(go())


async def _chain(first: list[Any], then: Any) -> Any:
    """The items of ``first``, then those of the async iterator ``then``."""
    for item in first:
        yield item
    async for item in then:
        yield item


# ------------------------------------------------------------------------------ load


@app.command()
def load(
    scenario: Annotated[str, typer.Argument(
        help="happy | mixed | webhook | tenants")] = "happy",
    iterations: Annotated[int | None, typer.Option(
        min=1, help="Scans to run (tenants: the bulk tenant's).")] = None,
    duration: Annotated[str | None, typer.Option(
        help="Start scans for this long instead, e.g. 5m.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(
        min=1, help="Scans in flight at once.")] = None,
    rate: Annotated[str | None, typer.Option(help="At most R starts per second, e.g. 5/s.")
                    ] = None,
    run_id: Annotated[str | None, typer.Option(
        help="Derives the scan ids (and the local task queue).")] = None,
    start_local_server: Annotated[bool, typer.Option(
        "--start-local-server", help="Start a dev server and a worker process here.")
                                  ] = False,
    task_queue: Annotated[str | None, typer.Option(
        help="Task queue of the deployment's workers.")] = None,
    cluster: Annotated[str | None, typer.Option(help="Route scans to this cluster.")] = None,
    scanners: Annotated[int, typer.Option(min=1, max=8, help="Synthetic scanners per scan.")
                        ] = 1,
    scan_seconds: Annotated[float, typer.Option(min=0, help="How long each scanner runs.")
                            ] = 0.0,
    findings: Annotated[int, typer.Option(min=0, help="Findings per scanner.")] = 3,
    crash_share: Annotated[float, typer.Option(help="mixed: crash, then succeed.")] = 0.2,
    dead_share: Annotated[float, typer.Option(help="mixed: go dead (retried, abandoned).")
                          ] = 0.2,
    cancel_share: Annotated[float, typer.Option(help="mixed: cancelled while running.")
                            ] = 0.2,
    oom_share: Annotated[float | None, typer.Option(
        help="mixed: OOM-killed, then succeed with doubled memory (needs a memory limit: "
             "--kube; default 0.1 there).")] = None,
    webhook_down: Annotated[str, typer.Option(help="webhook: receiver down this long.")
                            ] = "3s",
    webhook_delay: Annotated[float, typer.Option(help="webhook: seconds per answer.")] = 0.2,
    small_scans: Annotated[int, typer.Option(min=1, help="tenants: the small tenant's scans.")
                           ] = 10,
    tenant_max_jobs: Annotated[str | None, typer.Option(
        help="SCANWARD_TENANT_MAX_JOBS of the local worker, e.g. 4 or bulk=2,*=4.")] = None,
    worker_activities: Annotated[int | None, typer.Option(
        min=1, help="SCANWARD_MAX_CONCURRENT_ACTIVITIES of the local worker.")] = None,
    baseline: Annotated[bool, typer.Option(
        help="Also run a minimal workflow with as many no-op activities; print ratios.")
                        ] = False,
    kube: Annotated[Path | None, typer.Option(
        "--kube", metavar="KUBECONFIG",
        help="The local worker runs its scanners as Jobs on this cluster (kubernetes "
             "backend; with --start-local-server).")] = None,
    kube_namespace: Annotated[str | None, typer.Option(
        help="--kube: namespace of the Jobs, with the workspace/results claims and the "
             "worker's Role (deploy/). Default scanward.")] = None,
    kube_context: Annotated[str | None, typer.Option(help="--kube: kubeconfig context.")
                            ] = None,
    kube_workspace: Annotated[Path | None, typer.Option(
        help="--kube: where this machine mounts the workspace claim's volume (default: "
             "the run's work dir; enough for --kube-stand-in).")] = None,
    kube_results: Annotated[Path | None, typer.Option(
        help="--kube: where this machine mounts the results claim's volume.")] = None,
    kube_stand_in: Annotated[Path | None, typer.Option(
        metavar="KUBECONFIG",
        help="--kube is the test control plane (kwok, tools/k8s-testenv): play each "
             "scanner pod as this identity (watch Jobs and pods, patch pods).")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the work dir (logs, repository).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON on stdout.")
                       ] = False,
) -> None:
    """Load test: run a scenario's scans end to end with the synthetic scanner, report
    throughput, latency, history sizes and CPU per scan, then replay every history it
    produced. Exits 1 if a scan failed or a history does not replay."""
    from scanward.load import kube as load_kube
    from scanward.load import report as load_report
    from scanward.load import runner

    async def go() -> None:
        try:
            target = load_kube.target(kube, namespace=kube_namespace, context=kube_context,
                                      workspace=kube_workspace, results=kube_results,
                                      stand_in=kube_stand_in)
            opts = runner.LoadOptions(
                scenario=scenario, iterations=iterations,
                duration=runner.parse_duration(duration) if duration else None,
                max_concurrent=max_concurrent,
                rate=runner.parse_rate(rate) if rate else None,
                start_local_server=start_local_server, task_queue=task_queue,
                cluster=cluster, scanners=scanners, scan_seconds=scan_seconds,
                findings=findings, crash_share=crash_share, dead_share=dead_share,
                cancel_share=cancel_share, webhook_down=runner.parse_duration(webhook_down),
                webhook_delay=webhook_delay, small_scans=small_scans,
                tenant_max_jobs=tenant_max_jobs, worker_activities=worker_activities,
                baseline=baseline, keep=keep, kube=target, oom_share=oom_share)
            if run_id:
                opts.run_id = run_id
            result = await runner.run_load(opts, lambda line: err.print(
                f"scanward load: {line}", markup=False, highlight=False, soft_wrap=True))
        except (runner.LoadError, load_kube.KubeOptionError) as e:
            raise CliError(str(e)) from e
        if as_json:
            print(json.dumps(result.as_json(), indent=2))
        else:
            load_report.render(result, out)
        scans, replayed = load_report.counts(result.records), result.replay
        if scans["failed"] or replayed.get("failures"):
            raise CliError(f"{scans['failed']} scan(s) failed, {replayed.get('failures', 0)} "
                           "history(ies) did not replay")

    _run(go())


async def _with_dev_stack(settings: Settings, server: DevServer,
                          body: Callable[[Client], Awaitable[None]]) -> None:
    """Run ``body`` with a dev server and an in-process local worker around it."""
    # Imported here: the worker pulls in the activities, the Kubernetes client and the
    # store (most of the CLI's start-up time), which only dev and demo need.
    import worker as scan_worker

    server.start()
    try:
        os.environ["TEMPORAL_ADDRESS"] = server.address
        client = await api.connect()
        async with scan_worker.running(settings, client) as worker_task:
            body_task: asyncio.Future[None] = asyncio.ensure_future(body(client))
            try:
                # Whichever ends first: a worker that dies at start (an unreachable
                # cluster, a bad store URL) ends the command with its error, not a hang.
                await asyncio.wait({worker_task, body_task},
                                   return_when=asyncio.FIRST_COMPLETED)
                if worker_task.done() and not body_task.done():
                    worker_task.result()  # raises the worker's error
                    raise CliError("the local worker stopped unexpectedly")
                body_task.result()
            finally:
                body_task.cancel()
    finally:
        server.stop()


@app.command()
def dev(
    port: int = 7233,
    ui_port: int = 8233,
) -> None:
    """Temporal dev server (Web UI on, search attributes registered) + a local worker."""
    settings = dataclasses.replace(Settings.from_env(), allow_local_repositories=True)
    server = DevServer(port=port, ui_port=ui_port, db_file=settings.home / "temporal.db",
                       log_file=settings.home / "temporal.log")

    async def serve(_client: Client) -> None:
        out.print(f"Temporal on {server.address}, Web UI http://127.0.0.1:{ui_port}; "
                  f"worker on task queue {settings.task_queue}. Ctrl-C stops.",
                  highlight=False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal as _signal

        for sig in (_signal.SIGINT, _signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    _run(_with_dev_stack(settings, server, serve))


@app.command()
def demo() -> None:
    """A real scan of the bundled flawed app on the embedded defaults (offline)."""
    home = Path(tempfile.mkdtemp(prefix="scanward-demo-"))
    os.environ["SCANWARD_HOME"] = str(home)
    os.environ.pop("SCANWARD_DATABASE_URL", None)
    settings = dataclasses.replace(Settings.from_env(), allow_local_repositories=True)
    server = DevServer(port=free_port(), ui_port=None, log_file=home / "temporal.log")
    started = time.monotonic()

    async def body(client: Client) -> None:
        repo = create_example_repo(home / "flawed-app")
        # semgrep is an optional extra (tools/setup.sh installs it).
        has_semgrep = (Path(sysconfig.get_path("scripts")) / "semgrep").exists()
        scanners = ("bandit", "semgrep") if has_semgrep else ("bandit",)
        request = ScanRequest(repository=repo.as_uri(), ref="main", scanners=scanners)
        handle = await api.start_scan(client, request, task_queue=settings.task_queue)
        out.print(f"scanning {repo} (bundled flawed app) as {handle.id}", highlight=False)
        summary = await _watch(client, handle.id)
        found = _print_findings(handle.id)
        out.print(f"scan {summary.status.value}: {len(found)} finding(s) in "
                  f"{time.monotonic() - started:.1f}s (store: {settings.database_url})",
                  highlight=False)
        if summary.status is not ScanStatus.COMPLETED or not found:
            raise CliError("the demo scan did not complete with findings")

    _run(_with_dev_stack(settings, server, body))


def main() -> None:
    """Console entry point ``scanward``."""
    tracing.configure("scanward-cli")
    app(prog_name="scanward")


if __name__ == "__main__":
    main()

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
import time
from collections.abc import Awaitable, Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

import worker as scan_worker
from scanward import client as api
from scanward import tracing
from scanward.catalog import Catalog
from scanward.contract import (
    AbandonSignal,
    Finding,
    NotifyTarget,
    RetrySignal,
    ScanRequest,
    ScanStatus,
    ScanSummary,
)
from scanward.devserver import DevServer, DevServerError, free_port
from scanward.example import create_example_repo
from scanward.inputs import InputError
from scanward.settings import Settings
from scanward.store import Store, StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Durable security scans on Temporal.")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")


class CliError(Exception):
    """A failure to report as one line and exit 1."""


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning every expected error into one line + exit 1."""
    try:
        return asyncio.run(coro)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        _fail(f"invalid request: {where}: {msg}" if where else f"invalid request: {msg}")
    except (CliError, InputError, StoreError, DevServerError, api.ScanAlreadyFinished) as e:
        _fail(str(e))
    except RPCError as e:
        _fail(f"temporal: {e.message}")
    except RuntimeError as e:  # e.g. cannot connect to Temporal
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        _fail("interrupted")
    raise AssertionError("unreachable")


def _fail(message: str) -> None:
    err.print(f"scanward: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


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


# --------------------------------------------------------------------------- render


def _progress_table(summary: ScanSummary) -> Table:
    table = Table(title=f"{summary.scan_id}: {summary.status.value}", title_justify="left")
    for col in ("scanner", "status", "attempts", "memory", "findings", "reason"):
        table.add_column(col)
    for run in summary.scanners:
        table.add_row(
            run.scanner, run.status.value, str(run.attempts),
            f"{run.resources.memory_mib} MiB" if run.resources else "",
            "" if run.finding_count is None else str(run.finding_count),
            (run.reason or "").splitlines()[0][:80] if run.reason else "",
        )
    return table


def _findings_table(findings: list[Finding]) -> Table:
    table = Table(title=f"{len(findings)} finding(s)", title_justify="left")
    for col in ("severity", "scanner", "rule", "location", "message"):
        table.add_column(col)
    for f in findings:
        where = f"{f.path}:{f.start_line}" if f.start_line else f.path
        table.add_row(f.severity.value, f.scanner, f.rule_id, where, f.message[:100])
    return table


def _print_findings(scan_id: str, fmt: str = "table") -> list[Finding]:
    store = Store.open(Settings.from_env().database_url)
    try:
        findings = store.findings(scan_id)
    finally:
        store.close()
    if fmt == "json":
        print(json.dumps([f.model_dump(mode="json") for f in findings], indent=2))
    else:
        out.print(_findings_table(findings))
    return findings


async def _watch(client: Client, scan_id: str) -> ScanSummary:
    """Show live per-scanner progress until the scan ends; return its summary."""
    handle = api.handle(client, scan_id)
    result: asyncio.Task[ScanSummary] = asyncio.ensure_future(handle.result())
    with Live(console=out, refresh_per_second=4, transient=False) as live:
        while not result.done():
            try:
                live.update(_progress_table(await api.progress(client, scan_id)))
            except RPCError:
                pass  # the workflow has not run its first task yet
            await asyncio.wait({result}, timeout=0.5)
        try:
            summary = result.result()
        except WorkflowFailureError as e:
            cause = e.cause
            raise CliError(f"scan {scan_id} failed: {getattr(cause, 'message', cause)}") from e
        live.update(_progress_table(summary))
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
) -> None:
    """Start a scan (a duplicate of a running scan joins it)."""

    async def go() -> None:
        settings = Settings.from_env()
        request = ScanRequest(
            repository=_repository_url(repository), ref=ref, commit=commit,
            scanners=tuple(scanner), tenant=tenant, dedupe_key=key,
            notify=_notify_targets(notify), cluster=cluster,
        )
        catalog = Catalog.load(settings.catalog_file)
        catalog.check(request.scanners)  # before connecting: bad input fails fast
        client = await api.connect()
        handle = await api.start_scan(client, request, task_queue=settings.task_queue,
                                      catalog=catalog)
        out.print(f"scan {handle.id} started", highlight=False)
        if wait:
            summary = await _watch(client, handle.id)
            _print_findings(handle.id)
            if summary.status is not ScanStatus.COMPLETED:
                raise CliError(f"scan ended {summary.status.value}: {summary.reason or ''}")

    _run(go())


@app.command()
def status(scan_id: str) -> None:
    """Per-scanner progress of a scan."""

    async def go() -> None:
        out.print(_progress_table(await api.progress(await api.connect(), scan_id)))

    _run(go())


class Format(StrEnum):
    table = "table"
    json = "json"


@app.command()
def findings(scan_id: str, format: Format = Format.table) -> None:
    """Stored findings of a scan."""
    try:
        _print_findings(scan_id, format.value)
    except StoreError as e:
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
    """Retry dead scanners of a scan, or of every dead scan (one batch signal)."""

    async def go() -> None:
        signal = RetrySignal(scanner=scanner, memory_mib=memory_mib)
        if not (all_dead or scan_id):
            raise CliError("give a scan id or --all-dead")
        client = await api.connect()
        if all_dead:
            job = await api.retry_all_dead(client, signal)
            out.print(f"batch {job} signalled every dead scan", highlight=False)
        elif scan_id is not None:
            await api.retry(client, scan_id, signal)
            out.print(f"retry sent to {scan_id}", highlight=False)

    _run(go())


@app.command()
def abandon(
    scan_id: str,
    scanner: Annotated[str | None, typer.Option(help="Only this dead scanner.")] = None,
    reason: str = "abandoned by operator",
) -> None:
    """Give up on dead scanners; the scan ends partial."""

    async def go() -> None:
        await api.abandon(await api.connect(), scan_id,
                          AbandonSignal(scanner=scanner, reason=reason))
        out.print(f"abandon sent to {scan_id}", highlight=False)

    _run(go())


@app.command()
def cancel(scan_id: str) -> None:
    """Cancel a scan: its running scanners are stopped."""

    async def go() -> None:
        await api.cancel(await api.connect(), scan_id)
        out.print(f"cancel requested for {scan_id}", highlight=False)

    _run(go())


async def _with_dev_stack(settings: Settings, server: DevServer,
                          body: Callable[[Client], Awaitable[None]]) -> None:
    """Run ``body`` with a dev server and an in-process local worker around it."""
    server.start()
    try:
        os.environ["TEMPORAL_ADDRESS"] = server.address
        client = await api.connect()
        stop = asyncio.Event()
        worker_task = asyncio.create_task(scan_worker.run(settings, stop, client))
        try:
            await body(client)
        finally:
            stop.set()
            await worker_task
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

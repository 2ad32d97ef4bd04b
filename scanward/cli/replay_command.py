"""`scanward replay`: the pre-deploy gate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from temporalio.client import Client
from temporalio.service import RPCError

from scanward import client as api
from scanward.cli.app import EXIT_USAGE, CliError, err, out, run_command


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

    from_namespace = not paths or query is not None or running
    if limit is not None and not from_namespace:
        # It caps what is listed from the namespace: with files only it would be ignored.
        run_command(_refuse("--limit caps the histories listed from the namespace (no "
                            "PATH, or --query/--running): it does not apply to files"))

    async def go() -> None:
        try:
            sources: list[replaying.Source] = replaying.file_sources(paths or [])
        except replaying.ReplayError as e:
            raise CliError(str(e)) from e
        if save is not None:  # before replaying anything: a bad --save fails first
            try:
                replaying.prepare_save_dir(save)
            except replaying.ReplayError as e:
                raise CliError(f"--save {e}") from e
        total = len(sources)
        where = [", ".join(str(p) for p in paths)] if paths else []
        stream: Any = sources
        client: Client | None = None
        if from_namespace:
            client = await api.connect()
            q = replaying.namespace_query(query, running)
            try:
                total += await replaying.count(client, q, limit)
            except RPCError as e:  # the server's message counts positions in q, not --query
                raise CliError(f"query {q}: {e.message}") from e
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
            try:
                report = await replaying.replay(stream, workflows=workflows,
                                                concurrency=concurrency, save_dir=save,
                                                on_outcome=done)
            except replaying.ReplayError as e:  # a history could not be saved
                raise CliError(f"--save: {e}") from e
        if as_json:
            print(json.dumps(report.as_json(), indent=2))
        if not report.outcomes:
            raise CliError(f"no histories found in {' and '.join(where)}: nothing replayed")
        failures = report.failures
        if not as_json:
            skipped = len(report.not_replayed)
            saved_to = f"; saved to {save}" if save is not None else ""
            if skipped:  # "replayed N" would claim the unreadable ones
                out.print(f"{len(report.outcomes)} histories in {report.seconds:.2f}s: "
                          f"{len(report.outcomes) - skipped} replayed, {len(failures)} "
                          f"failed, of which {skipped} could not be replayed (unreadable, "
                          f"or not a ScanWorkflow history){saved_to}", highlight=False)
            else:
                out.print(f"replayed {len(report.outcomes)} histories in "
                          f"{report.seconds:.2f}s: {report.replays_per_second:.1f} "
                          f"replays/s, {len(failures)} failed{saved_to}", highlight=False)
        if failures:
            ids = ", ".join(sorted({f.workflow_id for f in failures}))
            raise CliError(f"{len(failures)} of {len(report.outcomes)} histories do not "
                           f"replay against this code: {ids}")

    run_command(go())


async def _refuse(problem: str) -> None:
    raise CliError(problem, EXIT_USAGE)


async def _chain(first: list[Any], then: Any) -> Any:
    """The items of ``first``, then those of the async iterator ``then``."""
    for item in first:
        yield item
    async for item in then:
        yield item



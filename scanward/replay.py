"""Replay recorded ScanWorkflow histories against today's workflow code: the pre-deploy
gate (``scanward replay``).

A history that no longer replays means a deploy would break the running scans that
carry it (a dead scan may wait weeks for an operator), so every history is replayed with
Temporal's ``Replayer`` exactly as the worker would run it: same workflow class(es),
pydantic converter and interceptors. Histories come from JSON files (``history.to_json()``
or ``temporal workflow show --output json``) or from a namespace by visibility query.
Replays run in ``concurrency`` lanes, each its own ``Replayer``: one replayer replays one
history at a time, and a lane fetching the next history from the server overlaps with
the others replaying.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.worker import Interceptor, Replayer

DEFAULT_QUERY = 'WorkflowType="ScanWorkflow"'
RUNNING = 'ExecutionStatus="Running"'


class ReplayError(Exception):
    """Nothing could be replayed (no history found, a path that does not exist)."""


@dataclass(frozen=True)
class Source:
    """One history to replay: where it comes from, and how to get it."""

    origin: str  # a file path, or "namespace <ns>"
    load: Callable[[], Awaitable[WorkflowHistory]]
    workflow_id: str | None = None  # known before loading (listed from visibility)


@dataclass(frozen=True)
class Outcome:
    """The replay of one history; ``error`` is None when it replayed."""

    workflow_id: str
    run_id: str
    origin: str
    events: int
    error: str | None = None
    saved: Path | None = None
    replayed: bool = True  # False: could not be read, or is not a history of ours


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    @property
    def not_replayed(self) -> list[Outcome]:
        """Histories that failed before any replay: unreadable, or another type's."""
        return [o for o in self.outcomes if not o.replayed]

    @property
    def replays_per_second(self) -> float:
        return len(self.outcomes) / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, object]:
        return {
            "replayed": len(self.outcomes),
            "not_replayed": len(self.not_replayed),
            "failed": [{"workflow_id": o.workflow_id, "run_id": o.run_id, "origin": o.origin,
                        "error": o.error} for o in self.failures],
            "seconds": round(self.seconds, 3),
            "replays_per_second": round(self.replays_per_second, 1),
            "saved": [str(o.saved) for o in self.outcomes if o.saved is not None],
        }


# ------------------------------------------------------------------------- sources


def history_files(paths: Iterable[Path]) -> list[Path]:
    """Every ``*.json`` under each directory (recursively) and each file given, sorted
    per argument; a path that does not exist is an error, not an empty corpus."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.json") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise ReplayError(f"no such file or directory: {path}")
    return found


def load_history(path: Path) -> WorkflowHistory:
    """A history file as ``history.to_json()`` or ``temporal workflow show --output json``
    writes it; the workflow id comes from its start event (the file name otherwise)."""
    data = json.loads(path.read_text())
    workflow_id = path.stem
    if isinstance(data, dict):
        events = data.get("events") or []
        first = events[0] if events and isinstance(events[0], dict) else {}
        started = first.get("workflowExecutionStartedEventAttributes") or {}
        workflow_id = started.get("workflowId") or workflow_id
    return WorkflowHistory.from_json(workflow_id, data)


async def _load_file(path: Path) -> WorkflowHistory:
    return load_history(path)


def file_sources(paths: Iterable[Path]) -> list[Source]:
    return [Source(str(p), partial(_load_file, p)) for p in history_files(paths)]


def namespace_query(query: str | None = None, running: bool = False) -> str:
    """The visibility query: ``query`` (ScanWorkflow histories when it names no workflow
    type: other types would fail to replay against ScanWorkflow), and only running
    executions with ``running``."""
    q = (query or "").strip() or DEFAULT_QUERY
    if "WorkflowType" not in q:
        q = f"{DEFAULT_QUERY} AND ({q})"
    if running:
        q = f"({q}) AND {RUNNING}"
    return q


async def namespace_sources(client: Client, query: str,
                            limit: int | None = None) -> AsyncIterator[Source]:
    """Executions matching ``query``; each history is fetched by the lane replaying it,
    so ``concurrency`` fetches are in flight (``map_histories`` fetches one at a time)."""
    origin = f"namespace {client.namespace}"
    async for wf in client.list_workflows(query, limit=limit):
        handle = client.get_workflow_handle(wf.id, run_id=wf.run_id)
        yield Source(origin, handle.fetch_history, workflow_id=wf.id)


async def count(client: Client, query: str, limit: int | None = None) -> int:
    """How many executions ``query`` matches (for the progress bar)."""
    total = (await client.count_workflows(query)).count
    return min(total, limit) if limit is not None else total


# ------------------------------------------------------------------------- replay


def save_name(workflow_id: str, run_id: str) -> str:
    """A file name for one run's history: ids may hold characters paths must not."""
    def safe(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", s)

    return f"{safe(workflow_id)}__{safe(run_id)}.json"


def save(history: WorkflowHistory, directory: Path) -> Path:
    path = directory / save_name(history.workflow_id, history.run_id)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(history.to_json())
    except OSError as e:
        raise ReplayError(f"cannot save {path}: {e.strerror or e}") from None
    return path


def prepare_save_dir(directory: Path) -> None:
    """Create ``directory`` for :func:`save` (before replaying anything): a path that
    cannot be one is a :class:`ReplayError` naming it."""
    if directory.exists() and not directory.is_dir():
        raise ReplayError(f"{directory}: exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReplayError(f"{directory}: {e.strerror or e}") from None


# While a history replays, the SDK logs each failed activation with its traceback
# ("Failed handling activation on workflow ...", "Failed activation on workflow ...");
# the replay reports the same failure once, as an Outcome. These loggers are silenced
# for what the replay runs only: its tasks (a context variable they inherit) and its
# workflow threads (named), not a worker running in the same process meanwhile.
SDK_LOGGERS = ("temporalio.worker._workflow", "temporalio.worker._workflow_instance",
               "temporalio.worker._replayer")
_THREADS = "scanward-replay"
_replaying: contextvars.ContextVar[bool] = contextvars.ContextVar("scanward_replaying",
                                                                  default=False)


class _ReplayOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_replaying.get() or (record.threadName or "").startswith(_THREADS))


@contextlib.contextmanager
def _sdk_logs_silenced() -> Iterator[None]:
    token = _replaying.set(True)
    quiet = _ReplayOnly()
    loggers = [logging.getLogger(name) for name in SDK_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
        _replaying.reset(token)


def workflow_type(history: WorkflowHistory) -> str:
    """The workflow type its start event names ("" when the first event is no start)."""
    if not history.events:
        return ""
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


def workflow_names(workflows: Sequence[type]) -> set[str] | None:
    """The workflow types ``workflows`` define (their ``@workflow.defn`` names); None
    when one of them is dynamic (it takes any type)."""
    from temporalio import workflow

    names = {workflow._Definition.must_from_class(w).name for w in workflows}
    return None if None in names else {n for n in names if n is not None}


def foreign(history: WorkflowHistory, names: set[str] | None) -> str | None:
    """Why ``history`` cannot be replayed against ``names`` (another workflow type);
    None if it can. The replayer itself only notices a type it lacks at the first
    workflow task it replays: a history without one (a start no worker has picked up)
    would otherwise pass without a line of the workflow run."""
    kind = workflow_type(history)
    if names is None or kind in names:
        return None
    return (f"not a {' or '.join(sorted(names))} history: its workflow type is "
            f"{kind or '(no start event)'}")


def default_workflows() -> list[type]:
    """Today's ScanWorkflow (imported on demand: it pulls in the activities)."""
    from workflows.scan import ScanWorkflow

    return [ScanWorkflow]


async def _iterate(sources: Iterable[Source] | AsyncIterator[Source]) -> AsyncIterator[Source]:
    if isinstance(sources, AsyncIterator):
        async for s in sources:
            yield s
    else:
        for s in sources:
            yield s


async def replay(
    sources: Iterable[Source] | AsyncIterator[Source],
    *,
    workflows: Sequence[type] | None = None,
    concurrency: int = 4,
    save_dir: Path | None = None,
    runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> Report:
    """Replay every history of ``sources`` against ``workflows`` (default: today's
    ScanWorkflow). A history that fails to load or to replay is an :class:`Outcome` with
    its error, never an exception: the report names every failure."""
    if workflows is None:
        workflows = default_workflows()
    if interceptors is None:
        from scanward import tracing

        # The worker's: it takes those of its client's interceptors that are also
        # worker interceptors.
        interceptors = [i for i in tracing.interceptors() if isinstance(i, Interceptor)]
    chain = interceptors
    if runtime is None:
        # A runtime of the replay's own, without the core's console log: a history that
        # does not replay is reported once, by the caller, not also as a core warning.
        runtime = Runtime(telemetry=TelemetryConfig(logging=None))
    report = Report()
    lanes = max(1, concurrency)
    # The lanes' workflow threads, named for the log filter (and shut down at the end:
    # a Replayer's own executor never is).
    executor = ThreadPoolExecutor(thread_name_prefix=_THREADS)
    queue: asyncio.Queue[Source | None] = asyncio.Queue(maxsize=lanes * 2)
    started = time.monotonic()

    def record(outcome: Outcome) -> None:
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    async def feed() -> None:
        async for source in _iterate(sources):
            await queue.put(source)
        for _ in range(lanes):  # one end mark per lane (on error, the group cancels them)
            await queue.put(None)

    async def lane() -> None:
        replayer = Replayer(workflows=workflows, data_converter=pydantic_data_converter,
                            interceptors=chain, runtime=runtime,
                            workflow_task_executor=executor)
        origins: dict[int, tuple[Source, Path | None]] = {}
        names = workflow_names(workflows)

        async def histories() -> AsyncIterator[WorkflowHistory]:
            while (source := await queue.get()) is not None:
                try:
                    history = await source.load()
                    _ = history.run_id  # raises for an empty history
                except Exception as e:  # reported, with its origin
                    record(Outcome(source.workflow_id or Path(source.origin).stem, "",
                                   source.origin, 0, f"could not load: {_one_line(e)}",
                                   replayed=False))
                    continue
                wrong = foreign(history, names)
                if wrong is not None:  # never "replayed": nothing of ours would run
                    record(Outcome(history.workflow_id, history.run_id, source.origin,
                                   len(history.events), wrong, replayed=False))
                    continue
                saved = save(history, save_dir) if save_dir is not None else None
                origins[id(history)] = (source, saved)
                yield history

        async with replayer.workflow_replay_iterator(histories()) as results:
            async for result in results:
                source, saved = origins.pop(id(result.history))
                failure = result.replay_failure
                record(Outcome(result.history.workflow_id, result.history.run_id,
                               source.origin, len(result.history.events),
                               None if failure is None else _one_line(failure), saved))

    try:
        with _sdk_logs_silenced():
            async with asyncio.TaskGroup() as group:
                group.create_task(feed())
                for _ in range(lanes):
                    group.create_task(lane())
    except BaseExceptionGroup as eg:
        # Listing the namespace failed (or a replayer could not start, or a history
        # could not be saved): the caller gets that error itself, e.g. an RPCError, not
        # a group of one.
        raise eg.exceptions[0] from None
    finally:
        executor.shutdown(wait=False)
    report.seconds = time.monotonic() - started
    return report


# The core reports a failed activation as a Rust debug dump; the message inside is what
# a person needs ("[TMPRL1100] Nondeterminism error: Activity type of scheduled event ...").
_CORE_MESSAGE = re.compile(r'message: "((?:[^"\\]|\\.)*)"')


def _one_line(e: BaseException) -> str:
    text = str(e)
    inner = _CORE_MESSAGE.search(text)
    if inner:
        text = inner.group(1).replace('\\"', '"')
    text = " ".join(text.split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__

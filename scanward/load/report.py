"""What a load run reports: counts, throughput, latency percentiles, history sizes, CPU
per scan, the replay of every history produced, and the baseline ratios; as a table or
as JSON. The statistics are plain functions (tests call them directly)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowHistory

from scanward import replay as replaying

OUTCOMES = ("completed", "dead", "cancelled", "failed")


@dataclass
class ScanRecord:
    """One iteration: a scan started, steered and ended (``outcome``: completed, dead =
    went dead and was abandoned, cancelled, failed)."""

    scan_id: str
    kind: str
    tenant: str
    started: float  # time.monotonic() before the start request
    ended: float
    outcome: str
    phase: str = ""
    went_dead: bool = False
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank: a value that occurred); None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> dict[str, Any]:
    """p50/p95/p99/max of ``values`` times ``scale``, rounded."""
    def r(v: float | None) -> float | None:
        return None if v is None else round(v * scale, digits)

    return {"p50": r(percentile(values, 50)), "p95": r(percentile(values, 95)),
            "p99": r(percentile(values, 99)), "max": r(max(values) if values else None),
            "n": len(values)}


def counts(records: Iterable[ScanRecord]) -> dict[str, int]:
    """Scans by outcome, and ``started``: the outcomes add up to it."""
    found = {name: 0 for name in OUTCOMES}
    started = 0
    for record in records:
        started += 1
        found[record.outcome] = found.get(record.outcome, 0) + 1
    return {"started": started, **found}


def latency_ms(records: Iterable[ScanRecord], outcome: str = "completed") -> dict[str, Any]:
    """start→end latency percentiles (ms) of the scans that ended ``outcome``."""
    return spread([r.seconds for r in records if r.outcome == outcome], 1000.0)


# ------------------------------------------------------------------------ histories


@dataclass(frozen=True)
class HistorySize:
    workflow_id: str
    events: int
    bytes: int
    activities: int  # activities scheduled


def history_bytes(history: WorkflowHistory) -> int:
    """The history's size as Temporal counts it (``history_size_bytes``, what its
    history size limits apply to): its events serialized as one ``History`` message,
    so each event also counts its field tag and length prefix. The server persists
    custom search attributes under their field names (``Keyword06`` for
    ``ScanStatus`` on the SQL visibility store) and returns them under their aliases,
    so the history as returned here counts the difference of those names' lengths once
    per custom attribute written (tests/test_load.py checks the exact relation)."""
    return History(events=history.events).ByteSize()


def size_of(history: WorkflowHistory) -> HistorySize:
    scheduled = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    return HistorySize(history.workflow_id, len(history.events), history_bytes(history),
                       sum(1 for e in history.events if e.event_type == scheduled))


def queue_seconds(history: WorkflowHistory) -> tuple[float, float]:
    """Seconds the scan's workflow tasks and activity tasks waited in task queues
    (scheduled → started): the part of its latency that task-queue fairness decides."""
    t = EventType
    scheduled: dict[int, float] = {}
    workflow_tasks = activity_tasks = 0.0
    for e in history.events:
        at = e.event_time.seconds + e.event_time.nanos / 1e9
        if e.event_type in (t.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
                            t.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED):
            scheduled[e.event_id] = at
        elif e.event_type == t.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            activity_tasks += at - scheduled.get(e.activity_task_started_event_attributes
                                                 .scheduled_event_id, at)
        elif e.event_type == t.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            workflow_tasks += at - scheduled.get(e.workflow_task_started_event_attributes
                                                 .scheduled_event_id, at)
    return workflow_tasks, activity_tasks


async def fetch_histories(client: Client, workflow_ids: Iterable[str],
                          concurrency: int = 8) -> list[WorkflowHistory]:
    gate = asyncio.Semaphore(concurrency)
    return list(await asyncio.gather(*(_fetch(client, gate, w) for w in workflow_ids)))


async def _fetch(client: Client, gate: asyncio.Semaphore, workflow_id: str
                 ) -> WorkflowHistory:
    # Not a closure over the client: see runner._released.
    async with gate:
        return await client.get_workflow_handle(workflow_id).fetch_history()


def undelivered(records: Iterable[ScanRecord], delivered: set[str]) -> dict[str, Any]:
    """The webhook scenario: scans that completed without the receiver accepting their
    webhook (count, and the first ids)."""
    missing = sorted(r.scan_id for r in records
                     if r.outcome == "completed" and r.scan_id not in delivered)
    return {"undelivered_scans": len(missing), "undelivered": missing[:20]}


def activity_failures(histories: Iterable[WorkflowHistory], activity: str,
                      workflow_ids: set[str]) -> dict[str, int]:
    """The last failure message of ``activity`` in each of those histories, with the
    number of scans it ended: what the worker said (a webhook the receiver never saw
    was refused on the worker, e.g. a secret not allowed to that host)."""
    t = EventType
    messages: dict[str, int] = {}
    for history in histories:
        if history.workflow_id not in workflow_ids:
            continue
        ours: set[int] = set()
        last = ""
        for e in history.events:
            if (e.event_type == t.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                    and e.activity_task_scheduled_event_attributes.activity_type.name
                    == activity):
                ours.add(e.event_id)
            elif (e.event_type == t.EVENT_TYPE_ACTIVITY_TASK_FAILED
                  and e.activity_task_failed_event_attributes.scheduled_event_id in ours):
                last = e.activity_task_failed_event_attributes.failure.message
        if last:
            messages[last] = messages.get(last, 0) + 1
    return messages


def history_stats(sizes: Sequence[HistorySize]) -> dict[str, Any]:
    events = [float(s.events) for s in sizes]
    sizes_b = [float(s.bytes) for s in sizes]
    return {"scans": len(sizes),
            "events": {"p99": percentile(events, 99), "max": max(events, default=None)},
            "bytes": {"p99": percentile(sizes_b, 99), "max": max(sizes_b, default=None)}}


async def replay_all(histories: Sequence[WorkflowHistory], origin: str,
                     concurrency: int = 2) -> replaying.Report:
    """Replay ``histories`` against today's ScanWorkflow (the pre-deploy gate's code)."""
    def source(history: WorkflowHistory) -> replaying.Source:
        async def load() -> WorkflowHistory:  # fetched already: replays/s is replay only
            return history
        return replaying.Source(origin, load, workflow_id=history.workflow_id)

    workflows = replaying.default_workflows()  # imported before the clock starts
    return await replaying.replay([source(h) for h in histories], workflows=workflows,
                                  concurrency=concurrency)


def replay_json(report: replaying.Report) -> dict[str, Any]:
    return {"replayed": len(report.outcomes), "failures": len(report.failures),
            "failed": [{"workflow_id": o.workflow_id, "error": o.error}
                       for o in report.failures][:20],
            "seconds": round(report.seconds, 3),
            "replays_per_second": round(report.replays_per_second, 1)}


# -------------------------------------------------------------------------- report


@dataclass
class LoadReport:
    """Everything ``scanward load`` prints; :meth:`as_json` is the ``--json`` form."""

    scenario: str
    run_id: str
    task_queue: str
    seconds: float
    records: list[ScanRecord]
    history: dict[str, Any] = field(default_factory=dict)
    cpu_ms_per_scan: dict[str, float] | None = None
    replay: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    pacing: dict[str, Any] | None = None  # --rate asked and achieved (load/pacing.py)
    extra: dict[str, Any] = field(default_factory=dict)  # webhook, fairness
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """Why the run failed (``scanward load`` exits 1), one reason each; empty if it
        did not."""
        reasons = []
        failed = counts(self.records)["failed"]
        if failed:
            reasons.append(f"{failed} scan(s) failed")
        if self.replay.get("failures"):
            reasons.append(f"{self.replay['failures']} history(ies) did not replay")
        hook = self.extra.get("webhook") or {}
        if hook.get("undelivered_scans"):
            said = hook.get("notify_errors") or {}
            if hook["answers"].get("503"):
                why = (f"the receiver was down longer than the notify retries (503 for "
                       f"{hook['down_seconds']:g} s)")
            elif said:  # refused on the worker: the receiver never saw it
                why = "the workers' notify failed: " + "; ".join(
                    f"{message} ({n} scan(s))" for message, n in said.items())
            else:
                answers = ", ".join(f"{n}x {status}" for status, n in hook["answers"].items())
                why = f"the receiver answered {answers or 'nothing'}"
            reasons.append(f"{hook['undelivered_scans']} scan(s) completed without their "
                           f"webhook delivered: {why}")
        return reasons

    @property
    def scans_per_second(self) -> float:
        ended = counts(self.records)["started"]
        return ended / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "run_id": self.run_id, "task_queue": self.task_queue,
            "scans": counts(self.records),
            "by_kind": _by_kind(self.records),
            "seconds": round(self.seconds, 3),
            "scans_per_second": round(self.scans_per_second, 2),
            "pacing": self.pacing,
            "latency_ms": latency_ms(self.records),
            "history": self.history,
            "cpu_ms_per_scan": self.cpu_ms_per_scan,
            "replay": self.replay,
            "baseline": self.baseline,
            **self.extra,
            "errors": [{"scan_id": r.scan_id, "kind": r.kind, "error": r.error}
                       for r in self.records if r.error][:20],
            "notes": self.notes,
        }


def _by_kind(records: Iterable[ScanRecord]) -> dict[str, dict[str, int]]:
    kinds: dict[str, list[ScanRecord]] = {}
    for r in records:
        kinds.setdefault(r.kind, []).append(r)
    return {kind: counts(rs) for kind, rs in sorted(kinds.items())}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value}{unit}"


def webhook_line(hook: dict[str, Any]) -> str:
    """The webhook scenario's receiver: its outage, its answers, the scans delivered
    (and the completed scans it never accepted a webhook of, by id)."""
    answers = ", ".join(f"{n}x {status}" for status, n in hook["answers"].items()) or "none"
    line = (f"webhook: receiver down {hook['down_seconds']:g} s, then "
            f"{hook['delay_seconds']:g} s per answer; {hook['requests']} requests "
            f"({answers}); {hook['delivered_scans']} scans delivered")
    if hook.get("undelivered_scans"):
        shown = hook["undelivered"]
        more = hook["undelivered_scans"] - len(shown)
        line += (f"; {hook['undelivered_scans']} completed scans not delivered: "
                 + ", ".join(shown) + (f" and {more} more" if more > 0 else ""))
    return line


def fairness_lines(fairness: dict[str, Any]) -> list[str]:
    """The small tenant's p95 per phase, as a multiple of idle, and its time in task
    queues (p95 of workflow / activity tasks): the figures the README quotes."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} ms"

    def over(phase: str) -> str:
        ratio = fairness.get(f"{phase}_p95_over_idle")
        return "" if ratio is None else f" ({ratio:g}x idle)"

    queued = {phase: fairness.get(f"{phase}_queued_ms") for phase in ("idle", "fifo", "fair")}
    return [
        "tenants: small p95 " + "; ".join(
            f"{phase} {ms(fairness[phase]['p95'])}{over(phase)}"
            for phase in ("idle", "fifo", "fair")),
        "tenants: small in task queues, p95 workflow / activity tasks: " + "; ".join(
            f"{phase} {ms(q['workflow_tasks']['p95'])} / {ms(q['activity_tasks']['p95'])}"
            for phase, q in queued.items() if q is not None),
    ]



def render(report: LoadReport, console: Console) -> None:
    """The report as tables."""
    data = report.as_json()
    scans, lat, hist = data["scans"], data["latency_ms"], data["history"]
    table = Table(title=f"scanward load {report.scenario} (run {report.run_id}, task queue "
                        f"{report.task_queue})", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("scans started / completed / dead / cancelled / failed",
                  " / ".join(str(scans[k]) for k in ("started", *OUTCOMES)))
    table.add_row("seconds, scans/s", f"{data['seconds']:.1f} s, {data['scans_per_second']}")
    pace = data["pacing"]
    if pace:
        table.add_row("starts/s asked / achieved; starts made / due, late",
                      f"{pace['rate_asked']:g} / {pace['rate_achieved']:g}; "
                      f"{pace['starts']} / {pace['due_starts']}, {pace['late_starts']}")
    table.add_row("start→completed p50 / p95 / p99 (ms)",
                  " / ".join(_fmt(lat[k]) for k in ("p50", "p95", "p99")))
    if hist:
        table.add_row("history events p99 / max",
                      f"{_fmt(hist['events']['p99'])} / {_fmt(hist['events']['max'])}")
        table.add_row("history bytes p99 / max",
                      f"{_fmt(hist['bytes']['p99'])} / {_fmt(hist['bytes']['max'])}")
    cpu = data["cpu_ms_per_scan"]
    if cpu:
        table.add_row("CPU per scan (ms): worker / its children / server",
                      " / ".join(_fmt(cpu.get(k)) for k in ("worker", "worker_children",
                                                            "server")))
    replay = data["replay"]
    if replay:
        table.add_row("replayed / failures, replays/s",
                      f"{replay['replayed']} / {replay['failures']}, "
                      f"{replay['replays_per_second']}")
    hook = data.get("webhook")
    if hook is not None and "undelivered_scans" in hook:
        table.add_row("webhooks: scans delivered / completed undelivered",
                      f"{hook['delivered_scans']} / {hook['undelivered_scans']}")
    base = data["baseline"]
    if base:
        table.add_row("baseline (MinimalWorkflow, "
                      f"{base['activities']} no-op activities) wf/s",
                      _fmt(base["workflows_per_second"]))
        table.add_row("baseline CPU per workflow (ms): worker / server",
                      f"{_fmt(base['cpu_ms_per_workflow'].get('worker'))} / "
                      f"{_fmt(base['cpu_ms_per_workflow'].get('server'))}")
        for name, ratio in base["ratios"].items():
            table.add_row(f"ratio {name}", _fmt(ratio))
    console.print(table)
    lines = []
    if "webhook" in data:
        lines.append(webhook_line(data["webhook"]))
    if "fairness" in data:
        lines += fairness_lines(data["fairness"])
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    for problem in data["errors"]:
        console.print(f"error: {problem['scan_id']} ({problem['kind']}): {problem['error']}",
                      markup=False, highlight=False, soft_wrap=True)

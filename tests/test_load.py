"""`scanward load` end to end on real parts: the session's dev server (or the CLI's own),
a real scanward-worker process, the synthetic scanner as a real subprocess, real git.
Every scenario runs with a few iterations and its report must add up: every scan
started ended completed, dead, cancelled or failed; none failed; every history it
produced replays. No timing is asserted."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from scanward import search_attributes as sa
from scanward.load import pacing
from scanward.load import report as rpt
from scanward.load.dead_watch import DeadWatch
from scanward.load.runner import (
    HOOK_SECRET_ENV,
    LoadError,
    LoadOptions,
    Pace,
    drive,
    parse_duration,
    parse_rate,
    run_load,
)
from scanward.load.scenarios import OK, LoadContext, mixed_kinds, run_scan
from scanward.load.stack import wait_for_poller
from scanward.load.synthetic import Behaviour, LoadRepo
from scanward.sarif import read_findings
from scanward.settings import Settings
from scanward.synthetic_scanner import attempt_of, sarif_document
from tests.conftest import eventually
from tests.helpers.processes import spawn_worker, worker_env

REPO_ROOT = Path(__file__).parent.parent


def _opts(temporal_env: WorkflowEnvironment, tmp_path: Path, **fields: Any) -> LoadOptions:
    """Local workers against the session's server (no dev server of their own)."""
    return LoadOptions(start_local_server=True, home=tmp_path / "load",
                       server_address=temporal_env.client.service_client.config.target_host,
                       **fields)


def _rendered(report: rpt.LoadReport) -> str:
    console = Console(record=True, width=200)
    rpt.render(report, console)
    return console.export_text()


def _consistent(report: rpt.LoadReport) -> dict[str, int]:
    scans = rpt.counts(report.records)
    assert sum(scans[k] for k in rpt.OUTCOMES) == scans["started"]
    assert scans["failed"] == 0, report.as_json()["errors"]
    assert report.replay["replayed"] == scans["started"]
    assert report.replay["failures"] == 0, report.replay
    assert report.history["scans"] == scans["started"]
    assert report.cpu_ms_per_scan is not None and report.cpu_ms_per_scan["worker"] > 0
    return scans


# ------------------------------------------------------------------ pure parts


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert rpt.percentile(values, 50) == 50
    assert rpt.percentile(values, 95) == 95
    assert rpt.percentile(values, 99) == 99
    assert rpt.percentile([7.0], 99) == 7
    assert rpt.percentile([], 50) is None


def test_durations_and_rates_parse_with_clear_errors() -> None:
    assert parse_duration("5m") == 300 and parse_duration("250ms") == 0.25
    assert parse_rate("5/s") == 5 and parse_rate("120/m") == 2
    with pytest.raises(LoadError, match="duration '5 minutes'"):
        parse_duration("5 minutes")
    with pytest.raises(LoadError, match="rate '0/s'"):
        parse_rate("0/s")


def test_mixed_spreads_every_kind_over_the_first_iterations() -> None:
    assert mixed_kinds(0.2, 0.2, 0.2)[:5] == ["ok", "crash_then_ok", "dead", "cancel", "ok"]
    with pytest.raises(ValueError, match="add up to at most 1"):
        mixed_kinds(0.5, 0.5, 0.5)


async def test_drive_keeps_to_max_concurrent_and_iterations() -> None:
    import asyncio
    import time

    running = peak = 0

    async def one(i: int) -> rpt.ScanRecord:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        now = time.monotonic()
        return rpt.ScanRecord(str(i), "ok", "t", now, now, "completed")

    records, _ = await drive(Pace(iterations=12, max_concurrent=3), one)
    assert sorted(int(r.scan_id) for r in records) == list(range(12)) and peak == 3


def test_pacing_reports_the_rate_asked_and_kept() -> None:
    kept = pacing.Starts(rate=10.0, max_concurrent=5, duration=0.5,
                         at=[0.0, 0.1, 0.2, 0.3, 0.4])
    assert pacing.summary(kept) == {"rate_asked": 10.0, "rate_achieved": 10.0, "starts": 5,
                                    "due_starts": 5, "late_starts": 0, "max_lag_s": 0.0,
                                    "max_concurrent": 5}
    assert pacing.note(pacing.summary(kept)) is None
    assert pacing.summary(pacing.Starts(rate=None, max_concurrent=5, at=[0.0])) is None
    behind = pacing.Starts(rate=10.0, max_concurrent=2, at=[0.0, 0.1, 0.5, 0.55])
    summary = pacing.summary(behind)
    assert summary is not None
    assert (summary["late_starts"], summary["max_lag_s"], summary["due_starts"]) == (2, 0.3, 4)
    assert pacing.note(summary) == (
        "--rate 10/s was not kept: 4 scans started, at 6.15/s; 2 started late (up to 0.3 "
        "s), waiting for one of --max-concurrent 2 slots: the system did not keep up at "
        "that concurrency (raise --max-concurrent, or lower --rate)")


async def test_a_rate_the_slots_cannot_keep_is_reported_as_missed() -> None:
    """``--rate 20/s --duration 1s`` with 2 slots and iterations of 0.5 s: about 4 starts
    of the 20 due. The report used to give scans/s only, and nowhere that the rate asked
    was not kept; it names the starts due and made, and the late ones."""
    async def one(i: int) -> rpt.ScanRecord:
        began = time.monotonic()
        await asyncio.sleep(0.5)
        return rpt.ScanRecord(str(i), "ok", "t", began, time.monotonic(), "completed")

    starts = pacing.Starts(rate=20.0, max_concurrent=2, duration=1.0)
    records, _ = await drive(Pace(duration=1.0, max_concurrent=2, rate=20.0), one, starts)
    summary = pacing.summary(starts)
    assert summary is not None and summary["due_starts"] == 20
    assert summary["starts"] == len(records) <= 6 and summary["late_starts"] >= 2, summary
    assert summary["rate_achieved"] < 8, summary
    note = pacing.note(summary)
    assert note is not None and note.startswith(
        f"--rate 20/s was not kept: {len(records)} of the 20 starts due were made, at "), note


def test_synthetic_scanner_writes_valid_sarif(tmp_path: Path) -> None:
    checkout = tmp_path / "src"
    checkout.mkdir()
    (checkout / "app.py").write_text("x = 1\n" * 10)
    sarif = tmp_path / "results" / "scan-t-0" / "synthetic" / "attempt-2" / "results.sarif"
    sarif.parent.mkdir(parents=True)
    sarif.write_text(json.dumps(sarif_document(5, "app.py")))
    assert attempt_of(sarif) == 2
    findings = list(read_findings(sarif, scanner="synthetic", checkout=checkout))
    assert len({f.fingerprint for f in findings}) == 5
    assert {f.path for f in findings} == {"app.py"}


# ------------------------------------------------------------------ scenarios


async def test_happy_scenario_end_to_end(temporal_env: WorkflowEnvironment, client: Client,
                                         tmp_path: Path) -> None:
    report = await run_load(_opts(temporal_env, tmp_path, scenario="happy", iterations=4,
                                  scanners=2, max_concurrent=2), print, client)
    scans = _consistent(report)
    assert scans["completed"] == 4
    assert report.history["events"]["max"] >= 20  # clone, 2 x (run, persist), finalize...
    assert rpt.latency_ms(report.records)["n"] == 4


async def test_a_rate_the_system_cannot_keep_is_in_the_report(
        temporal_env: WorkflowEnvironment, client: Client, tmp_path: Path) -> None:
    """Real scans (about a second each) at ``--rate 10/s`` for 2 s with one slot: far
    fewer than the 20 starts due, which the report (JSON and table) says."""
    report = await run_load(_opts(temporal_env, tmp_path, scenario="happy", duration=2.0,
                                  rate=10.0, max_concurrent=1), print, client)
    scans = _consistent(report)
    assert report.pacing is not None
    assert report.pacing["due_starts"] == 20 and report.pacing["starts"] == scans["started"]
    assert scans["started"] < 10 and report.pacing["rate_achieved"] < 5, report.pacing
    assert report.as_json()["pacing"] == report.pacing
    assert any(n.startswith(f"--rate 10/s was not kept: {scans['started']} of the 20 "
                            "starts due were made") for n in report.notes), report.notes
    assert f"{scans['started']} / 20" in _rendered(report)


async def test_mixed_scenario_crashes_dead_retry_abandon_cancel(
        temporal_env: WorkflowEnvironment, client: Client, tmp_path: Path) -> None:
    report = await run_load(_opts(temporal_env, tmp_path, scenario="mixed", iterations=5),
                            print, client)
    scans = _consistent(report)
    kinds = {r.kind: r for r in report.records}
    assert scans == {"started": 5, "completed": 3, "dead": 1, "cancelled": 1, "failed": 0}
    assert kinds["dead"].outcome == "dead" and kinds["dead"].went_dead
    assert kinds["crash_then_ok"].outcome == "completed"
    assert kinds["cancel"].outcome == "cancelled"
    assert any("cannot OOM-kill" in note for note in report.notes)


async def test_webhook_scenario_delivers_once_despite_an_outage(
        temporal_env: WorkflowEnvironment, client: Client, tmp_path: Path) -> None:
    report = await run_load(_opts(temporal_env, tmp_path, scenario="webhook", iterations=3,
                                  webhook_down=2.0, webhook_delay=0.1), print, client)
    scans = _consistent(report)
    hook = report.extra["webhook"]
    assert scans["completed"] == 3
    assert hook["answers"].get("503", 0) >= 1  # the receiver was down at first
    assert hook["delivered_scans"] == 3 and hook["answers"].get("200") == 3
    assert hook["undelivered_scans"] == 0 and hook["undelivered"] == []
    assert report.failures() == []
    # The table's line says the same, in words.
    (line,) = (ln for ln in _rendered(report).splitlines() if ln.startswith("webhook"))
    assert line.startswith("webhook: receiver down 2 s, then 0.1 s per answer;"), line
    assert f"; {hook['requests']} requests (3x 200, " in line, line
    assert line.endswith("); 3 scans delivered"), line


async def test_webhook_scenario_fails_when_scans_complete_undelivered(
        temporal_env: WorkflowEnvironment, client: Client, tmp_path: Path) -> None:
    """The receiver down longer than the notify retries: the scans complete (a webhook
    does not fail a scan) but none was delivered, which is what the scenario exists to
    catch: counted and named in the report, and a failure of the run."""
    report = await run_load(_opts(temporal_env, tmp_path, scenario="webhook", iterations=2,
                                  webhook_down=40.0, webhook_delay=0.0), print, client)
    scans = _consistent(report)
    assert scans["completed"] == 2
    hook = report.extra["webhook"]
    ids = sorted(r.scan_id for r in report.records)
    assert hook["delivered_scans"] == 0 and hook["answers"] == {"503": hook["requests"]}
    assert hook["undelivered_scans"] == 2 and hook["undelivered"] == ids
    assert report.as_json()["webhook"]["undelivered"] == ids
    assert report.failures() == [
        "2 scan(s) completed without their webhook delivered: the receiver was down "
        "longer than the notify retries (503 for 40 s)"]
    rendered = _rendered(report)
    assert "webhooks: scans delivered / completed undelivered" in rendered
    assert " 0 / 2 " in rendered, rendered
    (line,) = (ln for ln in rendered.splitlines() if ln.startswith("webhook:"))
    assert line.endswith(f"; 0 scans delivered; 2 completed scans not delivered: "
                         f"{', '.join(ids)}"), line


async def test_tenants_scenario_reports_idle_fifo_and_fair(
        temporal_env: WorkflowEnvironment, client: Client, tmp_path: Path) -> None:
    said: list[str] = []
    report = await run_load(_opts(temporal_env, tmp_path, scenario="tenants", iterations=6,
                                  small_scans=2, worker_activities=4), said.append, client)
    scans = _consistent(report)
    fairness = report.extra["fairness"]
    assert scans["completed"] == 2 + 2 * (6 + 2)
    for phase in ("idle", "fifo", "fair"):
        assert fairness[phase]["n"] == 2
        assert fairness[f"{phase}_queued_ms"]["activity_tasks"]["n"] == 2
    assert fairness["fifo_bulk"]["n"] == fairness["fair_bulk"]["n"] == 6
    # The summary the README quotes, from the same figures.
    ratio = fairness["fair_p95_over_idle"]
    assert f"fair {fairness['fair']['p95']:,.0f} ms ({ratio:g}x idle)" in "\n".join(said)
    assert any(line.startswith("tenants: small in task queues, p95 workflow / activity "
                               "tasks: idle ") for line in said), said
    # The table is followed by the same lines, not by the raw figures.
    rendered = [ln for ln in _rendered(report).splitlines() if ln.startswith(("tenants", "fair"))]
    assert rendered == [line for line in said if line.startswith("tenants: small")]


def test_cli_load_with_its_own_server_and_baseline(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "starter", "load", "--start-local-server", "--iterations", "5",
         "--baseline", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    scans = report["scans"]
    assert scans["started"] == 5 and scans["completed"] == 5
    assert sum(scans[k] for k in rpt.OUTCOMES) == 5
    assert report["replay"] == {**report["replay"], "replayed": 5, "failures": 0}
    cpu = report["cpu_ms_per_scan"]
    assert cpu["worker"] > 0 and cpu["server"] > 0 and cpu["worker_children"] > 0
    baseline = report["baseline"]
    assert baseline["workflows"] == 5 and baseline["activities"] == 5
    assert set(baseline["ratios"]) == {"throughput (scanward / baseline)",
                                       "worker CPU per scan (scanward / baseline)",
                                       "server CPU per scan (scanward / baseline)"}
    assert "scanward load: replaying 5 histories" in done.stderr


def test_cli_load_refuses_unknown_scenario() -> None:
    done = subprocess.run([sys.executable, "-m", "starter", "load", "nope", "--iterations",
                           "1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2  # a usage error
    assert "unknown scenario 'nope'" in done.stderr


# ------------------------------------------ refusals, before anything starts


@pytest.mark.parametrize(("fields", "message"), [
    ({"scan_seconds": float("inf")}, "--scan-seconds inf: expected a finite number"),
    ({"scenario": "webhook", "webhook_delay": float("nan")},
     "--webhook-delay nan: expected a finite number"),
    ({"scenario": "mixed", "crash_share": float("nan")},
     "--crash-share nan: expected a share from 0 to 1"),
    ({"scenario": "mixed", "dead_share": 1.5}, "--dead-share 1.5: expected a share from 0 to 1"),
    ({"scenario": "mixed", "dead_share": 0.5, "cancel_share": 0.5},
     "mixed: --crash-share, --dead-share, --cancel-share and --oom-share add up to 1.2"),
    ({"run_id": "x/y"}, "--run-id 'x/y': expected 1 to 64 letters, digits"),
    ({"run_id": "r" * 300}, "--run-id 'rrrr"),
    ({"run_id": "-x"}, "--run-id '-x'"),
    ({"run_id": ""}, "--run-id ''"),
    ({"scenario": "tenants", "rate": 5.0},
     "--rate: the tenants scenario queues all its scans at once; size it with --iterations"),
    ({"scenario": "tenants", "max_concurrent": 4, "duration": 60.0},
     "--duration, --max-concurrent: the tenants scenario queues all its scans at once"),
])
async def test_bad_options_are_one_line_before_the_stack_starts(
        tmp_path: Path, fields: dict[str, Any], message: str) -> None:
    """Refused before the dev server, the worker or even the work dir: no server address
    is given, so getting past the checks would start a dev server."""
    opts = LoadOptions(start_local_server=True, home=tmp_path / "load", **fields)
    began = time.monotonic()
    with pytest.raises(LoadError) as refused:
        await run_load(opts, print)
    assert message in str(refused.value), str(refused.value)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "load").exists() and time.monotonic() - began < 5


@pytest.mark.parametrize("fields", [{"tenant_max_jobs": "4"}, {"worker_activities": 2}])
async def test_worker_options_need_the_worker_this_command_starts(
        tmp_path: Path, fields: dict[str, Any]) -> None:
    (option,) = (f"--{name.replace('_', '-')}" for name in fields)
    with pytest.raises(LoadError, match=f"^{option}: configures the worker process this "
                                        "command starts: it needs --start-local-server"):
        await run_load(LoadOptions(home=tmp_path / "load", **fields), print)


def test_cli_refuses_bad_options_in_one_line() -> None:
    for args, message in ((["--run-id", "x/y"], "--run-id 'x/y'"),
                          (["mixed", "--crash-share", "nan"], "--crash-share nan"),
                          (["--scan-seconds", "inf"], "--scan-seconds inf")):
        done = subprocess.run([sys.executable, "-m", "starter", "load", *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, (args, done.stderr)  # usage, as typer's own
        assert done.stderr.startswith(f"scanward: error: {message}"), (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)


async def test_no_worker_polling_the_task_queue_is_one_line_and_leaves_nothing(
        client: Client) -> None:
    """A deployment's task queue that no worker polls: named, with its namespace and what
    to do, after the patience; no work dir kept (it holds no log) and no scan started."""
    queue = f"nobody-polls-{uuid.uuid4().hex[:8]}"
    run_id = f"nopoller{uuid.uuid4().hex[:6]}"
    said: list[str] = []
    opts = LoadOptions(task_queue=queue, run_id=run_id, iterations=1, poller_patience=1.0)
    async with asyncio.timeout(60):  # it used to wait here for ever
        with pytest.raises(LoadError) as refused:
            await run_load(opts, said.append, client)
    assert str(refused.value).startswith(
        f"no worker polls task queue {queue} in namespace default after 1s: start the "
        "deployment's workers"), str(refused.value)
    assert "--start-local-server" in str(refused.value)
    assert not any("kept" in line for line in said), said
    assert not list(Path(tempfile.gettempdir()).glob(f"scanward-load-{run_id}-*"))
    assert (await client.count_workflows(f'TaskQueue="{queue}"')).count == 0


# ------------------------------------------------------------------ dead, unexpectedly


@pytest.mark.usefixtures("scan_worker_task")
async def test_a_scan_dead_when_its_kind_is_not_fails_and_is_terminated(
        client: Client, settings: Settings, tmp_path: Path) -> None:
    """Two "ok" scans whose scanner always crashes: they go dead and wait for an operator
    that the load is not going to be. The dead watch ends the wait (one visibility query
    per round for both), records each as failed with the scanner's reason, and
    terminates it."""
    repo = LoadRepo(tmp_path / "repo")
    repo.add(OK, Behaviour("crash"))
    interval = 0.5
    async with DeadWatch(client, settings.task_queue, interval=interval) as watch:
        ctx = LoadContext(client, settings.task_queue, f"dead{uuid.uuid4().hex[:6]}", repo,
                          dead_watch=watch)
        began = time.monotonic()
        async with asyncio.timeout(120):  # without the watch: for ever
            records = await asyncio.gather(run_scan(ctx, 0, OK), run_scan(ctx, 1, OK))
        elapsed = time.monotonic() - began
    for record in records:
        assert record.outcome == "failed", record
        assert record.error is not None and record.error.startswith(
            "went dead (ok scan: no operator will retry or abandon it): synthetic: "), record
        described = await client.get_workflow_handle(record.scan_id).describe()
        assert described.status is WorkflowExecutionStatus.TERMINATED
    # One query per round, not one per scan.
    assert 1 <= watch.polls <= elapsed / interval + 2, (watch.polls, elapsed)


# ------------------------------------------------------------------ interrupted


async def test_a_cancelled_load_terminates_its_scans_and_keeps_its_logs(
        temporal_env: WorkflowEnvironment, client: Client) -> None:
    """The load's task cancelled (what Ctrl-C does) while its scans run: each is
    terminated before the cancellation goes on, and the work dir is kept, naming its
    log, since it holds one."""
    run_id = f"cancel{uuid.uuid4().hex[:6]}"
    said: list[str] = []
    opts = LoadOptions(start_local_server=True, run_id=run_id, iterations=2,
                       scan_seconds=60.0,
                       server_address=temporal_env.client.service_client.config.target_host)
    load = asyncio.create_task(run_load(opts, said.append, client))
    running = f'TaskQueue="load-{run_id}" AND ExecutionStatus="Running"'

    async def both_running() -> bool:
        return (await client.count_workflows(running)).count == 2

    await eventually(both_running, timeout=90, what="the load's two scans running")
    await asyncio.sleep(1)
    load.cancel()
    with pytest.raises(asyncio.CancelledError):
        await load
    terminated = f'TaskQueue="load-{run_id}" AND ExecutionStatus="Terminated"'

    async def both_terminated() -> bool:
        return (await client.count_workflows(terminated)).count == 2

    await eventually(both_terminated, what="the load's scans terminated")
    (kept,) = [line for line in said if line.startswith("kept ")]
    home = Path(kept.split()[1].rstrip(":"))
    assert kept == f"kept {home}: worker.log", kept
    assert (home / "worker.log").is_file()
    shutil.rmtree(home)


@pytest.mark.usefixtures("scan_worker_task")
@pytest.mark.parametrize(("sig", "said"), [(signal.SIGINT, "interrupted"),
                                           (signal.SIGTERM, "terminated (SIGTERM)")])
async def test_ctrl_c_against_a_deployment_stops_the_scans_and_the_runtime(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        sig: signal.Signals, said: str) -> None:
    """``scanward load`` against a deployment's task queue (this test's worker), SIGINT
    (Ctrl-C) or SIGTERM (``timeout``, a CI job cancelled: it used to end the load at once,
    its scans left running) while its scans run: it exits 1 saying which, its scans are
    terminated, and nothing holds a client past the session (client.run's warning)."""
    run_id = f"sigint{uuid.uuid4().hex[:6]}"
    argv = ["scanward", "load", "--task-queue", settings.task_queue, "--iterations", "2",
            "--scan-seconds", "60", "--run-id", run_id]
    # The child handles SIGINT as a terminal's Ctrl-C, whatever this process inherited.
    code = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
            f" sys.argv = {argv!r}; runpy.run_module('starter', run_name='__main__')")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
           "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200",
           "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
           "TEMPORAL_NAMESPACE": "default"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    queue = f'TaskQueue="{settings.task_queue}"'

    async def both_running() -> bool:
        return (await client.count_workflows(
            f'{queue} AND ExecutionStatus="Running"')).count == 2

    try:
        await eventually(both_running, timeout=60, what="the load's two scans running")
        await asyncio.sleep(1)
        proc.send_signal(sig)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = err.decode()
    assert proc.returncode == 1, stderr
    assert stderr.strip().endswith(f"scanward: error: {said}"), stderr
    assert "outlived its session" not in stderr, stderr
    assert "Traceback" not in stderr and "kept" not in stderr, stderr

    async def both_terminated() -> bool:
        return (await client.count_workflows(
            f'{queue} AND ExecutionStatus="Terminated"')).count == 2

    await eventually(both_terminated, what="the load's scans terminated")
    assert (await client.count_workflows(f'{queue} AND ExecutionStatus="Running"')).count == 0


# ------------------------------------------------------------------ history bytes


def _as_persisted(events: Any) -> History:
    """The events with each custom search attribute under a name as long as its field
    name on the server (``Keyword06`` for ``ScanStatus``, ``KeywordList01`` for
    ``ScanDeadScanners``: the SQL visibility store's columns). The server persists and
    counts them under those names and maps them back to the aliases when it returns the
    history."""
    custom = {key.name for key in sa.ALL}
    history = History(events=events)
    for event in history.events:
        for attrs in (event.workflow_execution_started_event_attributes,
                      event.upsert_workflow_search_attributes_event_attributes):
            fields = attrs.search_attributes.indexed_fields
            for n, name in enumerate(sorted(n for n in fields if n in custom), start=1):
                payload = fields[name]
                kind = payload.metadata["type"].decode()  # Keyword, KeywordList
                fields[f"{kind}{n:02d}"].CopyFrom(payload)
                del fields[name]
    return history


@pytest.mark.usefixtures("scan_worker_task")
async def test_history_bytes_are_the_servers_history_size(
        client: Client, settings: Settings, tmp_path: Path) -> None:
    """``history bytes`` is the size of the events as one History message (each event
    with its field tag and length prefix), as the server counts ``history_size_bytes``.
    Exactly equal once the custom search attributes are named as the server persists
    them (_as_persisted); as returned, the aliases' extra length is counted too. The old
    sum of the events' own sizes was below the server's count by the prefixes."""
    repo = LoadRepo(tmp_path / "repo")
    repo.add(OK, Behaviour("ok", findings=3))
    ctx = LoadContext(client, settings.task_queue, f"bytes{uuid.uuid4().hex[:6]}", repo)
    record = await run_scan(ctx, 0, OK)
    assert record.outcome == "completed", record
    handle = client.get_workflow_handle(record.scan_id)
    history = await handle.fetch_history()
    info = (await handle.describe()).raw_description.workflow_execution_info
    assert info.history_length == len(history.events)
    size = rpt.size_of(history)
    assert size.bytes == History(events=history.events).ByteSize()
    assert _as_persisted(history.events).ByteSize() == info.history_size_bytes
    assert size.bytes > info.history_size_bytes > sum(e.ByteSize() for e in history.events)


def _descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie whose parent is gone waits for init, which may not reap here)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.parametrize(("sig", "group", "said"), [
    (signal.SIGINT, True, "interrupted"), (signal.SIGTERM, False, "terminated (SIGTERM)")])
async def test_terminal_ctrl_c_with_its_own_server_stops_cleanly(
        sig: signal.Signals, group: bool, said: str) -> None:
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group: with
    ``--start-local-server`` that used to kill the dev server and the worker at once,
    and the load then spent ~28 s failing to reach the server to terminate its scans and
    ended with "temporal: tcp connect error". They run in process groups of their own
    now: the load terminates its scans, stops them, and says "interrupted"; nothing it
    started is left. SIGTERM to the load alone (``timeout``, a CI job cancelled) used to
    end it at once and leave the dev server and the worker running, orphaned."""
    argv = [sys.executable, "-c",
            "import runpy, signal, sys; signal.signal(signal.SIGINT, "
            "signal.default_int_handler); sys.argv = ['scanward'] + sys.argv[1:]; "
            "runpy.run_module('starter', run_name='__main__')",
            "load", "happy", "--start-local-server", "--iterations", "3",
            "--scan-seconds", "60", "--run-id", f"ctrlc{uuid.uuid4().hex[:6]}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANWARD_", "TEMPORAL_"))}
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO_ROOT, env=env | {"PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)  # a terminal's foreground group of its own
    assert proc.stderr is not None
    lines: list[str] = []
    started: set[int] = set()
    left_behind = False
    try:
        while not any("scenario happy" in line for line in lines):
            line = await asyncio.wait_for(proc.stderr.readline(), 120)
            assert line, lines
            lines.append(line.decode())
        await asyncio.sleep(5)  # the scanners run
        started = _descendants(proc.pid)
        assert len(started) >= 2, started  # the dev server and the worker, at least
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        began = time.monotonic()
        _, rest = await asyncio.wait_for(proc.communicate(), 120)
        took = time.monotonic() - began
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        for pid in started:  # what it left behind, if it did (in groups of their own)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                left_behind = True
    stderr = "".join(lines) + rest.decode()
    assert proc.returncode == 1, stderr
    assert stderr.strip().endswith(f"scanward: error: {said}"), stderr
    assert "tcp connect error" not in stderr, stderr
    assert took < 20, (took, stderr)
    assert not left_behind, stderr
    for said in stderr.splitlines():
        if said.startswith("scanward load: kept "):
            shutil.rmtree(said.split()[3].rstrip(":"), ignore_errors=True)


async def _a_worker_polled_then_killed(temporal_env: WorkflowEnvironment, client: Client,
                                       settings: Settings, tmp_path: Path) -> str:
    """A deployment whose only worker polled its task queue, then was SIGKILLed (the
    server lists it as a poller for minutes after); returns the queue."""
    queue = settings.task_queue
    worker = spawn_worker(worker_env(temporal_env, settings), tmp_path / "worker.log")
    try:
        await wait_for_poller(client, queue, worker, tmp_path / "worker.log", patience=60)
    finally:
        worker.kill()
        worker.wait()
    return queue


async def test_a_deployment_whose_worker_died_fails_its_scans_in_time(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path) -> None:
    """The deployment's only worker SIGKILLed and not restarted: the server still lists
    it as a poller for minutes, so the load starts its scans, which never end. It used to
    wait for them for ever (``--duration 3s`` too). Each fails after ``--scan-timeout``
    naming the task queue, is terminated, and the run fails."""
    queue = await _a_worker_polled_then_killed(temporal_env, client, settings, tmp_path)
    run_id = f"dead{uuid.uuid4().hex[:6]}"
    opts = LoadOptions(task_queue=queue, run_id=run_id, duration=1.0, max_concurrent=2,
                       scan_timeout=5.0, home=tmp_path / "load")
    async with asyncio.timeout(60):  # it used to wait here for ever
        report = await run_load(opts, lambda _: None, client)
    scans = rpt.counts(report.records)
    assert scans["started"] == 2 and scans["failed"] == 2, report.as_json()
    assert report.failures() == ["2 scan(s) failed"]
    for error in report.as_json()["errors"]:
        assert error["error"] == (f"not ended 5 s after its start (--scan-timeout): do the "
                                  f"workers of task queue {queue} run, and keep up?"), error
    assert all(r.seconds < 10 for r in report.records), [r.seconds for r in report.records]

    async def terminated() -> bool:
        return (await client.count_workflows(
            f'TaskQueue="{queue}" AND ExecutionStatus="Terminated"')).count == 2

    await eventually(terminated, what="the load's scans terminated")


async def test_a_temporal_restart_mid_run_fails_no_healthy_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Temporal server (a dev server with its database on disk) killed while the
    load's scans run, and back 8 s later: the scans live through it on the server and
    the worker, and so must the load's waits. It used to count 5 of 6 such scans
    "failed" (``RPCError: tcp connect error``) and terminate them once the server was
    back."""
    from scanward import client as api
    from scanward.devserver import DevServer, free_port

    server = DevServer(port=free_port(), ui_port=None, db_file=tmp_path / "temporal.db",
                       log_file=tmp_path / "temporal.log", own_process_group=True)
    await asyncio.to_thread(server.start)
    try:
        monkeypatch.setenv("TEMPORAL_ADDRESS", server.address)
        monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
        client = await api.connect()
        run_id = f"outage{uuid.uuid4().hex[:6]}"
        opts = LoadOptions(start_local_server=True, server_address=server.address,
                           home=tmp_path / "load", run_id=run_id, iterations=3,
                           scan_seconds=8.0)
        load = asyncio.create_task(run_load(opts, print, client))
        running = f'TaskQueue="load-{run_id}" AND ExecutionStatus="Running"'

        async def all_running() -> bool:
            return (await client.count_workflows(running)).count == 3

        await eventually(all_running, timeout=90, what="the load's scans running")
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        server.proc = None
        await asyncio.sleep(8)
        await asyncio.to_thread(server.start)
        report = await asyncio.wait_for(load, 180)
    finally:
        await asyncio.to_thread(server.stop)
    scans = rpt.counts(report.records)
    assert (scans["started"], scans["completed"], scans["failed"]) == (3, 3, 0), \
        report.as_json()["errors"]
    assert report.replay["replayed"] == 3 and report.replay["failures"] == 0


async def test_webhooks_refused_on_the_worker_are_reported_with_the_workers_reason(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``webhook`` against a deployment whose workers may not send the ``loadhook``
    secret to this machine: the scans complete, no webhook reaches the receiver, and the
    run fails. The reason used to be "the receiver answered nothing"; it is what the
    workers said, from the scans' histories."""
    worker = spawn_worker(worker_env(temporal_env, settings), tmp_path / "worker.log")
    try:
        await wait_for_poller(client, settings.task_queue, worker, tmp_path / "worker.log",
                              patience=60)
        monkeypatch.setenv(HOOK_SECRET_ENV, "the-load-has-it")
        opts = LoadOptions(scenario="webhook", task_queue=settings.task_queue, iterations=2,
                           run_id=f"hook{uuid.uuid4().hex[:6]}", home=tmp_path / "load")
        report = await run_load(opts, print, client)
    finally:
        worker.terminate()
        worker.wait(30)
    assert rpt.counts(report.records)["completed"] == 2
    hook = report.extra["webhook"]
    assert hook["requests"] == 0 and hook["undelivered_scans"] == 2
    ((message, scans),) = hook["notify_errors"].items()
    assert scans == 2 and message.startswith("secret 'loadhook' may not be sent to "
                                             "127.0.0.1:"), message
    (reason,) = report.failures()
    assert reason == ("2 scan(s) completed without their webhook delivered: the workers' "
                      f"notify failed: {message} (2 scan(s))"), reason


async def test_a_deployment_whose_worker_stopped_is_refused_before_any_scan(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        tmp_path: Path) -> None:
    """The server keeps listing a SIGKILLed worker as a poller for minutes; the load
    used to take it for a live one and start scans no worker would run. A poller not
    seen for ``poller_fresh`` seconds (90 by default; a live idle worker polls again
    within about 70 s) does not count: the load stops before any scan, saying when the
    queue was last polled."""
    queue = await _a_worker_polled_then_killed(temporal_env, client, settings, tmp_path)
    await asyncio.sleep(3)
    opts = LoadOptions(task_queue=queue, run_id=f"gone{uuid.uuid4().hex[:6]}", iterations=2,
                       poller_patience=1.0, poller_fresh=2.0, home=tmp_path / "load")
    with pytest.raises(LoadError) as refused:
        await run_load(opts, lambda _: None, client)
    message = str(refused.value)
    assert message.startswith(f"no worker polls task queue {queue} in namespace default "
                              "after 1s (its last poll was at "), message
    assert "s ago: its worker has stopped): start the deployment's workers" in message
    assert (await client.count_workflows(f'TaskQueue="{queue}"')).count == 0

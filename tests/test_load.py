"""`scanward load` end to end on real parts: the session's dev server (or the CLI's own),
a real scanward-worker process, the synthetic scanner as a real subprocess, real git.
Every scenario runs with a few iterations and its report must add up: every scan
started ended completed, dead, cancelled or failed; none failed; every history it
produced replays. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scanward.load import report as rpt
from scanward.load.runner import (
    LoadError,
    LoadOptions,
    Pace,
    drive,
    parse_duration,
    parse_rate,
    run_load,
)
from scanward.load.scenarios import mixed_kinds
from scanward.sarif import read_findings
from scanward.synthetic_scanner import attempt_of, sarif_document

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
    # The table's line says the same, in words.
    (line,) = (ln for ln in _rendered(report).splitlines() if ln.startswith("webhook"))
    assert line.startswith("webhook: receiver down 2 s, then 0.1 s per answer;"), line
    assert f"; {hook['requests']} requests (3x 200, " in line, line
    assert line.endswith("); 3 scans delivered"), line


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
    assert done.returncode == 1
    assert "unknown scenario 'nope'" in done.stderr

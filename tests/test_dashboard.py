"""The Grafana dashboard (deploy/grafana/scanward.json): every PromQL expression in it is
run against the real Prometheus of the test stack after real scans, and returns data.

The scans run on a real worker process with the kubernetes backend against the test
control plane (kwok fails the ``k-oom`` pod as OOMKilled, so the OOM bumps are real:
128 -> 256 -> 512 -> 1024 MiB, then dead at the cap), pushing to the real Pushgateway,
scraped on its health port and its Temporal runtime endpoint. One scan has a scanner
that succeeds, one OOM-killed to death, one dead on bad input, a webhook that is
delivered and one whose receiver is down (given up after its retries). The alerts that
this scenario must raise are checked in the same Prometheus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scanward import client as api
from scanward import metrics
from scanward.contract import NotifyTarget, ScannerStatus, ScanStatus
from scanward.devserver import free_port
from scanward.settings import Settings
from scanward.webhook_receiver import WebhookReceiver
from tests.conftest import FAST, eventually, scan_request
from tests.helpers.processes import spawn_worker, worker_env
from tests.prometheus_fixture import PrometheusStack, finite
from tests.test_kube_backend import PodStandIn, kube_catalog

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "scanward.json"
# Grafana's built-in variables, as Grafana would expand them on a short time range.
VARIABLES = {"$__rate_interval": "5m"}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query target."""
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    unknown = re.findall(r"\$\{?\w+", expr)
    assert not unknown, f"unknown dashboard variables {unknown} in {expr}"
    return expr


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "scanward" and dashboard["title"]
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource", "datasource", "prometheus")
    queried = [p for p in panels(dashboard) if p.get("targets")]
    assert queried
    for panel in queried:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert len({p["id"] for p in panels(dashboard)}) == len(panels(dashboard))
    titles = " ".join(p["title"].lower() for p in queried)
    for topic in ("scans", "outcome", "duration", "dead scanners", "oom", "backlog",
                  "webhook"):
        assert topic in titles, f"no panel about {topic}"


async def test_every_dashboard_query_returns_data_after_real_scans(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, tmp_path: Path, control_plane: Any, kube_namespace: str,
        receiver: WebhookReceiver, prometheus_stack: PrometheusStack,
        scrape_targets: list[str]) -> None:
    stack = prometheus_stack
    kube = dataclasses.replace(
        settings, task_queue=f"dash-{uuid.uuid4().hex[:10]}",
        catalog_file=kube_catalog(tmp_path / "kube-catalog.json",
                                  **{"k-oom": {"max_memory_mib": 1024}}))
    health, sdk = free_port(), free_port()
    env = worker_env(temporal_env, kube) | {
        "SCANWARD_BACKEND": "kubernetes",
        "SCANWARD_KUBECONFIG": str(control_plane.kubeconfig),
        "SCANWARD_KUBE_NAMESPACE": kube_namespace,
        "SCANWARD_PUSHGATEWAY": stack.pushgateway,
        "SCANWARD_HEALTH_PORT": str(health), "SCANWARD_METRICS_PORT": str(sdk),
        metrics.INTERVAL_VARIABLE: "1"}
    stand_in = PodStandIn(control_plane, kube_namespace, kube.results_root)
    stand_in.start()
    proc = spawn_worker(env, tmp_path / "worker.log")
    scrape_targets.append(stack.scrape(health_port=health, metrics_port=sdk))
    try:
        await eventually(lambda: _ready(health), timeout=60, what="worker ready")
        down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
        request = scan_request(
            flawed_repo, "k-ok", "k-oom", "k-badinput",
            tuning=FAST.model_copy(update={"scanner_attempts": 5}),
            notify=(NotifyTarget(url=receiver.url, secret_ref="hook"),
                    NotifyTarget(url=down, secret_ref="hook")))
        handle = await api.start_scan(client, request, task_queue=kube.task_queue)

        async def settled() -> bool:
            runs = {r.scanner: r for r in (await api.progress(client, handle.id)).scanners}
            return {n: r.status for n, r in runs.items()} == {
                "k-ok": ScannerStatus.SUCCEEDED, "k-oom": ScannerStatus.DEAD,
                "k-badinput": ScannerStatus.DEAD}

        await eventually(settled, timeout=120, what="k-ok done, k-oom and k-badinput dead")
        queue = kube.task_queue
        # The worker's survey sees the dead scan and how long it has been dead.
        await asyncio.to_thread(
            stack.wait, f'scanward_scans{{task_queue="{queue}",status="dead"}} == 1 and '
            f'on() scanward_dead_scans_oldest_seconds{{task_queue="{queue}"}} > 1')
        await api.abandon(client, handle.id)
        summary = await handle.result()
        assert summary.status is ScanStatus.PARTIAL
        assert len(receiver.accepted) == 1
        await asyncio.to_thread(
            stack.wait, f'scanward_scans_closed_1h{{task_queue="{queue}",status="partial"}}'
            ' >= 1')
        down_host = metrics.webhook_host(down)
        await asyncio.to_thread(
            stack.wait, f'scanward_webhook_deliveries_total{{host="{down_host}",'
            'outcome="gave_up"} >= 1')

        # The scenario's alerts fire in the real Prometheus.
        wanted = {("ScanwardScannersDying", "failure_class", "oom_killed"),
                  ("ScanwardScannersDying", "failure_class", "bad_input"),
                  ("ScanwardOOMRetriesRising", "scanner", "k-oom"),
                  ("ScanwardWebhookDeliveriesFailing", "host", down_host)}

        missing = set(wanted)

        async def all_firing() -> bool:
            nonlocal missing
            firing = [a["labels"] for a in await asyncio.to_thread(stack.alerts)
                      if a["state"] == "firing"]
            missing = {(name, key, value) for name, key, value in wanted
                       if not any(a["alertname"] == name and a.get(key) == value
                                  for a in firing)}
            return not missing

        try:
            await eventually(all_firing, timeout=30, what="the scenario's alerts firing")
        except AssertionError as e:
            raise AssertionError(f"not firing: {sorted(missing)}") from e

        # Every dashboard query returns data, with the scenario's figures where known.
        dashboard = json.loads(DASHBOARD.read_text())
        results = {}
        for title, expr in expressions(dashboard):
            result = await asyncio.to_thread(stack.query, expand(expr))
            assert finite(result), f"panel {title!r}: no data for {expand(expr)}"
            results[expr] = result
        assert len(results) == len(expressions(dashboard)) >= 12

        def by(expr_part: str, label: str) -> dict[str, float]:
            (expr,) = [e for e in results if expr_part in e]
            return {s["metric"].get(label, ""): float(s["value"][1]) for s in results[expr]}

        assert by("(scanward_scanner_dead unless", "failure_class")["oom_killed"] >= 1
        assert by("(scanward_scanner_dead unless", "failure_class")["bad_input"] >= 1
        assert by('outcome="oom_killed"}', "scanner")["k-oom"] >= 4
        assert by('outcome=~"gave_up|rejected"}', "host")[down_host] >= 1
        assert by("scanward_scans_closed_1h", "status")["partial"] >= 1
        assert by("sum(scanward_worker_ready)", "")[""] >= 1
        # The four OOM-killed Jobs asked for twice the memory each time.
        limits = [j["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
                  ["memory"] for n, j in sorted(stand_in.jobs.items()) if "-k-oom-" in n]
        assert limits == ["128Mi", "256Mi", "512Mi", "1Gi"]  # the API server canonicalizes
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 60)
        finally:
            if proc.poll() is None:
                proc.kill()
            stand_in.stop()
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]


async def _ready(port: int) -> bool:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).status_code == 200

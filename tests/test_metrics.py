"""Scanner attempts are recorded by the worker and pushed to a Pushgateway as soon as
each ends (scanner Jobs are shorter than a scrape). Against the real Pushgateway and
Prometheus (tests/prometheus_fixture.py): one source per series (a Prometheus that
scrapes the workers *and* the gateway counts each attempt once), a worker's group leaves
the gateway on a clean stop, and the group of a crashed worker is deleted by a live one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import socket
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import worker as scan_worker
from scanward import client as api
from scanward import metrics
from scanward.contract import ScannerStatus, ScanStatus
from scanward.devserver import free_port
from scanward.settings import Settings
from tests.conftest import FAST, eventually, scan_request, start
from tests.helpers.processes import spawn_worker, worker_env
from tests.prometheus_fixture import PrometheusStack


def group(stack: PrometheusStack, instance: str) -> dict[str, Any] | None:
    """The Pushgateway group of ``instance`` (job scanward_scanner), if any."""
    for g in stack.gateway_groups():
        if g["labels"] == {"job": metrics.PUSH_JOB, "instance": instance}:
            return g
    return None


def pushed_value(g: dict[str, Any], name: str, field: str = "value",
                 **labels: str) -> float | None:
    """A sample of the group (``field="count"`` for a histogram's count)."""
    for sample in g.get(name, {}).get("metrics", []):
        if all(sample["labels"].get(k) == v for k, v in labels.items()):
            return float(sample[field])
    return None


async def get_text(url: str) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(url, timeout=5)).text


async def test_attempts_pushed_not_served_twice_and_group_deleted_on_clean_stop(
        client: Client, settings: Settings, flawed_repo: Path,
        prometheus_stack: PrometheusStack) -> None:
    port = free_port()
    pushed = dataclasses.replace(
        settings, pushgateway=prometheus_stack.pushgateway, health_port=port,
        env={**settings.env, metrics.INTERVAL_VARIABLE: "1"})
    instance = metrics.Pusher(prometheus_stack.pushgateway).instance  # this process's
    async with scan_worker.running(pushed, client):
        handle = await start(client, pushed, scan_request(flawed_repo, "fake", "badinput"))

        async def pushed_both() -> bool:
            g = group(prometheus_stack, instance)
            return g is not None and all(
                (pushed_value(g, "scanward_scanner_attempts_total", scanner=s, outcome=o)
                 or 0) >= 1 for s, o in (("fake", "succeeded"), ("badinput", "bad_input")))

        await eventually(pushed_both, what="both attempts in the Pushgateway group")
        g = group(prometheus_stack, instance)
        assert g is not None
        assert (pushed_value(g, "scanward_scanner_attempt_seconds", "count", scanner="fake",
                             backend="local") or 0) >= 1
        # What the attempt was given and scanned, by outcome: the data to tune sizing.
        for name in ("scanward_scanner_memory_mib", "scanward_scanner_checkout_mib"):
            assert (pushed_value(g, name, "count", scanner="fake", backend="local",
                                 outcome="succeeded") or 0) >= 1, name
            assert (pushed_value(g, name, "sum", scanner="fake", backend="local",
                                 outcome="succeeded") or 0) > 0, name
        # Every (scanner, outcome) exists from the start, at zero until it happens.
        assert pushed_value(g, "scanward_scanner_attempts_total", scanner="fake",
                            outcome="oom_killed") == 0
        served = await get_text(f"http://127.0.0.1:{port}/metrics")
        # While pushed, the attempts are not also served: one source per series.
        assert "scanward_scanner_attempts_total" not in served
        assert "scanward_worker_ready 1.0" in served
        await handle.cancel()
    # A clean stop deletes the worker's group.
    assert group(prometheus_stack, instance) is None
    # No longer pushing: /metrics would serve the attempts again.
    assert b"scanward_scanner_attempts_total" in metrics.exposition()


def unique_catalog(path: Path, base: Path, suffix: str) -> tuple[Path, str, str]:
    """The test catalog's ``fake`` and ``badinput`` scanners under names no other test
    uses, so that Prometheus queries over every job see this test's attempts only."""
    entries = {e["name"]: e for e in json.loads(base.read_text())["scanners"]}
    ok, bad = f"ok-{suffix}", f"bad-{suffix}"
    path.write_text(json.dumps({"scanners": [{**entries["fake"], "name": ok},
                                             {**entries["badinput"], "name": bad}]}))
    return path, ok, bad


async def test_two_workers_groups_sum_to_the_attempts_once_and_stale_groups_go(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path, tmp_path: Path, prometheus_stack: PrometheusStack,
        scrape_targets: list[str]) -> None:
    """Two worker processes, each its own Pushgateway group and task queue, both also
    scraped directly: ``sum by (outcome)`` over all of Prometheus equals the attempts
    made, exactly once. Then one is SIGKILLed (its group stays) and the live one deletes
    that group once stale; the live one's own group goes with its clean stop."""
    catalog, ok, bad = unique_catalog(tmp_path / "unique.json", settings.catalog_file
                                      or Path(), uuid.uuid4().hex[:8])
    workers: dict[str, tuple[subprocess.Popen[bytes], Settings]] = {}
    for name in ("a", "b"):
        queue = f"{settings.task_queue}-{name}"
        health = free_port()
        env = worker_env(temporal_env, settings) | {
            "SCANWARD_TASK_QUEUE": queue, "SCANWARD_CATALOG": str(catalog),
            "SCANWARD_PUSHGATEWAY": prometheus_stack.pushgateway,
            "SCANWARD_HEALTH_PORT": str(health), metrics.INTERVAL_VARIABLE: "1"}
        proc = spawn_worker(env, tmp_path / f"worker-{name}.log")
        workers[name] = proc, dataclasses.replace(settings, task_queue=queue)
        scrape_targets.append(prometheus_stack.scrape(health_port=health,
                                                      labels={"test_worker": name}))
    try:
        host = socket.gethostname()
        instances = {name: f"{host}-{proc.pid}" for name, (proc, _) in workers.items()}
        scans = {"a": 2, "b": 1}
        handles = [await start(client, workers[name][1], scan_request(flawed_repo, ok, bad))
                   for name, count in scans.items() for _ in range(count)]

        async def all_dead() -> bool:
            for handle in handles:
                runs = {r.scanner: r.status for r in (await api.progress(client,
                                                                         handle.id)).scanners}
                if runs != {ok: ScannerStatus.SUCCEEDED, bad: ScannerStatus.DEAD}:
                    return False
            return True

        await eventually(all_dead, timeout=60, what="every scan's bad scanner dead")
        total = sum(scans.values())
        query = f'sum by (outcome) (scanward_scanner_attempts_total{{scanner=~"{ok}|{bad}"}})'
        expected = {"succeeded": total, "bad_input": total}
        # Every outcome series exists (zeros included); wait for the two non-zero ones.
        nonzero = await asyncio.to_thread(
            prometheus_stack.wait, query, lambda v: {k: x for k, x in v.items() if x} ==
            expected, 30, "outcome")
        assert {k: x for k, x in nonzero.items() if x} == expected
        await asyncio.sleep(3)  # three more scrapes of every target: still once
        again = await asyncio.to_thread(prometheus_stack.values, query, "outcome")
        assert {k: x for k, x in again.items() if x} == expected
        # Each worker's group holds its own attempts: two groups, summed above.
        per_group = await asyncio.to_thread(
            prometheus_stack.values,
            f'sum by (instance) (scanward_scanner_attempts_total{{scanner="{ok}"}})',
            "instance")
        assert per_group == {instances["a"]: 2.0, instances["b"]: 1.0}
        # Both workers' /metrics were scraped the whole time (and held no attempts).
        up = await asyncio.to_thread(prometheus_stack.values,
                                     'up{job="scanward-worker",test_worker=~"a|b"}',
                                     "test_worker")
        assert up == {"a": 1.0, "b": 1.0}
        for handle in handles:
            await api.abandon(client, handle.id)
            await handle.result()

        # b crashes: its group stays behind, then a (alive) deletes it once it is stale
        # (20 intervals of 1 s without a push).
        proc_b = workers["b"][0]
        proc_b.send_signal(signal.SIGKILL)
        proc_b.wait(10)
        assert group(prometheus_stack, instances["b"]) is not None
        killed = time.monotonic()
        await eventually(lambda: _async(group(prometheus_stack, instances["b"]) is None),
                         timeout=60, what="the crashed worker's group deleted")
        assert time.monotonic() - killed >= metrics.STALE_INTERVALS * 1 - 2
        assert group(prometheus_stack, instances["a"]) is not None  # a's own is kept

        proc_a = workers["a"][0]
        proc_a.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc_a.wait, 60) == 0
        assert group(prometheus_stack, instances["a"]) is None
        log = (tmp_path / "worker-a.log").read_text()
        assert f"deleted stale metrics group {{'instance': '{instances['b']}'}}" in log
        assert f"deleted metrics group instance={instances['a']}" in log
    finally:
        for proc, _ in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def _async(value: bool) -> bool:
    return value


def test_stale_groups_are_judged_by_the_gateway_clock() -> None:
    def g(job: str, instance: str, pushed: float) -> dict[str, Any]:
        return {"labels": {"job": job, "instance": instance},
                "push_time_seconds": {"metrics": [{"value": str(pushed)}]}}

    found = [g("scanward_scanner", "live", 995.0), g("scanward_scanner", "crashed", 100.0),
             g("nightly_backup", "db-1", 0.0),  # another job's group is not ours
             {"labels": {"job": "scanward_scanner", "instance": "odd"}}]  # no push time
    assert [s["instance"] for s in metrics.stale_groups(found, 1000.0, 600.0)] == ["crashed"]


@pytest.mark.parametrize(("raw", "expected"), [("", 30.0), ("1", 1.0), ("0.5", 0.5)])
def test_metrics_interval(raw: str, expected: float) -> None:
    assert metrics.interval_from_env({metrics.INTERVAL_VARIABLE: raw}) == expected


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "7200", "nan"])
def test_metrics_interval_refuses_with_one_line(raw: str) -> None:
    with pytest.raises(ValueError, match=f"^{metrics.INTERVAL_VARIABLE}=.*expected") as e:
        metrics.interval_from_env({metrics.INTERVAL_VARIABLE: raw})
    assert "\n" not in str(e.value)


def test_webhook_host_label_keeps_no_path_or_credentials() -> None:
    assert metrics.webhook_host("https://u:pw@hooks.example.com/T0/B1/secret?x=1") == \
        "hooks.example.com"
    assert metrics.webhook_host("http://127.0.0.1:8080/hook") == "127.0.0.1:8080"


def hung_gateway() -> socket.socket:
    """A real listener that never answers: the kernel completes each connection into
    the backlog, nothing ever reads it (a Pushgateway that hangs, a dropped route)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    return listener


async def test_a_hung_pushgateway_neither_reruns_scanners_nor_floods_the_log(
        client: Client, settings: Settings, flawed_repo: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Every attempt pushes before its activity completes, without heartbeating: against
    a gateway that hangs, a 5 s push per attempt, queued behind each other, outlived the
    heartbeat timeout, and Temporal re-ran scanners that had succeeded. The outage is
    logged once, not once per attempt and interval."""
    base = {e["name"]: e for e in json.loads((settings.catalog_file or Path())
                                             .read_text())["scanners"]}
    suffix = uuid.uuid4().hex[:8]
    names = [f"hung-{n}-{suffix}" for n in range(4)]
    catalog = tmp_path / "hung.json"
    catalog.write_text(json.dumps({"scanners": [{**base["fake"], "name": n} for n in names]}))
    with hung_gateway() as listener:
        host, port = listener.getsockname()
        hung = dataclasses.replace(settings, pushgateway=f"{host}:{port}",
                                   catalog_file=catalog,
                                   env={**settings.env, metrics.INTERVAL_VARIABLE: "1"})
        tuning = FAST.model_copy(update={"heartbeat_timeout": timedelta(seconds=10)})
        caplog.set_level(logging.INFO, logger="scanward.metrics")
        async with scan_worker.running(hung, client, stop_timeout=60):
            started = time.monotonic()
            handle = await start(client, hung, scan_request(flawed_repo, *names,
                                                            tuning=tuning))
            summary = await asyncio.wait_for(handle.result(), 60)
            took = time.monotonic() - started
        assert summary.status is ScanStatus.COMPLETED
        succeeded = {n: metrics.PUSHED.get_sample_value(
            "scanward_scanner_attempts_total",
            {"scanner": n, "backend": "local", "outcome": "succeeded"}) for n in names}
        assert succeeded == dict.fromkeys(names, 1.0), "a scanner ran more than once"
        assert took < 20, f"the scan took {took:.1f}s"
        warnings = [r for r in caplog.records
                    if r.name == "scanward.metrics" and r.levelno >= logging.WARNING
                    and "pushing metrics" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_every_outcome_an_attempt_can_end_with_starts_at_zero() -> None:
    """A draining worker records ``worker_shutdown`` and its group is deleted one
    interval later: a series born at 1 would be invisible to increase()."""
    metrics.initialize([f"zero-{uuid.uuid4().hex[:8]}"], "local")
    exposed = metrics.PUSHED.collect()
    outcomes = {s.labels["outcome"] for m in exposed if m.name == "scanward_scanner_attempts"
                for s in m.samples if s.name.endswith("_total")}
    assert {"succeeded", "cancelled", "worker_shutdown", "oom_killed"} <= outcomes

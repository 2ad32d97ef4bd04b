"""The kubernetes job backend against a real control plane (kube-apiserver, Job
controller, scheduler, TTL and garbage collectors), with kwok playing the kubelet.

No container runs here, so a thread plays the scanner's part that kwok cannot: when a
scanner Job appears, it writes that attempt's SARIF and scanner.log (what the Job's
command tees there: tests/test_attempt_logs.py runs that command in real shells) into
the results directory, as the pod would on the results volume. Everything else is the
real API server's doing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import CancelledError

import worker as scan_worker
from activities.backends import ScannerFailed
from activities.backends.kubernetes import ClusterError, KubernetesBackend, KubeSettings
from scanward import client as api
from scanward.catalog import Catalog
from scanward.contract import (
    Checkout,
    FailureClass,
    Resources,
    RetrySignal,
    ScannerJobInput,
    ScannerStatus,
    ScanStatus,
)
from scanward.devserver import free_port
from scanward.job_spec import LABEL_RUN, LOG_FILE, job_name, run_label, tee_log_command
from scanward.load import stand_in as shared
from scanward.load.stand_in import JobView, PodPlay
from scanward.settings import Settings
from tests.conftest import FAST, eventually, scan_request
from tests.k8s_fixture import kwok_complete, kwok_fail

IMAGE = "registry.invalid/scanward/fake-scanner:1"


def kube_catalog(path: Path, **overrides: dict[str, Any]) -> Path:
    """Scanners whose pods kwok completes or fails as their annotations ask."""
    def entry(name: str, behaviour: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"name": name, "image": IMAGE, "command": ["scan", "{source}", "{sarif}"],
                "findings_exit_codes": [1], "bad_input_exit_codes": [2],
                "base": {"cpu_millis": 100, "memory_mib": 128}, **behaviour, **extra}

    scanners = {
        "k-ok": entry("k-ok", kwok_complete("1s")),
        "k-findings": entry("k-findings", kwok_fail(1)),  # exit 1 means "found something"
        "k-empty": entry("k-empty", kwok_fail(1)),  # ... but its SARIF is empty
        "k-badinput": entry("k-badinput", kwok_fail(2)),
        "k-crash": entry("k-crash", kwok_fail(3)),
        "k-oom": entry("k-oom", kwok_fail(137, reason="OOMKilled"), max_memory_mib=256,
                       memory_mib_per_gib=0),
        "k-slow": entry("k-slow", kwok_complete("600s")),
        "k-wait": entry("k-wait", kwok_complete("6s")),
    }
    for name, change in overrides.items():
        scanners[name] = {**scanners[name], **change}
    path.write_text(json.dumps({"scanners": list(scanners.values())}))
    return path


def pod_log(job_name: str) -> str:
    """What the stand-in's pods "print", in their scanner.log."""
    return f"log of {job_name}: scanning /src"


def fixed_play(view: JobView) -> PodPlay:
    """The test catalog's pods: each writes one finding (an empty SARIF for ``k-empty``)
    and its log; they end as their catalog entry's kwok annotations say."""
    # Absolute paths, as scanners in the pod write them (/src is the mount).
    doc = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "kube-fake"}},
           "results": [{"ruleId": "K8S001", "level": "error",
                        "message": {"text": f"finding from {view.name}"},
                        "locations": [{"physicalLocation": {
                            "artifactLocation": {"uri": "/src/app.py"},
                            "region": {"startLine": 3}}}]}]}]}
    return PodPlay(sarif="" if view.scanner == "k-empty" else json.dumps(doc),
                   log=f"{pod_log(view.name)}\n")


class PodStandIn(shared.PodStandIn):
    """The shared pod stand-in (scanward/load/stand_in.py) playing the test catalog:
    writes each new scanner Job's SARIF and log where its pod would (the results
    volume); :attr:`jobs` holds each Job as the API server first returned it."""

    def __init__(self, plane: Any, namespace: str, results_root: Path) -> None:
        super().__init__(plane, namespace, results_root, fixed_play, keep_jobs=True)


@pytest.fixture
def kube_settings(settings: Settings, control_plane: Any, kube_namespace: str,
                  tmp_path: Path) -> Settings:
    env = {**settings.env,
           "SCANWARD_KUBECONFIG": str(control_plane.kubeconfig),
           "SCANWARD_KUBE_NAMESPACE": kube_namespace,
           "SCANWARD_KUBE_RESYNC_SECONDS": "60"}
    return dataclasses.replace(
        settings, backend="kubernetes", env=env,
        catalog_file=kube_catalog(tmp_path / "kube-catalog.json"),
        task_queue=f"kube-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def stand_in(control_plane: Any, kube_namespace: str,
             kube_settings: Settings) -> Iterator[PodStandIn]:
    s = PodStandIn(control_plane, kube_namespace, kube_settings.results_root)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest_asyncio.fixture
async def kube_worker(client: Client, kube_settings: Settings,
                      stand_in: PodStandIn) -> AsyncIterator[None]:
    async with scan_worker.running(kube_settings, client):
        yield


def jobs_of(plane: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = plane.request(
        "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    return items


async def start_kube(client: Client, settings: Settings, *scanners: str, **fields: Any) -> Any:
    request = scan_request(Path(fields.pop("repo")), *scanners, **fields)
    return await api.start_scan(client, request, task_queue=settings.task_queue)


@pytest.mark.usefixtures("kube_worker")
async def test_scan_end_to_end_as_a_job(client: Client, kube_settings: Settings,
                                        control_plane: Any, kube_namespace: str,
                                        flawed_repo: Path, stand_in: PodStandIn) -> None:
    handle = await start_kube(client, kube_settings, "k-ok", "k-findings", repo=flawed_repo)
    summary = await handle.result()
    assert summary.status is ScanStatus.COMPLETED
    runs = {r.scanner: r for r in summary.scanners}
    assert runs["k-ok"].status is ScannerStatus.SUCCEEDED
    assert runs["k-findings"].status is ScannerStatus.SUCCEEDED  # exit 1 = findings
    assert runs["k-ok"].finding_count == 1

    # The Job as the API server holds it.
    name = job_name(handle.id, "k-ok", 1)
    job = stand_in.jobs[name]
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] == 3600
    assert spec["activeDeadlineSeconds"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget",
                                                                 "status": "True"}]}
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    # The scanner's command, its output teed into the attempt's scanner.log.
    assert container["command"] == tee_log_command(["scan", "/src", "/results/results.sarif"])
    assert container["resources"]["limits"]["memory"] == \
        f"{runs['k-ok'].resources.memory_mib}Mi"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["source"]["readOnly"] is True
    assert mounts["source"]["subPath"] == f"{handle.id}/src"
    assert mounts["results"]["subPath"] == f"{handle.id}/k-ok/attempt-1"

    # Findings from the pod's absolute /src paths are stored relative to the checkout.
    from scanward.store import Store

    store = Store.open(kube_settings.database_url)
    try:
        paths = {(f.scanner, f.path, f.start_line) for f in store.findings(handle.id)}
    finally:
        store.close()
    assert ("k-ok", "app.py", 3) in paths
    # The scan's cleanup kept each attempt's log, and only that.
    attempt = kube_settings.results_root / handle.id / "k-ok" / "attempt-1"
    assert [p.name for p in attempt.iterdir()] == [LOG_FILE]
    assert (attempt / LOG_FILE).read_text() == f"{pod_log(name)}\n"


@pytest.mark.usefixtures("kube_worker")
async def test_crash_until_dead_then_retry_after_catalog_fix(
        client: Client, kube_settings: Settings, control_plane: Any, kube_namespace: str,
        flawed_repo: Path, tmp_path: Path) -> None:
    handle = await start_kube(client, kube_settings, "k-crash", repo=flawed_repo)

    async def dead() -> Any:
        runs = (await api.progress(client, handle.id)).scanners
        return runs[0] if runs[0].status is ScannerStatus.DEAD else None

    run = await eventually(dead, timeout=60, what="k-crash dead")
    assert run.attempts == FAST.scanner_attempts
    assert run.failure_class is FailureClass.CRASHED and "exited 3" in (run.reason or "")
    # The last log lines, from the attempt's scanner.log on the results volume.
    assert f"last log lines:\n{pod_log(job_name(handle.id, 'k-crash', 2))}" in (run.reason or "")
    names = sorted(j["metadata"]["name"] for j in jobs_of(control_plane, kube_namespace))
    assert names == [job_name(handle.id, "k-crash", n) for n in (1, 2)]  # one Job an attempt
    # The operator fixes the catalog entry; the worker reads it again; retry succeeds.
    kube_catalog(kube_settings.catalog_file, **{"k-crash": kwok_complete("1s")})  # type: ignore[arg-type]
    await api.retry(client, handle.id, RetrySignal())
    summary = await handle.result()
    assert summary.status is ScanStatus.COMPLETED
    assert summary.scanners[0].attempts == 3


@pytest.mark.usefixtures("kube_worker")
async def test_empty_sarif_is_dead_with_the_pods_log(
        client: Client, kube_settings: Settings, flawed_repo: Path) -> None:
    handle = await start_kube(client, kube_settings, "k-empty", repo=flawed_repo)

    async def dead() -> Any:
        runs = (await api.progress(client, handle.id)).scanners
        return runs[0] if runs[0].status is ScannerStatus.DEAD else None

    run = await eventually(dead, timeout=60, what="k-empty dead")
    assert run.failure_class is FailureClass.BROKEN_SARIF
    assert "file is empty" in (run.reason or "")
    assert pod_log(job_name(handle.id, "k-empty", 1)) in (run.reason or "")
    await api.abandon(client, handle.id)
    assert (await handle.result()).status is ScanStatus.PARTIAL
    log = kube_settings.results_root / handle.id / "k-empty" / "attempt-1" / LOG_FILE
    assert log.read_text() == f"{pod_log(job_name(handle.id, 'k-empty', 1))}\n"


@pytest.mark.usefixtures("kube_worker")
async def test_oom_retries_with_doubled_memory_up_to_the_cap(
        client: Client, kube_settings: Settings, control_plane: Any, kube_namespace: str,
        flawed_repo: Path, stand_in: PodStandIn) -> None:
    tuning = FAST.model_copy(update={"scanner_attempts": 5})
    handle = await start_kube(client, kube_settings, "k-oom", repo=flawed_repo, tuning=tuning)

    async def dead() -> Any:
        runs = (await api.progress(client, handle.id)).scanners
        return runs[0] if runs[0].status is ScannerStatus.DEAD else None

    run = await eventually(dead, timeout=60, what="k-oom dead")
    assert run.failure_class is FailureClass.OOM_KILLED
    assert "memory cap (256 MiB)" in (run.reason or "")
    limits = [stand_in.jobs[job_name(handle.id, "k-oom", n)]["spec"]["template"]["spec"]
              ["containers"][0]["resources"]["limits"]["memory"] for n in (1, 2)]
    assert limits == ["128Mi", "256Mi"]  # the second Job asked for twice the memory
    await api.abandon(client, handle.id)
    assert (await handle.result()).status is ScanStatus.PARTIAL


@pytest.mark.usefixtures("kube_worker")
async def test_deadline_exceeded_and_bad_input_are_dead_at_once(
        client: Client, kube_settings: Settings, flawed_repo: Path) -> None:
    # scanner_timeout 10 s -> the Job's activeDeadlineSeconds is 5 s.
    tuning = FAST.model_copy(update={"scanner_timeout": timedelta(seconds=10)})
    handle = await start_kube(client, kube_settings, "k-slow", "k-badinput", repo=flawed_repo,
                              tuning=tuning)

    async def both_dead() -> Any:
        runs = {r.scanner: r for r in (await api.progress(client, handle.id)).scanners}
        return runs if all(r.status is ScannerStatus.DEAD for r in runs.values()) else None

    runs = await eventually(both_dead, timeout=60, what="both dead")
    assert runs["k-slow"].failure_class is FailureClass.DEADLINE_EXCEEDED
    assert runs["k-slow"].attempts == 1
    assert runs["k-badinput"].failure_class is FailureClass.BAD_INPUT
    assert runs["k-badinput"].attempts == 1
    assert "exit code 2" in (runs["k-badinput"].reason or "")
    await api.abandon(client, handle.id)
    await handle.result()


@pytest.mark.usefixtures("stand_in")
async def test_a_deploy_leaves_the_job_running_for_the_next_worker(
        client: Client, kube_settings: Settings, control_plane: Any, kube_namespace: str,
        flawed_repo: Path, tmp_path: Path) -> None:
    """A rolling update: the worker waiting for a Job is stopped (SIGTERM's path, with a
    drain shorter than the Job); the Job runs on, and the activity retried on the next
    worker adopts the same Job (same uid) instead of starting the scanner again."""
    settings = dataclasses.replace(
        kube_settings, graceful_shutdown_seconds=0.5,
        catalog_file=kube_catalog(tmp_path / "deploy-catalog.json",
                                  **{"k-wait": kwok_complete("8s")}))
    async with scan_worker.running(settings, client, stop_timeout=30):
        handle = await start_kube(client, settings, "k-wait", repo=flawed_repo)
        await eventually(lambda: _async(bool(_pods(control_plane, kube_namespace))),
                         what="the Job's pod")
        (job,) = jobs_of(control_plane, kube_namespace)
        uid = job["metadata"]["uid"]
    # The worker is gone; its Job is not.
    assert [j["metadata"]["uid"] for j in jobs_of(control_plane, kube_namespace)] == [uid]

    async with scan_worker.running(settings, client, stop_timeout=30):
        summary = await asyncio.wait_for(handle.result(), 60)
    (run,) = summary.scanners
    assert summary.status is ScanStatus.COMPLETED
    assert (run.status, run.attempts) == (ScannerStatus.SUCCEEDED, 1)  # not a new attempt
    # One Job for the attempt, the same one (ttl keeps it after completion).
    assert [j["metadata"]["uid"] for j in jobs_of(control_plane, kube_namespace)] == [uid]
    # The activity was retried once, after the first worker's WorkerShutdown failure.
    history = await handle.fetch_history()
    scheduled = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
                 for e in history.events
                 if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED}
    (started,) = [e.activity_task_started_event_attributes for e in history.events
                  if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                  and scheduled[e.activity_task_started_event_attributes.scheduled_event_id]
                  == "run_scanner"]
    assert started.attempt == 2
    assert started.last_failure.application_failure_info.type == "WorkerShutdown"


@pytest.mark.usefixtures("kube_worker")
async def test_cancel_deletes_the_jobs(client: Client, kube_settings: Settings,
                                       control_plane: Any, kube_namespace: str,
                                       flawed_repo: Path) -> None:
    # Production's heartbeat timeout: the cancel must not wait for the next heartbeat.
    tuning = FAST.model_copy(update={"heartbeat_timeout": timedelta(seconds=30)})
    handle = await start_kube(client, kube_settings, "k-slow", repo=flawed_repo,
                              tuning=tuning)
    await eventually(lambda: _async(bool(jobs_of(control_plane, kube_namespace))),
                     what="the Job")
    await eventually(lambda: _async(bool(_pods(control_plane, kube_namespace))),
                     what="its pod")
    await asyncio.sleep(1)  # past the activity's first (immediate) heartbeat
    cancelled = time.monotonic()
    await api.cancel(client, handle.id)
    await eventually(lambda: _async(not jobs_of(control_plane, kube_namespace)),
                     timeout=30, what="the Job to be deleted")
    deleted = time.monotonic() - cancelled
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    closed = time.monotonic() - cancelled
    print(f"cancel -> Job deleted {deleted:.2f}s, -> workflow closed {closed:.2f}s")
    assert deleted <= 5.0 and closed <= 5.0, (deleted, closed)
    assert isinstance(failure.value.cause, CancelledError)
    assert jobs_of(control_plane, kube_namespace) == []
    (run,) = (await api.progress(client, handle.id)).scanners
    assert (run.status, run.attempts) == (ScannerStatus.CANCELLED, 1)  # not retried
    await eventually(lambda: _async(not _pods(control_plane, kube_namespace)), timeout=60,
                     what="the pod to be garbage-collected")


async def test_create_twice_yields_one_job(kube_settings: Settings, control_plane: Any,
                                           kube_namespace: str, stand_in: PodStandIn) -> None:
    """An activity retried after a crash creates the same Job name: it adopts it."""
    backend = KubernetesBackend(KubeSettings.from_env(kube_settings.env),
                                kube_settings.results_root)
    await asyncio.to_thread(backend.start)
    try:
        spec = Catalog.load(kube_settings.catalog_file).get("k-ok")
        job = ScannerJobInput(
            scan_id=f"scan-default-{uuid.uuid4().hex[:20]}", scanner="k-ok", attempt=1,
            checkout=Checkout(scan_id="x", source_subpath="x/src", commit="0" * 40,
                              size_bytes=1, file_count=1),
            resources=Resources(cpu_millis=100, memory_mib=128))
        job = job.model_copy(update={"checkout": job.checkout.model_copy(
            update={"scan_id": job.scan_id, "source_subpath": f"{job.scan_id}/src"})})
        results = await asyncio.gather(
            backend.run(job, spec, lambda *_: None, 1.0),
            backend.run(job, spec, lambda *_: None, 1.0))
        assert results[0].sarif_subpath == results[1].sarif_subpath
        assert [j["metadata"]["name"] for j in jobs_of(control_plane, kube_namespace)] == [
            job_name(job.scan_id, "k-ok", 1)]
    finally:
        backend.close()


async def test_logs_are_read_from_the_volume_not_the_api(
        kube_settings: Settings, stand_in: PodStandIn) -> None:
    """A successful attempt costs one request (the create) and keeps its log; a crashed
    one adds only the pods' list (which tells OOM from crash), not a pod log read."""
    backend = KubernetesBackend(KubeSettings.from_env(kube_settings.env),
                                kube_settings.results_root)
    await asyncio.to_thread(backend.start)
    catalog = Catalog.load(kube_settings.catalog_file)
    try:
        for scanner, requests in (("k-ok", 1), ("k-crash", 2)):
            scan_id = f"scan-default-{uuid.uuid4().hex[:20]}"
            job = ScannerJobInput(
                scan_id=scan_id, scanner=scanner, attempt=1,
                checkout=Checkout(scan_id=scan_id, source_subpath=f"{scan_id}/src",
                                  commit="0" * 40, size_bytes=1, file_count=1),
                resources=Resources(cpu_millis=100, memory_mib=128))
            before = backend.requests
            try:
                await backend.run(job, catalog.get(scanner), lambda *_: None, 1.0)
                reason = ""
            except ScannerFailed as e:
                reason = e.message
            assert backend.requests - before == requests, scanner
            log = kube_settings.results_root / scan_id / scanner / "attempt-1" / LOG_FILE
            assert log.read_text() == f"{pod_log(job_name(scan_id, scanner, 1))}\n"
            if scanner == "k-crash":
                assert f"last log lines:\n{pod_log(job_name(scan_id, scanner, 1))}" in reason
    finally:
        backend.close()


def _pods(plane: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = plane.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
    return items


async def _async(value: bool) -> bool:
    return value


@pytest.mark.usefixtures("kube_worker")
async def test_a_scan_started_again_runs_its_own_job(
        client: Client, kube_settings: Settings, control_plane: Any, kube_namespace: str,
        flawed_repo: Path) -> None:
    """A scan id started again after its run ended without cleaning up (terminated
    here; a cancel whose delete failed leaves the same) is a new run, and its attempt 1
    must not adopt the earlier run's Job of the same name: it did, and the scanner went
    dead when that Job's results had been removed with the earlier run."""
    request = scan_request(flawed_repo, "k-slow")
    first = await api.start_scan(client, request, task_queue=kube_settings.task_queue)
    await eventually(lambda: _async(bool(jobs_of(control_plane, kube_namespace))),
                     what="the first run's Job")
    (old,) = jobs_of(control_plane, kube_namespace)
    first_run = (await first.describe()).run_id
    await first.terminate(reason="test: the run ends, its Job stays")
    again = await api.start_scan(client, request, task_queue=kube_settings.task_queue)
    assert again.id == first.id
    run_id = (await again.describe()).run_id
    assert run_id and run_id != first_run  # a new run, same id

    async def replaced() -> bool:
        jobs = jobs_of(control_plane, kube_namespace)
        return bool(jobs) and jobs[0]["metadata"]["uid"] != old["metadata"]["uid"]

    await eventually(replaced, timeout=60, what="the new run's own Job")
    (new,) = jobs_of(control_plane, kube_namespace)
    assert new["metadata"]["name"] == old["metadata"]["name"]
    assert new["metadata"]["labels"][LABEL_RUN] == run_label(run_id)
    # The terminated run's activity ends too (its Job was replaced): whatever it cleans
    # up, the new run's Job of the same name runs on (deletes name the uid they mean).
    await asyncio.sleep(5)
    assert [j["metadata"]["uid"] for j in jobs_of(control_plane, kube_namespace)] == [
        new["metadata"]["uid"]]
    (run,) = (await api.progress(client, again.id)).scanners
    assert (run.status, run.attempts) == (ScannerStatus.RUNNING, 1)
    await api.cancel(client, again.id)
    await eventually(lambda: _async(not jobs_of(control_plane, kube_namespace)),
                     timeout=30, what="the Job to be deleted on cancel")


async def test_stop_does_not_report_a_delete_that_did_not_happen(
        kube_settings: Settings, control_plane: Any, tmp_path: Path) -> None:
    """stop_scanner said "deleted" whatever the API answered: with the API server
    unreachable (or the delete forbidden) the Job ran on, unreported, to its deadline."""
    job = ScannerJobInput(
        scan_id=f"scan-default-{uuid.uuid4().hex[:20]}", scanner="k-ok", attempt=1,
        checkout=Checkout(scan_id="x", source_subpath="x/src", commit="0" * 40,
                          size_bytes=1, file_count=1),
        resources=Resources(cpu_millis=100, memory_mib=128))
    backend = KubernetesBackend(KubeSettings.from_env(kube_settings.env),
                                kube_settings.results_root)
    try:  # no Job of that name: gone already, and said so
        assert (await backend.stop(job)).endswith(" already gone")
    finally:
        backend.close()
    # The same cluster's kubeconfig, its address one where nothing listens.
    config = json.loads(control_plane.kubeconfig.read_text())  # the plane writes JSON
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    dead = tmp_path / "unreachable.kubeconfig"
    dead.write_text(json.dumps(config))
    unreachable = KubernetesBackend(
        KubeSettings.from_env({**kube_settings.env, "SCANWARD_KUBECONFIG": str(dead)}),
        kube_settings.results_root)
    try:
        with pytest.raises(ClusterError, match="cannot reach the Kubernetes API"):
            await unreachable.stop(job)
    finally:
        unreachable.close()

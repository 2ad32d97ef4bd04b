"""Kubernetes failure modes as an operator meets them, on the real control plane: a pod
that cannot be scheduled or whose claim is missing, a quota or LimitRange that refuses
the pod, an image that cannot be pulled, the Job or its pod deleted by someone else.

Each test measures what the user sees (``api.describe(...).waiting``, which ``scanward
status`` prints; the dead reason; how long until it ends) and prints the figures. What kwok
cannot do the test does as the kubelet would, and says so where it does: set an image
pull back-off on the pod, and end a deleted pod as Failed (exit 143). kube-controller-
manager here runs no resourcequota controller, so the test writes a quota's status
(``hard`` and ``used``) as that controller would; admission is the API server's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import worker as scan_worker
from scanward import client as api
from scanward.contract import FailureClass, ScannerRun, ScannerStatus
from scanward.settings import Settings
from tests.conftest import FAST, eventually
from tests.helpers.processes import cli_env, scanward, spawn
from tests.test_kube_backend import (  # noqa: F401 - fixtures
    _pods,
    jobs_of,
    kube_catalog,
    kube_settings,
    stand_in,
    start_kube,
)

# scanner_timeout 40 s: the Job's activeDeadlineSeconds is 20 s.
TUNING = FAST.model_copy(update={"scanner_timeout": timedelta(seconds=40)})
DEADLINE = 20.0
MERGE = "application/merge-patch+json"


@pytest.fixture
def fast_settings(kube_settings: Settings) -> Settings:  # noqa: F811
    """The worker reads a pod-less Job's events after 3 s (30 s in production) and gives
    up on a pod stuck being deleted after 5 s (120 s)."""
    return dataclasses.replace(kube_settings, env={
        **kube_settings.env, "SCANWARD_KUBE_NO_POD_SECONDS": "3",
        "SCANWARD_KUBE_DELETED_POD_SECONDS": "5"})


async def run_of(client: Client, scan_id: str) -> ScannerRun:
    (run,) = (await api.progress(client, scan_id)).scanners
    return run


async def dead(client: Client, scan_id: str, timeout: float) -> tuple[ScannerRun, float]:
    """The scanner once dead, and how long that took from now."""
    started = time.monotonic()

    async def is_dead() -> ScannerRun | None:
        run = await run_of(client, scan_id)
        return run if run.status is ScannerStatus.DEAD else None

    run = await eventually(is_dead, timeout=timeout, what="the scanner dead")
    return run, time.monotonic() - started


async def waiting_says(client: Client, scan_id: str, text: str,
                       timeout: float = 15.0) -> tuple[str, float]:
    """The first waiting line (``scanward status``) naming ``text``, and when."""
    started = time.monotonic()

    async def said() -> str | None:
        return next((w for w in (await api.describe(client, scan_id)).waiting if text in w),
                    None)

    line = await eventually(said, timeout=timeout, what=f"waiting to say {text!r}")
    return line, time.monotonic() - started


async def scan(client: Client, settings: Settings, repo: Path) -> Any:
    return await start_kube(client, settings, "k-slow", repo=repo, tuning=TUNING)


# ------------------------------------------------------------------ never scheduled


async def test_scan_wait_says_what_a_scanner_waits_for(
        client: Client, fast_settings: Settings, flawed_repo: Path, tmp_path: Path,
        stand_in: Any, temporal_env: WorkflowEnvironment) -> None:  # noqa: F811
    """``scanward scan --wait``, run as an operator would: a scanner whose pod cannot be
    scheduled is announced on stderr (once) while the scan waits. Before: the live table
    said "running" and nothing else until the deadline (59 min by default)."""
    settings = dataclasses.replace(fast_settings, catalog_file=kube_catalog(
        tmp_path / "big.json", **{"k-slow": {"base": {"cpu_millis": 64000,
                                                      "memory_mib": 128}}}))
    async with scan_worker.running(settings, client):
        proc = await spawn("scan", flawed_repo.as_uri(), "--ref", "main", "-s", "k-slow",
                           "--wait", env=cli_env(temporal_env, settings))
        try:
            assert proc.stderr is not None
            started, lines = time.monotonic(), list[str]()
            while not any("is waiting" in line for line in lines):
                line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
                assert line, f"scan --wait ended: {''.join(lines)}"
                lines.append(line)
            took = time.monotonic() - started
        finally:
            proc.kill()
            await proc.wait()
    note = next(line for line in lines if "is waiting" in line)
    print(f"scan --wait: {took:.1f}s to {note.strip()!r}")
    assert note.startswith("scanward: k-slow attempt 1 is waiting: not scheduled: 0/1 nodes "
                           "are available: 1 Insufficient cpu."), note
    assert took < 20


@pytest.mark.parametrize("case", ["cpu", "claim"])
async def test_a_pod_never_scheduled_says_why_while_it_waits_and_when_dead(
        case: str, client: Client, fast_settings: Settings, control_plane: Any,
        kube_namespace: str, flawed_repo: Path, tmp_path: Path, stand_in: Any,  # noqa: F811
        temporal_env: WorkflowEnvironment, caplog: pytest.LogCaptureFixture) -> None:
    """Before: nothing said while it waited, then dead "Job was active longer than
    specified deadline" (20 s here, 59 min by default) with no word of scheduling."""
    settings = fast_settings
    if case == "cpu":  # more CPU than the node has (32): an OOM-style bump past the node
        settings = dataclasses.replace(settings, catalog_file=kube_catalog(
            tmp_path / "big.json", **{"k-slow": {"base": {"cpu_millis": 64000,
                                                          "memory_mib": 128}}}))
        why = "0/1 nodes are available: 1 Insufficient cpu."
    else:  # the results claim is missing
        control_plane.request("DELETE", f"/api/v1/namespaces/{kube_namespace}/"
                                        "persistentvolumeclaims/scanward-results")
        why = '0/1 nodes are available: persistentvolumeclaim "scanward-results" not found'
    caplog.set_level(logging.INFO, logger="scanward.kube.watch")
    async with scan_worker.running(settings, client):
        handle = await scan(client, settings, flawed_repo)
        line, said_after = await waiting_says(client, handle.id, why)
        # The worker's log says it once (not at every heartbeat).
        logged = [r.getMessage() for r in caplog.records if " waits: " in r.getMessage()]
        assert len(logged) == 1 and f"waits: not scheduled: {why}" in logged[0], logged
        assert line.startswith("k-slow attempt 1 waiting ") and "not scheduled: " in line
        if case == "cpu":  # what `scanward status` prints, run as the operator would
            code, out, err = await scanward("status", handle.id,
                                            env=cli_env(temporal_env, settings))
            assert code == 0, err
            assert "waiting: k-slow attempt 1 waiting " in out and why in out, out
        run, took = await dead(client, handle.id, timeout=DEADLINE + 20)
        print(f"{case}: waiting said after {said_after:.1f}s; dead after "
              f"{said_after + took:.1f}s: {run.reason!r}")
        assert run.failure_class is FailureClass.DEADLINE_EXCEEDED and run.attempts == 1
        assert f"never scheduled: {why}" in (run.reason or "")
        assert (await api.describe(client, handle.id)).waiting == ()
        await handle.terminate()


async def test_unschedulable_patience_ends_the_attempt_when_set(
        client: Client, fast_settings: Settings, flawed_repo: Path, tmp_path: Path,
        stand_in: Any) -> None:  # noqa: F811
    """SCANWARD_KUBE_UNSCHEDULABLE_SECONDS (off by default: an autoscaler may add the
    node) ends an attempt whose pod stays unschedulable that long: dead, cluster_error,
    with the scheduler's message; not left to its deadline."""
    settings = dataclasses.replace(
        fast_settings, env={**fast_settings.env, "SCANWARD_KUBE_UNSCHEDULABLE_SECONDS": "4"},
        catalog_file=kube_catalog(tmp_path / "big.json", **{
            "k-slow": {"base": {"cpu_millis": 64000, "memory_mib": 128}}}))
    async with scan_worker.running(settings, client):
        handle = await scan(client, settings, flawed_repo)
        run, took = await dead(client, handle.id, timeout=DEADLINE)
        print(f"unschedulable, 4 s patience: dead after {took:.1f}s: {run.reason!r}")
        assert run.failure_class is FailureClass.CLUSTER and run.attempts == 1
        assert "never scheduled in " in (run.reason or "")
        assert "(SCANWARD_KUBE_UNSCHEDULABLE_SECONDS=4): 0/1 nodes are available: 1 " \
               "Insufficient cpu." in (run.reason or "")
        assert took < DEADLINE - 5
        await handle.terminate()


# ------------------------------------------------------- quota and LimitRange refusals


def quota(plane: Any, namespace: str, hard: dict[str, str], used: dict[str, str]) -> None:
    """A ResourceQuota, with the status its controller would write (none runs here)."""
    plane.request("POST", f"/api/v1/namespaces/{namespace}/resourcequotas", {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "scans"},
        "spec": {"hard": hard}})
    plane.request("PATCH", f"/api/v1/namespaces/{namespace}/resourcequotas/scans/status",
                  {"status": {"hard": hard, "used": used}}, content_type=MERGE)


@pytest.mark.parametrize("case", ["quota", "limitrange"])
async def test_a_pod_refused_for_good_is_dead_at_once(
        case: str, client: Client, fast_settings: Settings, control_plane: Any,
        kube_namespace: str, flawed_repo: Path, stand_in: Any) -> None:  # noqa: F811
    """A quota whose hard limit is below the pod's own request, or a LimitRange's
    maximum: no pod is ever created. Before: dead at the deadline (20 s here, 59 min by
    default), "Job was active longer than specified deadline", nothing said before."""
    ns = kube_namespace
    if case == "quota":
        quota(control_plane, ns, {"limits.memory": "64Mi"}, {"limits.memory": "0"})
        why = ("exceeded quota: scans, requested: limits.memory=192Mi, used: "
               "limits.memory=0, limited: limits.memory=64Mi")
    else:
        control_plane.request("POST", f"/api/v1/namespaces/{ns}/limitranges", {
            "apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "small"},
            "spec": {"limits": [{"type": "Container", "max": {"memory": "64Mi"}}]}})
        why = "maximum memory usage per Container is 64Mi, but limit is 192Mi"
    async with scan_worker.running(fast_settings, client):
        handle = await scan(client, fast_settings, flawed_repo)
        run, took = await dead(client, handle.id, timeout=DEADLINE)
        print(f"{case}: dead after {took:.1f}s: {run.reason!r}")
        assert run.failure_class is FailureClass.CLUSTER and run.attempts == 1
        assert f"cannot create its pod: pod forbidden: {why}" in (run.reason or "")
        assert took < DEADLINE - 5  # the events are read at 3 s, not left to the deadline
        assert jobs_of(control_plane, ns) == []  # given up: its Job deleted
        await handle.terminate()


async def test_a_full_quota_is_said_while_waiting_and_when_dead(
        client: Client, fast_settings: Settings, control_plane: Any, kube_namespace: str,
        flawed_repo: Path, stand_in: Any) -> None:  # noqa: F811
    """A quota that other pods fill frees up when they end: the attempt waits (until its
    deadline), saying why, and its dead reason names the quota."""
    quota(control_plane, kube_namespace, {"pods": "1"}, {"pods": "1"})
    why = "exceeded quota: scans, requested: pods=1, used: pods=1, limited: pods=1"
    async with scan_worker.running(fast_settings, client):
        handle = await scan(client, fast_settings, flawed_repo)
        line, said_after = await waiting_says(client, handle.id, why)
        assert f"no pod yet: pod forbidden: {why}" in line
        run, took = await dead(client, handle.id, timeout=DEADLINE + 20)
        print(f"full quota: waiting said after {said_after:.1f}s; dead after "
              f"{said_after + took:.1f}s: {run.reason!r}")
        assert run.failure_class is FailureClass.DEADLINE_EXCEEDED
        assert f"no pod was created: pod forbidden: {why}" in (run.reason or "")
        await handle.terminate()


# ------------------------------------------------------------------ image pull


async def test_image_pull_back_off_is_dead_at_once(
        client: Client, fast_settings: Settings, control_plane: Any, kube_namespace: str,
        flawed_repo: Path, stand_in: Any) -> None:  # noqa: F811
    """The test sets ImagePullBackOff on the pod, as the kubelet would (kwok pulls
    nothing). Before and after: dead at once as bad_image, not retried."""
    ns = kube_namespace
    async with scan_worker.running(fast_settings, client):
        handle = await scan(client, fast_settings, flawed_repo)
        pods = await eventually(lambda: _running_pods(control_plane, ns), what="its pod")
        patched = time.monotonic()
        control_plane.request(
            "PATCH", f"/api/v1/namespaces/{ns}/pods/{pods[0]['metadata']['name']}/status",
            {"status": {"containerStatuses": [{
                "name": "scanner", "image": "registry.invalid/nope:1", "imageID": "",
                "ready": False, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                                      "message": "Back-off pulling image"}}}]}},
            content_type="application/strategic-merge-patch+json")
        run, _ = await dead(client, handle.id, timeout=15)
        took = time.monotonic() - patched
        print(f"image pull back-off: dead {took:.1f}s after it: {run.reason!r}")
        assert run.failure_class is FailureClass.BAD_IMAGE and run.attempts == 1
        assert "ImagePullBackOff: registry.invalid/nope:1" in (run.reason or "")
        assert took < 5
        await handle.terminate()


# --------------------------------------------------------- deleted by someone else


async def _running_pods(plane: Any, namespace: str) -> list[dict[str, Any]]:
    return [p for p in _pods(plane, namespace) if p["status"].get("phase") == "Running"]


async def retried(client: Client, scan_id: str, timeout: float) -> tuple[ScannerRun, float]:
    """The scanner once its second attempt runs, and how long that took from now."""
    started = time.monotonic()

    async def second() -> ScannerRun | None:
        run = await run_of(client, scan_id)
        return run if run.attempts == 2 else None

    run = await eventually(second, timeout=timeout, what="a second attempt")
    return run, time.monotonic() - started


async def test_job_deleted_mid_run_is_retried_at_once(
        client: Client, fast_settings: Settings, control_plane: Any, kube_namespace: str,
        flawed_repo: Path, stand_in: Any) -> None:  # noqa: F811
    ns = kube_namespace
    async with scan_worker.running(fast_settings, client):
        handle = await scan(client, fast_settings, flawed_repo)
        await eventually(lambda: _running_pods(control_plane, ns), what="its pod")
        (job,) = jobs_of(control_plane, ns)
        control_plane.request("DELETE", f"/apis/batch/v1/namespaces/{ns}/jobs/"
                                        f"{job['metadata']['name']}?propagationPolicy=Background")
        run, took = await retried(client, handle.id, timeout=15)
        print(f"Job deleted: attempt 2 after {took:.1f}s; attempt 1: {run.reason!r}")
        assert run.failure_class is FailureClass.CRASHED
        assert "the Job was deleted before it finished" in (run.reason or "")
        assert took < 5
        await handle.terminate()


@pytest.mark.parametrize("kubelet", ["ends it", "lost"])
async def test_pod_deleted_mid_run_is_retried(
        kubelet: str, client: Client, fast_settings: Settings, control_plane: Any,
        kube_namespace: str, flawed_repo: Path, stand_in: Any) -> None:  # noqa: F811
    """``kubectl delete pod`` of a running scanner. A live node's kubelet stops it: the
    test ends the pod Failed (exit 143) as that kubelet would. A lost node's does not:
    kwok does nothing either, and the pod stays Terminating (its Job holds it with a
    finalizer). Before: the first was retried as "exited 143"; the second hung to the
    Job's deadline and was dead, not retried ("deadline exceeded", 59 min by default)."""
    ns = kube_namespace
    async with scan_worker.running(fast_settings, client):
        handle = await scan(client, fast_settings, flawed_repo)
        (pod,) = await eventually(lambda: _running_pods(control_plane, ns), what="its pod")
        name = pod["metadata"]["name"]
        control_plane.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}")
        if kubelet == "ends it":
            control_plane.request(
                "PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status",
                {"status": {"phase": "Failed", "containerStatuses": [{
                    "name": "scanner", "image": pod["spec"]["containers"][0]["image"],
                    "imageID": "", "ready": False, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 143, "reason": "Error"}}}]}},
                content_type="application/strategic-merge-patch+json")
        else:
            line, said_after = await waiting_says(client, handle.id, "is being deleted")
            print(f"pod deleted, node lost: waiting said after {said_after:.1f}s: {line}")
        run, took = await retried(client, handle.id, timeout=DEADLINE)
        print(f"pod deleted, kubelet {kubelet}: attempt 2 after {took:.1f}s; attempt 1: "
              f"{run.reason!r}")
        assert run.failure_class is FailureClass.CRASHED
        assert f"pod {name}" in (run.reason or "") and "deleted" in (run.reason or "")
        assert took < (5 if kubelet == "ends it" else 12)
        await handle.terminate()

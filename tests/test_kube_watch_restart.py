"""The shared watch survives an API server restart: scans waiting on their Jobs still
complete. This module has its own control plane: after a restart the controllers
reconnect with client-go's backoff, which would slow every later test of a shared one;
so each test here restarts a plane of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from activities.backends.kubernetes import KubernetesBackend, KubeSettings
from scanward.contract import ScanStatus
from scanward.settings import Settings
from tests.conftest import eventually
from tests.k8s_fixture import running_plane, testenv
from tests.test_kube_backend import (  # noqa: F401 - fixtures
    _async,
    _pods,
    kube_settings,
    kube_worker,
    stand_in,
    start_kube,
)


@pytest.fixture
def control_plane() -> Iterator[testenv.ControlPlane]:
    yield from running_plane()


@pytest.mark.usefixtures("kube_worker")
async def test_scans_complete_across_an_apiserver_restart(
        client: Client, kube_settings: Settings, control_plane: Any,  # noqa: F811
        kube_namespace: str, flawed_repo: Path) -> None:
    handles = [await start_kube(client, kube_settings, "k-wait", repo=flawed_repo)
               for _ in range(4)]
    await eventually(lambda: _async(len(_pods(control_plane, kube_namespace)) == 4),
                     timeout=60, what="4 pods")
    await asyncio.to_thread(control_plane.restart_apiserver, 3.0)
    for h in handles:
        summary = await asyncio.wait_for(h.result(), 120)
        assert summary.status is ScanStatus.COMPLETED


async def test_tracker_reconnects_and_resolves_after_restart(
        kube_settings: Settings, control_plane: Any, kube_namespace: str) -> None:  # noqa: F811
    backend = KubernetesBackend(KubeSettings.from_env(kube_settings.env),
                                kube_settings.results_root)
    await asyncio.to_thread(backend.start)
    tracker = backend.tracker
    try:
        watches_before = tracker.jobs.watches
        names = [f"restart-{i}" for i in range(3)]
        for name in names:
            control_plane.request(
                "POST", f"/apis/batch/v1/namespaces/{kube_namespace}/jobs",
                _job(name, kube_namespace))
        waits = [asyncio.ensure_future(tracker.wait(n)) for n in names]
        await asyncio.to_thread(control_plane.restart_apiserver, 2.0)
        outcomes = await asyncio.wait_for(asyncio.gather(*waits), 120)
        assert [o.succeeded for o in outcomes] == [True] * 3
        assert tracker.jobs.watches > watches_before  # it reconnected
        assert tracker.waiting == 0
    finally:
        backend.close()


def _job(name: str, namespace: str) -> dict[str, Any]:
    """A Job with scanward's label whose pod kwok completes after 6 s."""
    meta = testenv.job_complete_metadata(delay="6s")
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "scanward"}},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": meta["annotations"]},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "scanner", "image": "registry.invalid/x:1"}]}}},
    }

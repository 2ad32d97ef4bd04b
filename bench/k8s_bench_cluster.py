"""The bench's control plane and what it adds: a big kwok node, and per worker a
namespace with deploy/rbac.yaml's grants and a kubeconfig as its ServiceAccount."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

import k8s_bench_repo  # noqa: F401 - puts the repository on sys.path

from tests.k8s_fixture import (
    WORKER_ACCOUNT,
    apply_rbac,
    bound_claims,
    rbac_objects,
    service_account_token,
    testenv,
    token_kubeconfig,
    wait_for_grants,
)


class BenchPlane(testenv.ControlPlane):
    """testenv's ControlPlane; optionally with a higher client QPS for the
    controller-manager (its default 20 QPS paces the Job controller, i.e. how fast 2,000
    Jobs get their pods; it has nothing to do with the worker's own numbers)."""

    def __init__(self, *, kcm_qps: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kcm_qps = kcm_qps

    def _spawn(self, name: str, argv: list[str], *args: Any, **kwargs: Any) -> Any:
        if name == "kube-controller-manager" and self.kcm_qps > 0:
            argv = [*argv, f"--kube-api-qps={self.kcm_qps}",
                    f"--kube-api-burst={2 * self.kcm_qps}", "--concurrent-job-syncs=20"]
        return super()._spawn(name, argv, *args, **kwargs)


def ssl_context(plane: testenv.ControlPlane) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(plane.ca_file))


def create_bench_node(plane: testenv.ControlPlane, name: str) -> None:
    """A second kwok node with room for thousands of pods (testenv's has 110 pods,
    32 CPUs, 256 GiB)."""
    room = {"cpu": "2000", "memory": "16Ti", "pods": "10000"}
    plane.request("POST", "/api/v1/nodes", {
        **testenv.node_manifest(name), "status": {"allocatable": room, "capacity": dict(room)}})
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if testenv.node_schedulable(plane.request("GET", f"/api/v1/nodes/{name}")):
            return
        time.sleep(0.5)
    raise RuntimeError(f"node {name} not Ready and untainted after 90 s")


def worker_namespace(plane: testenv.ControlPlane, name: str, workdir: Path) -> Path:
    """A namespace with bound claims and the worker's RBAC; returns a kubeconfig that
    authenticates as the namespace's scanward-worker ServiceAccount."""
    plane.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    bound_claims(plane, name)
    apply_rbac(plane, name, rbac_objects(name))
    token = service_account_token(plane, name, WORKER_ACCOUNT, seconds=6 * 3600)
    # The RBAC authorizer learns of the new Role through informers: wait for it.
    wait_for_grants(plane, token, name, [("batch", "jobs", "create"), ("batch", "jobs", "watch"),
                                         ("", "pods", "list"), ("", "pods", "watch")],
                    timeout=30, poll=0.2)
    return token_kubeconfig(workdir / f"kubeconfig-{name}", plane.server, token,
                            plane.ca_file)


def terminated_watchers(plane: testenv.ControlPlane) -> dict[str, float]:
    """``apiserver_terminated_watchers_total`` by resource: watchers the apiserver's watch
    cache closed because they did not read their events fast enough."""
    text = plane.request("GET", "/metrics", timeout=60)
    out: dict[str, float] = {}
    for line in str(text).splitlines():
        if line.startswith("apiserver_terminated_watchers_total{"):
            labels, _, value = line.rpartition(" ")
            resource = labels.split('resource="', 1)[1].split('"', 1)[0]
            out[resource] = out.get(resource, 0.0) + float(value)
    return out


def service_account_user(namespace: str) -> str:
    return f"system:serviceaccount:{namespace}:{WORKER_ACCOUNT}"

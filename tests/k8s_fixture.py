"""A real Kubernetes control plane for the tests (tools/k8s-testenv): etcd,
kube-apiserver, kube-controller-manager and kube-scheduler built from upstream, with
kwok playing the kubelet. Containers never run: kwok moves pods through their lifecycle
as their annotations ask, and the tests write each scanner's SARIF where its pod would.

The binaries are built by ``tools/k8s-testenv/build.sh`` (``.ci/run`` does it); when
they are missing the fixture fails and says so, it never skips.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

TESTENV_DIR = Path(__file__).resolve().parent.parent / "tools" / "k8s-testenv"
sys.path.insert(0, str(TESTENV_DIR))

# Re-exported: test modules take testenv from here, after sys.path is set above.
import testenv as testenv  # noqa: E402

CLAIMS = ("scanward-workspace", "scanward-results")
RBAC_FILE = TESTENV_DIR.parent.parent / "deploy" / "rbac.yaml"
WORKER_ACCOUNT = "scanward-worker"
_RBAC_COLLECTIONS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


def rbac_manifest() -> list[dict[str, Any]]:
    """deploy/rbac.yaml's objects as the file writes them."""
    return [obj for obj in yaml.safe_load_all(RBAC_FILE.read_text()) if obj]


def rbac_objects(namespace: str) -> list[dict[str, Any]]:
    """deploy/rbac.yaml's objects (ServiceAccount, Role, RoleBinding), moved to
    ``namespace`` (the file says "scanward" for every one)."""
    moved = []
    for obj in rbac_manifest():
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = namespace
        for subject in obj.get("subjects") or []:
            subject["namespace"] = namespace
        moved.append(obj)
    return moved


def apply_rbac(plane: testenv.ControlPlane, namespace: str,
               objects: list[dict[str, Any]]) -> None:
    """Create ``objects`` (from :func:`rbac_objects`) in ``namespace``."""
    for obj in objects:
        plane.request("POST", _RBAC_COLLECTIONS[obj["kind"]].format(ns=namespace), obj)


def start_plane() -> testenv.ControlPlane:
    bin_dir = testenv.default_bin_dir()
    missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager",
                           "kube-scheduler", "kwok") if not (bin_dir / b).exists()]
    if missing:
        pytest.fail(f"Kubernetes test binaries missing in {bin_dir}: {', '.join(missing)}; "
                    "build them with tools/k8s-testenv/build.sh")
    return testenv.ControlPlane().start()


def running_plane() -> Iterator[testenv.ControlPlane]:
    """A started plane, stopped when the generator closes (the body of plane fixtures)."""
    plane = start_plane()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def control_plane() -> Iterator[testenv.ControlPlane]:
    yield from running_plane()


def bound_claims(plane: testenv.ControlPlane, namespace: str) -> None:
    """The workspace and results claims, bound to (never used) hostPath volumes: the
    scheduler will not place a pod whose claims are unbound. They are created bound,
    as the PV binder would leave them, instead of waiting for its 15 s resync."""
    for claim in CLAIMS:
        pv = f"{namespace}-{claim}"
        plane.request("POST", "/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"scanward-test": namespace}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                     "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": f"/tmp/{pv}"},
                     "claimRef": {"namespace": namespace, "name": claim}},
        })
        plane.request("POST", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes"}},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                     "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}},
        })
        merge = "application/merge-patch+json"
        plane.request("PATCH", f"/api/v1/persistentvolumes/{pv}/status",
                      {"status": {"phase": "Bound"}}, content_type=merge)
        plane.request("PATCH",
                      f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}/status",
                      {"status": {"phase": "Bound", "accessModes": ["ReadWriteMany"],
                                  "capacity": {"storage": "1Gi"}}}, content_type=merge)


@pytest.fixture
def kube_namespace(control_plane: testenv.ControlPlane) -> Iterator[str]:
    """A fresh namespace with bound workspace/results claims, deleted afterwards."""
    name = scanward_namespace(control_plane)
    try:
        yield name
    finally:
        delete_namespace(control_plane, name)


def kwok_complete(delay: str = "1s") -> dict[str, Any]:
    """Catalog fields that make kwok complete the scanner's pod after ``delay``."""
    meta = testenv.job_complete_metadata(delay=delay)
    return {"pod_annotations": meta.get("annotations", {}), "pod_labels": meta.get("labels", {})}


def kwok_fail(exit_code: int, delay: str = "1s", reason: str = "Error") -> dict[str, Any]:
    """Catalog fields that make kwok fail the scanner container with ``exit_code``."""
    meta = testenv.job_fail_metadata(exit_code=exit_code, delay=delay, reason=reason)
    meta["annotations"][
        "pod-container-running-failed.stage.kwok.x-k8s.io/container-name"] = "scanner"
    return {"pod_annotations": meta.get("annotations", {}), "pod_labels": meta.get("labels", {})}


def service_account_token(plane: testenv.ControlPlane, namespace: str, account: str,
                          seconds: int = 3600) -> str:
    """A token for the ServiceAccount, from the TokenRequest API."""
    answer = plane.request(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": seconds}})
    token: str = answer["status"]["token"]
    return token


def token_kubeconfig(path: Path, server: str, token: str, ca_file: Path | None = None) -> Path:
    """A kubeconfig that authenticates with ``token`` only (no admin credentials);
    without ``ca_file`` it skips TLS verification."""
    cluster: dict[str, object] = {"server": server}
    if ca_file is None:
        cluster["insecure-skip-tls-verify"] = True
    else:
        cluster["certificate-authority"] = str(ca_file)
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": cluster}],
        "users": [{"name": "token", "user": {"token": token}}],
        "contexts": [{"name": "token", "context": {"cluster": "testenv", "user": "token"}}],
        "current-context": "token",
    }))
    path.chmod(0o600)
    return path


def access_allowed(plane: testenv.ControlPlane, token: str, namespace: str, group: str,
                   resource: str, verb: str) -> bool:
    """What the authorizer says for ``token`` (a SelfSubjectAccessReview, which any
    identity may make); ``resource`` may name a subresource (``pods/log``)."""
    name, _, sub = resource.partition("/")
    review = plane.request(
        "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
         "spec": {"resourceAttributes": {"namespace": namespace, "group": group,
                                         "resource": name, "subresource": sub,
                                         "verb": verb}}},
        token=token)
    return bool(review["status"].get("allowed"))


def wait_for_grants(plane: testenv.ControlPlane, token: str, namespace: str,
                    grants: list[tuple[str, str, str]], timeout: float = 15.0,
                    poll: float = 0.1) -> None:
    """The RBAC authorizer sees new Roles/RoleBindings through informers: wait until
    ``grants`` are all in effect, so a 403 later means the Role, not propagation."""
    deadline = time.monotonic() + timeout
    missing = grants
    while missing:
        missing = [g for g in missing if not access_allowed(plane, token, namespace, *g)]
        if missing and time.monotonic() > deadline:
            raise AssertionError(f"not granted after {timeout}s: {missing}")
        if missing:
            time.sleep(poll)


def worker_kubeconfig(plane: testenv.ControlPlane, namespace: str, path: Path) -> Path:
    """deploy/rbac.yaml applied in ``namespace``, and a kubeconfig at ``path`` holding
    its ServiceAccount's token (verified TLS): a worker with the identity and the Role
    production gives it, once the authorizer grants what the backend uses."""
    from activities.backends.kubernetes import REQUIRED_PERMISSIONS

    apply_rbac(plane, namespace, rbac_objects(namespace))
    token = service_account_token(plane, namespace, WORKER_ACCOUNT)
    grants = [(group, f"{resource}/{sub}" if sub else resource, verb)
              for group, resource, sub, verb in REQUIRED_PERMISSIONS]
    wait_for_grants(plane, token, namespace, grants, timeout=30, poll=0.2)
    return token_kubeconfig(path, plane.server, token, plane.ca_file)


def scanward_namespace(plane: testenv.ControlPlane, name: str | None = None) -> str:
    """A new namespace with bound workspace/results claims (delete with
    :func:`delete_namespace`)."""
    name = name or f"sw-{uuid.uuid4().hex[:10]}"
    plane.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    bound_claims(plane, name)
    return name


def delete_namespace(plane: testenv.ControlPlane, name: str) -> None:
    """The namespace and its claims' (fake-bound) volumes."""
    plane.request("DELETE", f"/api/v1/namespaces/{name}")
    for claim in CLAIMS:
        # Released first, or the (fake-bound) volume never finishes terminating.
        plane.request("PATCH", f"/api/v1/persistentvolumes/{name}-{claim}/status",
                      {"status": {"phase": "Released"}},
                      content_type="application/merge-patch+json")
        plane.request("DELETE", f"/api/v1/persistentvolumes/{name}-{claim}")

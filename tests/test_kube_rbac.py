"""deploy/rbac.yaml against a real kube-apiserver (tests/k8s_fixture.py): the Role it
grants is enough for the real KubernetesBackend, authenticated as the ServiceAccount's
own token (TokenRequest API), and it grants nothing the backend does not use.

Without a permission the backend must say so: a Role lacking any one of them (``create``
on jobs, ``watch`` on pods, ...) makes ``preflight()`` raise a ClusterError naming the
verb, the resource, the namespace and deploy/rbac.yaml.
"""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from activities.backends import ScannerFailed
from activities.backends import kubernetes as kube_backend
from activities.backends.kubernetes import ClusterError, KubernetesBackend, KubeSettings
from scanward.catalog import Catalog
from scanward.contract import Checkout, Resources, ScannerJobInput
from scanward.job_spec import CONTAINER, KubeJobConfig, build_job
from tests.conftest import run_async
from tests.k8s_fixture import (
    access_allowed,
    apply_rbac,
    kwok_complete,
    rbac_manifest,
    rbac_objects,
    service_account_token,
    testenv,
    token_kubeconfig,
    wait_for_grants,
)

# Loads the fixtures (control_plane, kube_namespace) whether or not conftest.py already
# lists the plugin: pytest registers a plugin module once. Importing the fixture functions
# here instead would give this module a control plane of its own next to conftest's.
pytest_plugins = ["tests.k8s_fixture"]

ROOT = Path(__file__).resolve().parent.parent
RBAC = ROOT / "deploy" / "rbac.yaml"
ACCOUNT = "scanward-worker"
MANIFEST_NAMESPACE = "scanward"

# Every API request the backend makes (activities/backends/kubernetes.py and job_watch.py),
# as (apiGroup, resource) -> verbs. The Role must grant exactly this.
USED: dict[tuple[str, str], frozenset[str]] = {
    ("batch", "jobs"): frozenset({"create", "get", "list", "watch", "delete"}),
    ("", "pods"): frozenset({"list", "watch"}),
    ("", "pods/log"): frozenset({"get"}),
    ("", "events"): frozenset({"list"}),
}
PERMISSIONS = sorted((group, resource, verb) for (group, resource), verbs in USED.items()
                     for verb in verbs)

# ------------------------------------------------------------------------ helpers


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {RBAC}, found {len(found)}"
    return found[0]


def attempt(scan_id: str = "scan-default-0123456789abcdef0123") -> ScannerJobInput:
    return ScannerJobInput(
        scan_id=scan_id, scanner="bandit", attempt=1,
        checkout=Checkout(scan_id=scan_id, source_subpath=f"{scan_id}/src", commit="a" * 40,
                          size_bytes=10, file_count=1),
        resources=Resources(cpu_millis=100, memory_mib=64))


def running_job(backend: KubernetesBackend, namespace: str) -> str:
    """Create a long-running attempt's Job through ``backend``; its name."""
    job = attempt(f"scan-default-{uuid.uuid4().hex[:20]}")
    spec = Catalog.load().get("bandit").model_copy(update=kwok_complete("600s"))
    manifest = build_job(job, spec, KubeJobConfig(namespace=namespace))
    backend._create_or_adopt(manifest, job)
    name: str = manifest["metadata"]["name"]
    return name


def backend_for(kubeconfig: Path, namespace: str, results: Path) -> KubernetesBackend:
    return KubernetesBackend(
        KubeSettings(kubeconfig=str(kubeconfig), job=KubeJobConfig(namespace=namespace)),
        results)


@pytest.fixture
def worker_identity(control_plane: testenv.ControlPlane, kube_namespace: str,
                    tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """deploy/rbac.yaml applied to the namespace; the ServiceAccount's token and a
    kubeconfig using it (only once the grants are in effect)."""
    apply_rbac(control_plane, kube_namespace, rbac_objects(kube_namespace))
    token = service_account_token(control_plane, kube_namespace, ACCOUNT)
    wait_for_grants(control_plane, token, kube_namespace, PERMISSIONS)
    yield token, token_kubeconfig(tmp_path / "kubeconfig", control_plane.server, token,
                                      control_plane.ca_file)


# ------------------------------------------------------------------------ the manifest


def test_manifest_is_minimal_and_namespaced() -> None:
    objects = rbac_manifest()  # as written: rbac_objects would set every namespace
    assert sorted(o["kind"] for o in objects) == ["Role", "RoleBinding", "ServiceAccount"]
    for obj in objects:  # nothing cluster-scoped, everything in the worker's namespace
        assert obj["metadata"]["namespace"] == MANIFEST_NAMESPACE, obj["metadata"]
    account, role, binding = (the(objects, k) for k in ("ServiceAccount", "Role",
                                                        "RoleBinding"))
    assert account["metadata"]["name"] == ACCOUNT
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": ACCOUNT,
                                    "namespace": MANIFEST_NAMESPACE}]

    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, (
            f"rule with more than groups/resources/verbs (resourceNames? nonResourceURLs?): "
            f"{rule}")
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard {field} in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == {k: set(v) for k, v in USED.items()}, (
        "the Role must grant exactly what the backend uses (update USED only together "
        "with the code that needs the permission)")
    assert not any("secret" in resource for _, resource in granted)


def test_manifest_matches_what_preflight_checks() -> None:
    """USED here, deploy/rbac.yaml and the backend's own list (which preflight() checks
    one SelfSubjectAccessReview each) are the same set."""
    required = {(group, f"{resource}/{sub}" if sub else resource, verb)
                for group, resource, sub, verb in kube_backend.REQUIRED_PERMISSIONS}
    assert required == set(PERMISSIONS)


# ------------------------------------------------------------------------ the real thing


def test_backend_works_as_the_service_account(control_plane: testenv.ControlPlane,
                                              kube_namespace: str,
                                              worker_identity: tuple[str, Path],
                                              tmp_path: Path) -> None:
    ns = kube_namespace
    token, kubeconfig = worker_identity
    # The token really is the ServiceAccount's, restricted to its namespace.
    assert not access_allowed(control_plane, token, "default", "batch", "jobs", "create")
    assert not access_allowed(control_plane, token, ns, "", "secrets", "get")

    backend = backend_for(kubeconfig, ns, tmp_path / "results")
    try:
        backend.preflight()
        backend.start()
        tracker = backend.tracker
        assert tracker.jobs.synced.is_set() and tracker.pods.synced.is_set()

        job = attempt()
        spec = Catalog.load().get("bandit").model_copy(update=kwok_complete("1s"))
        manifest = build_job(job, spec, KubeJobConfig(namespace=ns))
        name = manifest["metadata"]["name"]
        backend._create_or_adopt(manifest, job)
        created = control_plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
        assert created["metadata"]["labels"]["scanward.dev/scanner"] == "bandit"
        backend._create_or_adopt(manifest, job)  # 409: read (get) and adopt, no error

        # Its end arrives through the shared watch (list + watch as the ServiceAccount).
        outcome = run_async(asyncio.wait_for(tracker.wait(name), timeout=60))
        assert outcome.succeeded, outcome

        pods = backend._pods(name)
        assert [p["metadata"]["labels"]["job-name"] for p in pods] == [name]
        # The log read is authorized (the API server then finds no kubelet behind the
        # kwok node: any error but 403 is fine here).
        pod = pods[0]["metadata"]["name"]
        try:
            backend._core.read_namespaced_pod_log(pod, ns, container=CONTAINER, tail_lines=20,
                                                  _request_timeout=10)
        except ApiException as e:
            assert e.status != 403, e.body

        backend._batch.delete_namespaced_job(name, ns, propagation_policy="Background",
                                             _request_timeout=30)  # raises if forbidden
        deadline = time.monotonic() + 30
        while True:
            try:
                control_plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
            except testenv.ApiError as e:
                assert e.status == 404
                break
            assert time.monotonic() < deadline, "Job not deleted"
            time.sleep(0.1)

        # Each watch was opened once and never had to be re-listed or retried: no 403
        # (nor anything else) interrupted them.
        assert (tracker.jobs.lists, tracker.jobs.watches) == (1, 1)
        assert (tracker.pods.lists, tracker.pods.watches) == (1, 1)
    finally:
        backend.close()


def test_backend_delete_path(control_plane: testenv.ControlPlane, kube_namespace: str,
                             worker_identity: tuple[str, Path], tmp_path: Path) -> None:
    """The backend's own _delete removes a running attempt's Job."""
    ns = kube_namespace
    _, kubeconfig = worker_identity
    backend = backend_for(kubeconfig, ns, tmp_path / "results")
    try:
        name = running_job(backend, ns)
        backend._delete(name)
        with pytest.raises(testenv.ApiError) as gone:
            control_plane.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
        assert gone.value.status == 404
    finally:
        backend.close()


# ------------------------------------------------------------------------ less than that


def without(objects: list[dict[str, Any]], group: str, resource: str,
            verb: str) -> list[dict[str, Any]]:
    """The manifest with one (group, resource, verb) taken out of the Role."""
    objects = copy.deepcopy(objects)
    role = the(objects, "Role")
    rules = []
    for rule in role["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            assert rule["apiGroups"] == [group] and rule["resources"] == [resource], rule
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
        if rule["verbs"]:
            rules.append(rule)
    role["rules"] = rules
    return objects


def preflight_refusal(kubeconfig: Path, namespace: str, tmp_path: Path) -> str:
    """The ClusterError message of a backend's preflight as that identity, there."""
    backend = backend_for(kubeconfig, namespace, tmp_path / "results")
    try:
        with pytest.raises(ClusterError) as error:
            backend.preflight()
    finally:
        backend.close()
    return str(error.value)


@pytest.mark.parametrize("permission", [pytest.param(p, id=f"{p[2]}-{p[1]}")
                                        for p in PERMISSIONS])
def test_missing_permission_is_a_clear_preflight_error(control_plane: testenv.ControlPlane,
                                                      kube_namespace: str, tmp_path: Path,
                                                      permission: tuple[str, str, str]) -> None:
    ns = kube_namespace
    group, resource, verb = permission
    apply_rbac(control_plane, ns, without(rbac_objects(ns), group, resource, verb))
    token = service_account_token(control_plane, ns, ACCOUNT)
    wait_for_grants(control_plane, token, ns, [p for p in PERMISSIONS if p != permission])
    assert not access_allowed(control_plane, token, ns, group, resource, verb)

    message = preflight_refusal(token_kubeconfig(tmp_path / "kubeconfig", control_plane.server,
                                                 token, control_plane.ca_file), ns, tmp_path)
    assert f"forbidden to {verb} {resource} in namespace {ns!r}" in message
    assert "deploy/rbac.yaml" in message


def test_a_missing_namespace_is_not_reported_as_a_missing_permission(
        control_plane: testenv.ControlPlane, worker_identity: tuple[str, Path],
        tmp_path: Path) -> None:
    """The worker's ServiceAccount pointed at a namespace that does not exist: every
    permission is denied, and the error said "forbidden to create jobs, ..." exactly as
    for an RBAC gap, while deploy/README promises "namespace missing" as its own reason."""
    _, kubeconfig = worker_identity
    message = preflight_refusal(kubeconfig, "no-such-ns", tmp_path)
    assert message.startswith("no permission at all in namespace 'no-such-ns'"), message
    assert "check that the namespace exists (SCANWARD_KUBE_NAMESPACE)" in message


def test_refused_requests_are_errors_not_empty_answers(control_plane: testenv.ControlPlane,
                                                       kube_namespace: str,
                                                       tmp_path: Path) -> None:
    """A pod list or a Job delete the API server refuses was read as "no pods" (an OOM
    kill then looked like a crash, retried without more memory) or as done (a cancelled
    scan's Job ran on to its deadline, unreported). Both are errors now."""
    ns = kube_namespace
    apply_rbac(control_plane, ns, without(without(rbac_objects(ns), "", "pods", "list"),
                                          "batch", "jobs", "delete"))
    token = service_account_token(control_plane, ns, ACCOUNT)
    kept = [p for p in PERMISSIONS if p not in (("", "pods", "list"),
                                                ("batch", "jobs", "delete"))]
    wait_for_grants(control_plane, token, ns, kept)
    backend = backend_for(token_kubeconfig(tmp_path / "kubeconfig", control_plane.server,
                                           token, control_plane.ca_file), ns,
                          tmp_path / "results")
    try:
        name = running_job(backend, ns)
        with pytest.raises(ScannerFailed, match="forbidden to list pods"):
            backend._pods(name, tries=1)
        with pytest.raises(ScannerFailed, match="forbidden to delete jobs"):
            backend._delete(name)
        # Still there: nothing claimed otherwise.
        assert control_plane.request(
            "GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")["metadata"]["name"] == name
    finally:
        backend.close()
        control_plane.request("DELETE", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")

"""Every Job manifest scanward/job_spec.py builds is one the real kube-apiserver
(tests/k8s_fixture.py, v1.35.4) accepts: a server-side ``dryRun=All`` create runs the
whole validation and admission chain without storing anything. For every built-in
scanner and a spread of inputs (first and 7th attempt, smallest and largest resources,
pull secrets, node selector, tolerations, trace context, the longest scan ids and
scanner names), and the answer keeps what the backend relies on: the pod failure
policy, TTL, deadline, the hardened security context and the subPath mounts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from scanward.catalog import Catalog
from scanward.contract import SCAN_ID_RE, Checkout, Resources, ScannerJobInput, ScanRequest
from scanward.inputs import InputError, check_scanner_name
from scanward.job_spec import (
    ANNOTATION_TRACEPARENT,
    CONTAINER,
    LABEL_SCANNER,
    RESULTS_MOUNT,
    SOURCE_MOUNT,
    KubeJobConfig,
    build_job,
    job_name,
    results_subpath,
    tee_log_command,
)
from tests.k8s_fixture import testenv

# Loads the fixtures (control_plane, kube_namespace) whether or not conftest.py already
# lists the plugin; see tests/test_kube_rbac.py.
pytest_plugins = ["tests.k8s_fixture"]

BUILTIN = Catalog.load().names()  # no catalog file: exactly the built-in scanners
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "vendor=opaque-value,other=1"
LONGEST_TENANT = ("a-very-long-tenant-name-" * 3)[:62] + "z"  # 63: the tenant maximum
LONGEST_SCAN_ID = f"scan-{LONGEST_TENANT}-{'f' * 20}"  # the longest a ScanRequest makes
TINY = Resources(cpu_millis=10, memory_mib=16)  # the contract's minimum
HUGE = Resources(cpu_millis=64_000, memory_mib=262_144)  # and maximum
NAME_30 = "custom-scanner-with-a-long-nam"
NAME_32 = "custom-scanner-with-a-long-name2"  # check_scanner_name's longest

EVERYTHING = KubeJobConfig(
    image_pull_policy="Always",
    image_pull_secrets=("registry-cred", "mirror-cred"),
    ttl_seconds_after_finished=0,
    default_deadline_seconds=7200,
    node_selector={"kubernetes.io/os": "linux", "scanward.dev/pool": "scanners"},
    tolerations=(
        {"key": "dedicated", "operator": "Equal", "value": "scanners", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"operator": "Exists"},
    ),
    extra_env={"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": ".svc,10.0.0.0/8"},
)


@dataclass(frozen=True)
class Case:
    attempt: int = 1
    resources: Resources = TINY
    config: KubeJobConfig = field(default_factory=KubeJobConfig)
    env: dict[str, str] | None = None
    scan_id: str = "scan-default-0123456789abcdef0123"
    scanner_name: str | None = None  # the catalog entry renamed (a custom scanner)
    deadline_seconds: int | None = None


CASES = {
    "first-attempt-tiny": Case(),
    "seventh-attempt-huge-everything": Case(
        attempt=7, resources=HUGE, config=EVERYTHING,
        env={"TRACEPARENT": TRACEPARENT, "TRACESTATE": TRACESTATE}, deadline_seconds=86_400),
    "traceparent-defaults": Case(resources=Resources(cpu_millis=250, memory_mib=256),
                                 env={"TRACEPARENT": TRACEPARENT}),
    "longest-scan-id-name-30": Case(attempt=7, scan_id=LONGEST_SCAN_ID, scanner_name=NAME_30,
                                    config=EVERYTHING),
    "longest-scan-id-name-32": Case(attempt=20, resources=HUGE, scan_id=LONGEST_SCAN_ID,
                                    scanner_name=NAME_32),
}


def test_inputs_are_at_the_limits() -> None:
    assert len(LONGEST_TENANT) == 63 and len(LONGEST_SCAN_ID) == 89
    assert SCAN_ID_RE.match(LONGEST_SCAN_ID)
    assert ScanRequest(repository="https://example.com/r.git", scanners=("bandit",),
                       tenant=LONGEST_TENANT).scan_id().startswith(f"scan-{LONGEST_TENANT}-")
    assert len(NAME_30) == 30 and len(NAME_32) == 32
    for name in (NAME_30, NAME_32):
        check_scanner_name(name)
    with pytest.raises(ValueError):
        Resources(cpu_millis=TINY.cpu_millis - 1, memory_mib=TINY.memory_mib)
    with pytest.raises(ValueError):
        Resources(cpu_millis=HUGE.cpu_millis, memory_mib=HUGE.memory_mib + 1)


def attempt(case: Case, scanner: str) -> ScannerJobInput:
    return ScannerJobInput(
        scan_id=case.scan_id, scanner=scanner, attempt=case.attempt,
        checkout=Checkout(scan_id=case.scan_id, source_subpath=f"{case.scan_id}/src",
                          commit="0123456789abcdef" * 2 + "01234567", size_bytes=1 << 30,
                          file_count=12_345),
        resources=case.resources, deadline_seconds=case.deadline_seconds)


def dry_run(plane: testenv.ControlPlane, namespace: str,
            manifest: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = plane.request(
        "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs?dryRun=All", manifest)
    return answer


_QUANTITY = re.compile(r"^(\d+)(m|Ki|Mi|Gi|Ti)?$")
_FACTOR = {None: 1000, "m": 1, "Ki": 1000 << 10, "Mi": 1000 << 20, "Gi": 1000 << 30,
           "Ti": 1000 << 40}


def milli(quantity: str) -> int:
    """A quantity in thousandths ("64" == "64000m", "256Gi" == "262144Mi")."""
    m = _QUANTITY.match(quantity)
    assert m, f"unexpected quantity {quantity!r}"
    return int(m.group(1)) * _FACTOR[m.group(2)]


def check_read_back(sent: dict[str, Any], got: dict[str, Any], job: ScannerJobInput,
                    cfg: KubeJobConfig, case: Case) -> None:
    """What the backend relies on survives validation, defaulting and admission."""
    assert got["kind"] == "Job"
    assert got["metadata"]["name"] == sent["metadata"]["name"]
    assert len(got["metadata"]["name"]) <= 63  # it is also the pods' job-name label
    assert got["metadata"]["labels"] == sent["metadata"]["labels"]
    assert sent["metadata"]["annotations"].items() <= got["metadata"]["annotations"].items()

    spec = got["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == cfg.ttl_seconds_after_finished
    assert spec["activeDeadlineSeconds"] == (case.deadline_seconds
                                             or cfg.default_deadline_seconds)
    rules, sent_rules = spec["podFailurePolicy"]["rules"], sent["spec"]["podFailurePolicy"][
        "rules"]
    assert [r["action"] for r in rules] == [r["action"] for r in sent_rules]
    assert [r.get("onExitCodes") for r in rules] == [r.get("onExitCodes") for r in sent_rules]
    assert rules[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]

    template = spec["template"]
    labels = template["metadata"]["labels"]
    assert sent["spec"]["template"]["metadata"]["labels"].items() <= labels.items()
    assert labels["job-name"] == got["metadata"]["name"]  # set by the API server
    assert (template["metadata"]["annotations"].items()
            >= sent["spec"]["template"]["metadata"]["annotations"].items())

    pod = template["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": cfg.run_as_user, "runAsGroup": cfg.run_as_user,
        "fsGroup": cfg.run_as_user, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod.get("imagePullSecrets", []) == [{"name": s} for s in cfg.image_pull_secrets]
    assert pod.get("nodeSelector", {}) == cfg.node_selector
    assert pod.get("tolerations", []) == [dict(t) for t in cfg.tolerations]
    assert pod["volumes"] == [
        {"name": "source", "persistentVolumeClaim": {"claimName": cfg.workspace_claim,
                                                     "readOnly": True}},
        {"name": "results", "persistentVolumeClaim": {"claimName": cfg.results_claim}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]

    [container] = pod["containers"]
    assert container["name"] == CONTAINER
    assert container["imagePullPolicy"] == cfg.image_pull_policy
    assert container["securityContext"] == {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["source"] == {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True,
                                "subPath": job.checkout.source_subpath}
    assert mounts["results"] == {"name": "results", "mountPath": RESULTS_MOUNT,
                                 "subPath": results_subpath(job)}
    assert not mounts["results"].get("readOnly")
    assert mounts["tmp"] == {"name": "tmp", "mountPath": "/tmp"}
    resources = container["resources"]
    assert milli(resources["requests"]["cpu"]) == job.resources.cpu_millis
    assert milli(resources["requests"]["memory"]) == milli(f"{job.resources.memory_mib}Mi")
    assert milli(resources["limits"]["memory"]) == milli(f"{job.resources.memory_mib}Mi")
    assert "cpu" not in resources["limits"]  # no CPU throttling, by design
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert env == {**cfg.extra_env, **(case.env or {})}
    if case.env and "TRACEPARENT" in case.env:
        assert got["metadata"]["annotations"][ANNOTATION_TRACEPARENT] == TRACEPARENT
        assert env["TRACEPARENT"] == TRACEPARENT


@pytest.mark.parametrize("case_id", list(CASES))
@pytest.mark.parametrize("scanner", BUILTIN)
def test_server_accepts_job(control_plane: testenv.ControlPlane, kube_namespace: str,
                            scanner: str, case_id: str) -> None:
    case = CASES[case_id]
    cfg = dataclasses.replace(case.config, namespace=kube_namespace)
    spec = Catalog.load().get(scanner)
    if case.scanner_name:
        spec = spec.model_copy(update={"name": check_scanner_name(case.scanner_name)})
    job = attempt(case, spec.name)
    manifest = build_job(job, spec, cfg, deadline_seconds=case.deadline_seconds, env=case.env)

    got = dry_run(control_plane, kube_namespace, manifest)

    assert got["metadata"]["name"] == job_name(job.scan_id, spec.name, job.attempt)
    assert got["metadata"]["labels"][LABEL_SCANNER] == spec.name
    check_read_back(manifest, got, job, cfg, case)
    container = got["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == spec.image
    assert container["command"] == tee_log_command([
        a.format(source=SOURCE_MOUNT, sarif=f"{RESULTS_MOUNT}/results.sarif")
        for a in spec.command])


def test_catalog_is_the_builtin_five() -> None:
    """The matrix above covers every built-in scanner (extend it when one is added):
    the four real ones and the load tests' synthetic scanner."""
    assert BUILTIN == ["bandit", "gitleaks", "semgrep", "synthetic", "trivy"]


def test_dry_run_stores_nothing(control_plane: testenv.ControlPlane,
                                kube_namespace: str) -> None:
    case = CASES["first-attempt-tiny"]
    cfg = KubeJobConfig(namespace=kube_namespace)
    for scanner in BUILTIN:
        dry_run(control_plane, kube_namespace,
                build_job(attempt(case, scanner), Catalog.load().get(scanner), cfg))
    jobs = control_plane.request("GET", f"/apis/batch/v1/namespaces/{kube_namespace}/jobs")
    assert jobs["items"] == []


def test_server_rejects_what_it_should(control_plane: testenv.ControlPlane,
                                       kube_namespace: str) -> None:
    """The dry run is a real check, not a rubber stamp: a broken manifest is refused."""
    case = CASES["first-attempt-tiny"]
    manifest = build_job(attempt(case, "bandit"), Catalog.load().get("bandit"),
                         KubeJobConfig(namespace=kube_namespace))
    manifest["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["subPath"] = (
        "../escape")
    with pytest.raises(testenv.ApiError) as error:
        dry_run(control_plane, kube_namespace, manifest)
    assert error.value.status == 422
    assert "subPath" in str(error.value)


def test_scanner_names_are_valid_label_values(control_plane: testenv.ControlPlane,
                                              kube_namespace: str) -> None:
    """The scanner name is also the scanward.dev/scanner label value, which must end
    with a letter or digit: the API server refuses a Job for "custom-", so the input
    check refuses that name before any Job is built."""
    spec = Catalog.load().get("bandit").model_copy(update={"name": "custom-"})
    job = attempt(CASES["first-attempt-tiny"], "custom-")
    with pytest.raises(testenv.ApiError) as error:
        dry_run(control_plane, kube_namespace,
                build_job(job, spec, KubeJobConfig(namespace=kube_namespace)))
    assert error.value.status == 422
    assert "metadata.labels" in str(error.value)
    with pytest.raises(InputError):
        check_scanner_name("custom-")

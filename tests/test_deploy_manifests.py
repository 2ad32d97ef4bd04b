"""The operator's manifests in deploy/: they parse, they agree with the code that reads
their settings (names, ports, probe paths, claim names, timings), and a real
kube-apiserver (v1.35.4, tests/k8s_fixture.py) accepts every object in a server-side dry
run with strict field validation. The namespace's Pod Security level is checked for
real: the worker's pod and a scanner Job's pod are admitted, a non-compliant pod is not.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from activities.backends.kubernetes import KubeSettings
from scanward.catalog import Catalog
from scanward.contract import Checkout, Resources, ScannerJobInput
from scanward.health import Health
from scanward.job_spec import KubeJobConfig, build_job
from scanward.settings import Settings, task_queue_for
from tests.k8s_fixture import testenv

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NAMESPACE = "scanward"
# The files `kubectl apply -k deploy/` applies; the KEDA object is optional (needs KEDA).
DEFAULT_SET = {"namespace.yaml", "rbac.yaml", "storage.yaml", "configmap.yaml",
               "worker.yaml", "pdb.yaml"}
OPTIONAL = {"keda-scaledobject.yaml"}
# Where the worker's SCANWARD_* variables are read: a renamed variable breaks this test.
SETTINGS_SOURCES = (ROOT / "scanward" / "settings.py",
                    ROOT / "activities" / "backends" / "kubernetes.py",
                    ROOT / "scanward" / "secrets.py")


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def manifest_files() -> list[str]:
    return sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def objects(*names: str) -> list[dict[str, Any]]:
    return [d for n in names if (DEPLOY / n).exists() for d in load(n)]


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects(*manifest_files()) if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/, found {len(found)}"
    return found[0]


def worker() -> dict[str, Any]:
    return the("Deployment", "scanward-worker")


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = worker()["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (c,) = pod_spec()["containers"]
    return dict(c)


def resolved_env() -> dict[str, str]:
    """The worker container's environment as the kubelet would build it: ConfigMap keys
    from configmap.yaml, the downward API from the Deployment, Secrets as placeholders."""
    config = the("ConfigMap", "scanward-config")
    env: dict[str, str] = {}
    for var in container()["env"]:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["name"] == config["metadata"]["name"], var
            assert ref["key"] in config["data"], f"{var['name']}: no key {ref['key']}"
            env[var["name"]] = config["data"][ref["key"]]
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.namespace", var
            env[var["name"]] = worker()["metadata"]["namespace"]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if not ref.get("optional"):
                env[var["name"]] = f"postgresql://secret-{ref['name']}-{ref['key']}@db/x"
        else:
            raise AssertionError(f"unexpected env source {var}")
    return env


def mount_of(volume_name: str) -> dict[str, Any]:
    (mount,) = [m for m in container()["volumeMounts"] if m["name"] == volume_name]
    return dict(mount)


def volume_for(**match: Any) -> str:
    """The name of the pod volume whose source is ``match``."""
    for volume in pod_spec()["volumes"]:
        for key, value in match.items():
            if volume.get(key) and all(volume[key].get(k) == v for k, v in value.items()):
                return str(volume["name"])
    raise AssertionError(f"no volume {match}")


def port_number(port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container()["ports"] if p["name"] == port]
    return int(number)


# ----------------------------------------------------------------------------- files


def test_every_manifest_parses_and_lives_in_the_namespace() -> None:
    assert set(manifest_files()) >= (DEFAULT_SET - {"rbac.yaml"}) | OPTIONAL
    for name in manifest_files():
        docs = load(name)
        assert docs, f"{name} is empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{name}: {doc}"
            meta = doc["metadata"]
            assert meta.get("name"), f"{name}: object without a name"
            if doc["kind"] == "Namespace":
                assert meta["name"] == NAMESPACE
            else:
                assert meta.get("namespace") == NAMESPACE, f"{name}: {doc['kind']}"


def test_kustomization_lists_the_default_set() -> None:
    (kustomization,) = load("kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == DEFAULT_SET
    assert resources[0] == "namespace.yaml"
    # Everything else in deploy/ is listed, but for the optional KEDA object.
    assert set(manifest_files()) - set(resources) == OPTIONAL
    # rbac.yaml is written separately; every other listed file is here.
    missing = {r for r in resources if not (DEPLOY / r).exists()}
    assert missing <= {"rbac.yaml"}, missing


def test_storage_claims_are_the_backend_defaults() -> None:
    defaults = KubeJobConfig()
    claims = {o["metadata"]["name"]: o for o in load("storage.yaml")}
    assert set(claims) == {defaults.workspace_claim, defaults.results_claim}
    for claim in claims.values():
        assert claim["kind"] == "PersistentVolumeClaim"
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["spec"]["resources"]["requests"]["storage"]
    text = (DEPLOY / "storage.yaml").read_text()
    assert "StorageClass" in text and "EFS" in text


# -------------------------------------------------------------- worker vs. the code


def test_worker_variables_are_read_by_scanward() -> None:
    source = "\n".join(p.read_text() for p in SETTINGS_SOURCES)
    names = [v["name"] for v in container()["env"]]
    assert len(names) == len(set(names)), "duplicate env names"
    ours = [n for n in names if n.startswith("SCANWARD_")]
    assert {"SCANWARD_BACKEND", "SCANWARD_CLUSTER", "SCANWARD_KUBE_NAMESPACE",
            "SCANWARD_WORKSPACE", "SCANWARD_RESULTS", "SCANWARD_DATABASE_URL",
            "SCANWARD_SECRETS_DIR", "SCANWARD_HEALTH_PORT", "SCANWARD_METRICS_PORT",
            "SCANWARD_GRACEFUL_SHUTDOWN_SECONDS"} <= set(ours)
    unread = [n for n in ours if f'"{n}"' not in source]
    assert not unread, f"set in worker.yaml but read nowhere in scanward: {unread}"


def test_worker_settings_follow_from_the_manifest() -> None:
    env = resolved_env()
    settings = Settings.from_env(env)
    kube = KubeSettings.from_env(env)
    config = the("ConfigMap", "scanward-config")["data"]
    spec = pod_spec()

    assert settings.backend == "kubernetes"
    assert settings.cluster == config["SCANWARD_CLUSTER"]
    assert settings.task_queue == f"scanward-{config['SCANWARD_CLUSTER']}"
    assert env["TEMPORAL_ADDRESS"] == config["TEMPORAL_ADDRESS"]
    assert env["TEMPORAL_NAMESPACE"] == config["TEMPORAL_NAMESPACE"]
    assert env["SCANWARD_DATABASE_URL"].startswith("postgresql://secret-scanward-db-url@")
    assert settings.database_url == env["SCANWARD_DATABASE_URL"]

    # Jobs go to the worker's own namespace, with the claims storage.yaml creates.
    assert kube.job.namespace == NAMESPACE
    assert kube.kubeconfig is None  # in-cluster credentials of the ServiceAccount
    claims = {o["metadata"]["name"] for o in load("storage.yaml")}
    assert {kube.job.workspace_claim, kube.job.results_claim} == claims
    assert kube.job.workspace_claim == KubeJobConfig().workspace_claim
    assert kube.job.results_claim == KubeJobConfig().results_claim

    # The worker mounts the same claims where its settings look for them.
    workspace = volume_for(persistentVolumeClaim={"claimName": kube.job.workspace_claim})
    results = volume_for(persistentVolumeClaim={"claimName": kube.job.results_claim})
    assert Path(mount_of(workspace)["mountPath"]) == settings.workspace_root
    assert Path(mount_of(results)["mountPath"]) == settings.results_root
    assert settings.workspace_root == Path("/var/lib/scanward/workspace")
    assert settings.results_root == Path("/var/lib/scanward/results")
    assert not mount_of(workspace).get("readOnly") and not mount_of(results).get("readOnly")

    secrets = mount_of(volume_for(secret={"secretName": "scanward-secrets"}))
    assert secrets["readOnly"] is True
    assert Path(secrets["mountPath"]) == settings.secrets_dir == Path("/etc/scanward/secrets")

    # git's HOME and anything else written outside the volumes lands on the /tmp emptyDir.
    tmp = volume_for(emptyDir={})
    assert mount_of(tmp)["mountPath"] == "/tmp"
    assert settings.home.is_relative_to("/tmp")

    # Graceful shutdown fits in the grace period, with room to cancel and close.
    assert settings.graceful_shutdown_seconds == 300
    assert spec["terminationGracePeriodSeconds"] > settings.graceful_shutdown_seconds

    # Metrics: the port the worker binds is the one Prometheus is told to scrape.
    annotations = worker()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port == 9464
    assert port_number("metrics") == settings.metrics_port
    assert settings.health_port == 8080


def test_probes_point_at_what_the_health_server_serves() -> None:
    settings = Settings.from_env(resolved_env())
    c = container()
    probes = {kind: c[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        assert port_number(probe["httpGet"]["port"]) == settings.health_port, kind
        assert probe["periodSeconds"] > 0 and probe["failureThreshold"] >= 1, kind
    assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert probes["startupProbe"]["httpGet"]["path"] == "/livez"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Liveness tolerates a loop that is briefly late, not one stuck past Health's limit.
    health = Health()
    live = probes["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > health.stale_after

    # The real probe server: the paths exist (a wrong path would be a 404).
    port = health.serve(0, host="127.0.0.1")
    try:
        answers = {}
        for path in {p["httpGet"]["path"] for p in probes.values()}:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            response = conn.getresponse()
            answers[path] = (response.status, response.read().decode().strip())
            conn.close()
    finally:
        health.close()
    assert answers == {"/livez": (200, "ok"), "/readyz": (503, "worker not started")}


def test_worker_deployment_invariants() -> None:
    deployment = worker()
    spec = pod_spec()
    c = container()
    pdb = the("PodDisruptionBudget")

    assert c["command"] == ["scanward-worker"]
    assert c["image"].startswith("ghcr.io/scanward/scanward:")
    assert spec["serviceAccountName"] == "scanward-worker"
    if (DEPLOY / "rbac.yaml").exists():
        accounts = [o for o in load("rbac.yaml") if o["kind"] == "ServiceAccount"]
        assert [a["metadata"]["name"] for a in accounts] == [spec["serviceAccountName"]]
        bindings = [o for o in load("rbac.yaml") if o["kind"] == "RoleBinding"]
        assert bindings and all(
            any(s["kind"] == "ServiceAccount" and s["name"] == spec["serviceAccountName"]
                and s.get("namespace", NAMESPACE) == NAMESPACE for s in b["subjects"])
            for b in bindings), "the RoleBinding grants the worker's ServiceAccount"
    assert spec.get("automountServiceAccountToken", True) is True

    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["replicas"] > pdb["spec"]["minAvailable"] == 1

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"] == selector

    # Hardened pod, the same identity as the scanner Jobs it shares volumes with.
    pod_sc, sc = spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == pod_sc["runAsGroup"] == pod_sc["fsGroup"]
    assert pod_sc["runAsUser"] == KubeJobConfig().run_as_user
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod_sc["seccompProfile"] == sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][bound].keys(), bound


def test_keda_scaledobject_targets_the_worker_queue() -> None:
    (scaled,) = load("keda-scaledobject.yaml")
    settings = Settings.from_env(resolved_env())
    config = the("ConfigMap", "scanward-config")["data"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker()["metadata"]["name"]
    # Never to zero: running scanners are not in the backlog and need a live worker.
    assert scaled["spec"]["minReplicaCount"] > the("PodDisruptionBudget")["spec"][
        "minAvailable"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "temporal"
    meta = trigger["metadata"]
    assert meta["taskQueue"] == settings.task_queue == task_queue_for(config["SCANWARD_CLUSTER"])
    assert meta["endpoint"] == config["TEMPORAL_ADDRESS"]
    assert meta["namespace"] == config["TEMPORAL_NAMESPACE"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata are strings"


def test_kustomize_builds_base_and_readme_overlay(tmp_path: Path) -> None:
    """kustomize (built by tools/k8s-testenv/build.sh, as ``kubectl apply -k`` would
    run it) renders exactly the listed objects, and the per-cluster overlay shown in
    deploy/README.md works on them."""
    kustomize = testenv.default_bin_dir() / "kustomize"
    assert kustomize.exists(), f"{kustomize} missing: run tools/k8s-testenv/build.sh"
    base = tmp_path / "deploy"
    shutil.copytree(DEPLOY, base)
    (kustomization,) = load("kustomization.yaml")
    listed = [r for r in kustomization["resources"] if (DEPLOY / r).exists()]
    if len(listed) != len(kustomization["resources"]):  # rbac.yaml not written yet
        kustomization["resources"] = listed
        (base / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    def build(path: Path) -> list[dict[str, Any]]:
        out = subprocess.run([str(kustomize), "build", str(path)], capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    rendered = build(base)
    assert sorted(map(key, rendered)) == sorted(map(key, objects(*listed)))

    readme = (DEPLOY / "README.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "Kustomization" in b]
    assert len(blocks) == 1, "the README shows one overlay"
    overlay = tmp_path / "overlays" / "eu-west-1"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(blocks[0])
    built = {key(o): o for o in build(overlay)}
    assert built.keys() == {key(o) for o in rendered}
    assert built["ConfigMap", "scanward-config"]["data"]["SCANWARD_CLUSTER"] == "eu-west-1"
    for claim in load("storage.yaml"):
        assert built[key(claim)]["spec"]["storageClassName"]


# ------------------------------------------------------------ a real kube-apiserver


class Api:
    """REST paths per kind from the API server's own discovery documents."""

    def __init__(self, plane: testenv.ControlPlane) -> None:
        self.plane = plane
        self._groups: dict[str, dict[str, tuple[str, bool]] | None] = {}

    def resources(self, api_version: str) -> dict[str, tuple[str, bool]] | None:
        if api_version not in self._groups:
            prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                listing = self.plane.request("GET", prefix)
            except testenv.ApiError as e:
                if e.status != 404:
                    raise
                self._groups[api_version] = None  # not served: no such CRD/group
            else:
                self._groups[api_version] = {
                    r["kind"]: (f"{prefix}/{r['name']}", r["namespaced"])
                    for r in listing["resources"] if "/" not in r["name"]}
        return self._groups[api_version]

    def collection(self, obj: dict[str, Any]) -> str | None:
        served = self.resources(obj["apiVersion"])
        if served is None:
            return None
        assert obj["kind"] in served, f"{obj['apiVersion']} serves no {obj['kind']}"
        path, namespaced = served[obj["kind"]]
        if namespaced:
            prefix, _, plural = path.rpartition("/")
            path = f"{prefix}/namespaces/{obj['metadata']['namespace']}/{plural}"
        return path

    def dry_run(self, obj: dict[str, Any]) -> dict[str, Any]:
        path = self.collection(obj)
        assert path is not None
        # Strict: an unknown or misspelt field is an error, not a silent warning.
        created: dict[str, Any] = self.plane.request(
            "POST", f"{path}?dryRun=All&fieldValidation=Strict", obj)
        return created

    def create(self, obj: dict[str, Any]) -> bool:
        """Create for real; False if it already existed."""
        path = self.collection(obj)
        assert path is not None
        try:
            self.plane.request("POST", path, obj)
        except testenv.ApiError as e:
            if e.status != 409:
                raise
            return False
        return True


def pod_of(name: str, template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template.get("metadata", {}), "name": name,
                         "namespace": NAMESPACE},
            "spec": template["spec"]}


def scanner_job() -> dict[str, Any]:
    """A scanner Job exactly as the backend builds it (its preflight's probe)."""
    scan = "scan-deploytest-00000000000000000000"
    probe = ScannerJobInput(
        scan_id=scan, scanner="bandit", attempt=1,
        checkout=Checkout(scan_id=scan, source_subpath=f"{scan}/src", commit="0" * 40,
                          size_bytes=0, file_count=0),
        resources=Resources(cpu_millis=100, memory_mib=64))
    return build_job(probe, Catalog.load().get("bandit"), KubeJobConfig(namespace=NAMESPACE))


# control_plane comes from tests.k8s_fixture, which conftest.py registers as a plugin.
# Importing the fixture here as well would give this module its own session fixture, so
# a full run would start a second control plane.
def test_server_side_dry_run(control_plane: testenv.ControlPlane) -> None:
    api = Api(control_plane)
    (namespace,) = load("namespace.yaml")

    # The Namespace itself, then for real: namespaced dry runs need it to exist.
    assert api.dry_run(namespace)["metadata"]["name"] == NAMESPACE
    created = api.create(namespace)
    try:
        errors: list[str] = []
        skipped: list[str] = []
        for name in manifest_files():
            for obj in load(name):
                if obj["kind"] == "Namespace":
                    continue
                what = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
                if api.collection(obj) is None:
                    # KEDA's CRDs are not installed on the test plane: ScaledObject
                    # cannot be validated here (its fields are checked above).
                    assert obj["apiVersion"].startswith("keda.sh/"), what
                    skipped.append(what)
                    continue
                try:
                    answer = api.dry_run(obj)
                except testenv.ApiError as e:
                    errors.append(f"{what}: {e}")
                    continue
                assert answer["kind"] == obj["kind"], what
                assert answer["metadata"]["name"] == obj["metadata"]["name"], what
                assert "uid" in answer["metadata"], what  # defaulted server-side
        assert not errors, "\n".join(errors)
        assert skipped == ["keda-scaledobject.yaml: ScaledObject/scanward-worker"]

        # Pod Security "restricted" (namespace.yaml) is enforced on pods, so check the
        # pods themselves. The ServiceAccount admission wants the accounts to exist.
        accounts = [o for o in objects("rbac.yaml") if o["kind"] == "ServiceAccount"] or [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "scanward-worker", "namespace": NAMESPACE}}]
        for account in accounts:
            api.create(account)
        deadline = time.monotonic() + 60
        while True:  # "default", for the scanner pods, comes from the SA controller
            try:
                control_plane.request(
                    "GET", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default")
                break
            except testenv.ApiError as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        worker_pod = pod_of("scanward-worker-dryrun", worker()["spec"]["template"])
        api.dry_run(worker_pod)
        job = scanner_job()
        api.dry_run(job)
        api.dry_run(pod_of("scanner-dryrun", job["spec"]["template"]))

        # ...and the check has teeth: a pod that may escalate privileges is refused.
        loose = pod_of("loose-dryrun", worker()["spec"]["template"])
        loose["spec"]["containers"][0]["securityContext"] = {}
        with pytest.raises(testenv.ApiError) as refused:
            api.dry_run(loose)
        assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value)
    finally:
        if created:
            control_plane.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}")


# ------------------------------------------------------- what the files say vs. the code


def _comment_above(name: str, key: str) -> str:
    """The comment lines directly above ``key:`` in deploy/<name>, joined."""
    lines = (DEPLOY / name).read_text().splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")]
    block: list[str] = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        block.insert(0, line.strip().lstrip("#").strip())
    return " ".join(block)


def test_grace_period_comment_says_what_a_drain_does_to_jobs() -> None:
    """A worker whose drain runs out leaves its scanners' Jobs running for the next
    worker to adopt (activities/backends/__init__.py worker_leaving; checked for real by
    tests/test_kube_backend.py::test_a_deploy_leaves_the_job_running_for_the_next_worker).
    The comment said the cancellation deletes them, which sized the grace period on Job
    deletes that never happen and told operators a drained scan restarts from zero."""
    comment = re.sub(r"\s+", " ", _comment_above("worker.yaml",
                                                  "terminationGracePeriodSeconds"))
    assert "deletes their Jobs" not in comment and "Job delete" not in comment, comment
    assert "left running" in comment and "adopt" in comment, comment


def test_readme_memory_sizing_matches_the_policy() -> None:
    """deploy/README.md's sizing formula gives what size_resources gives (and so what
    the Job's memory request and limit say): it rounds up to 64 MiB, so a tiny checkout
    gets base + 64 MiB, not base."""
    from scanward.policy import size_resources

    readme = re.sub(r"\s+", " ", (DEPLOY / "README.md").read_text())
    spec = Catalog.load().get("bandit")
    small = size_resources(spec, 4096).memory_mib  # a one-file repository
    large = size_resources(spec, 3 << 30).memory_mib  # 3 GiB
    assert (small, large) == (spec.base.memory_mib + 64,
                              spec.base.memory_mib + 3 * spec.memory_mib_per_gib)
    assert "rounded up to a multiple of 64 MiB" in readme
    assert f"{spec.base.memory_mib + 64} MiB" in readme  # the worked small example
    assert f"{large} MiB" in readme  # the worked large example

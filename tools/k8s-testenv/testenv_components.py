"""The command lines of the plane's components (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok), and the kubeconfig and Node they use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testenv_kwok import KWOK_NODE_ANNOTATION, KWOK_NODE_SELECTOR, STAGES_FILE

# Controllers of kube-controller-manager that the test plane runs. Besides the
# ones tests use directly (Jobs, garbage collection, TTL after finished,
# service accounts and their tokens) a few are needed for the plane to work:
#  - node-lifecycle: the NodeRestriction/TaintNodesByCondition admission puts
#    node.kubernetes.io/not-ready:NoSchedule on every new Node; only this
#    controller removes it once kwok reports Ready, else nothing schedules.
#  - namespace: namespace deletion (per-test namespaces) never finishes without it.
#  - pod-garbage-collector: removes orphaned/terminated pods.
#  - root-ca-certificate-publisher: kube-root-ca.crt ConfigMap that the
#    ServiceAccount admission references in projected token volumes.
#  - persistentvolume(claim)-protection: the StorageObjectInUseProtection admission
#    (always on) puts a kubernetes.io/pv(c)-protection finalizer on every PV and
#    PVC; only these controllers remove it, so without them a deleted PVC (and
#    with it its namespace) or PV stays Terminating forever.
# Not on by default: persistentvolume-binder-controller (binds PVCs to PVs; pass
# it in `controllers=` when a test needs Bound claims, see PV_BINDER_SYNC_PERIOD).
DEFAULT_CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "node-lifecycle-controller",
    "namespace-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
)

# kube-controller-manager --pvclaimbinder-sync-period (default 15s). The binder
# handles a PV pre-bound to a claim (spec.claimRef) only from the claim's side;
# when the claim's event reaches it before the PV's informer has the PV, the
# claim stays Pending until the next periodic sync: ~15 s per namespace
# otherwise. Resyncing a handful of test objects every second costs nothing.
PV_BINDER_SYNC_PERIOD = "1s"

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


def etcd_args(binary: str, data_dir: Path, client_url: str, peer_url: str) -> list[str]:
    return [
        binary,
        "--name=testenv",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=testenv={peer_url}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync",  # test data: durability is irrelevant, speed is not
        "--log-level=warn",
    ]


def apiserver_args(
    binary: str,
    *,
    etcd_url: str,
    port: int,
    cert_dir: Path,
    token_file: Path,
    sa_key: Path,
    verbosity: int,
    extra: list[str],
) -> list[str]:
    return [
        binary,
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        # self-signed serving cert (+ its CA) generated into --cert-dir
        f"--cert-dir={cert_dir}",
        f"--token-auth-file={token_file}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={sa_key}",
        f"--service-account-signing-key-file={sa_key}",
        "--service-cluster-ip-range=10.96.0.0/16",
        # The "kubernetes" Service's endpoint would be the loopback advertise
        # address, which Endpoints validation rejects (error every 10s).
        # Nothing runs in-cluster here, so do not reconcile it.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        # On SIGTERM, end open watches (rate-limited drain, at most this long)
        # instead of leaving them to the HTTP server's 60 s shutdown timeout:
        # with kwok/scheduler/controller-manager still connected (see
        # restart_apiserver) the old process would otherwise take >15 s to exit.
        "--shutdown-watch-termination-grace-period=2s",
        "--profiling=false",
        f"--v={verbosity}",
        *extra,
    ]


def controller_manager_args(
    binary: str,
    *,
    kubeconfig: str,
    port: int,
    cert_dir: Path,
    controllers: list[str],
    sa_key: Path,
    root_ca: Path,
    verbosity: int,
) -> list[str]:
    return [
        *_secure_component_args(binary, kubeconfig=kubeconfig, port=port, cert_dir=cert_dir),
        f"--controllers={','.join(controllers)}",
        f"--pvclaimbinder-sync-period={PV_BINDER_SYNC_PERIOD}",
        f"--service-account-private-key-file={sa_key}",
        f"--root-ca-file={root_ca}",
        "--use-service-account-credentials=false",
        f"--v={verbosity}",
    ]


def scheduler_args(
    binary: str, *, kubeconfig: str, port: int, cert_dir: Path, verbosity: int
) -> list[str]:
    return [
        *_secure_component_args(binary, kubeconfig=kubeconfig, port=port, cert_dir=cert_dir),
        f"--v={verbosity}",
    ]


def _secure_component_args(binary: str, *, kubeconfig: str, port: int,
                           cert_dir: Path) -> list[str]:
    """What the controller-manager and the scheduler share: the admin kubeconfig for
    everything, a loopback serving port, no leader election (one of each)."""
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        # The apiserver has no client CA, so the kube-system/extension-
        # apiserver-authentication ConfigMap this would look up never
        # exists (one error log line per retry). Token review still works.
        "--authentication-skip-lookup=true",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        "--leader-elect=false",
    ]


def kwok_args(binary: str, *, kubeconfig: str) -> list[str]:
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        f"--config={STAGES_FILE}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_SELECTOR}",
        "--node-lease-duration-seconds=40",
        "--cidr=10.244.0.1/16",
        "--node-ip=10.243.0.1",
    ]


def admin_kubeconfig(server: str, ca_file: Path, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testenv",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "admin"}}],
        "current-context": "testenv",
    }


def node_manifest(name: str) -> dict[str, Any]:
    """The fake Node kwok manages (by its annotation); no taint, so pods schedule."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }


def node_schedulable(node: dict[str, Any]) -> bool:
    """Ready, and without a NoSchedule/NoExecute taint."""
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions", [])
    )
    blocking = [
        t
        for t in node.get("spec", {}).get("taints", [])
        if t.get("effect") in ("NoSchedule", "NoExecute")
    ]
    return ready and not blocking

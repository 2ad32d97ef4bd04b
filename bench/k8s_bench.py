"""scanward kubernetes-backend benchmark, in one run, against the real control plane
(tools/k8s-testenv: kube-apiserver/controller-manager/scheduler v1.35.4, etcd, kwok as
the kubelet) and a Temporal dev server, with the worker as a separate process.

1. API requests per single-scanner scan, counted by the API server itself: the
   apiserver runs with an audit policy (level Metadata for service-account users) and
   the worker authenticates as its own ServiceAccount (deploy/rbac.yaml, TokenRequest
   token in a kubeconfig of its own), so every audit event whose ``user.username`` is
   ``system:serviceaccount:<ns>:scanward-worker`` is one of the worker's requests.
   Short (1 s) and long (20 s) Jobs; cross-checked with the backend's client counters.
2. Latency from a Job's Complete condition, seen by an independent watch in this
   process (``time.time()`` when the watch event is read), to the workflow's next step,
   the ``ActivityTaskScheduled`` event of ``persist_results`` in its history
   (``event_time``, stamped by the dev server on the same machine's clock).
3. The worker's memory (RSS, PSS, USS) and threads while N scans wait on running Jobs,
   and its request rate to the apiserver while they wait.

    /tmp/venv/bin/python bench/k8s_bench.py --quick
    /tmp/venv/bin/python bench/k8s_bench.py            # 20 / 200 / 2000
    /tmp/venv/bin/python bench/k8s_bench.py --json out.json

Everything it starts (control plane, dev server, workers) it stops, on success, error,
^C or SIGTERM. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from scanward import client as api  # noqa: E402
from scanward.contract import ScanRequest, ScanStatus  # noqa: E402
from scanward.devserver import DevServer, free_port  # noqa: E402
from scanward.example import create_example_repo  # noqa: E402
from scanward.job_spec import (  # noqa: E402
    ANNOTATION_RESULTS,
    MANAGED_BY,
    MANAGER,
    SARIF_FILE,
    job_name,
)
from tests.k8s_fixture import (  # noqa: E402
    bound_claims,
    service_account_token,
    testenv,
    token_kubeconfig,
    wait_for_grants,
)

ACCOUNT = "scanward-worker"
RBAC_FILE = REPO / "deploy" / "rbac.yaml"
IMAGE = "registry.invalid/scanward/bench-scanner:1"
SELECTOR = urllib.parse.quote(f"{MANAGED_BY}={MANAGER}")
TARGET_REQUESTS = 3.0
TARGET_P99_MS = 1000.0
# Threads that may come and go without depending on the number of scans: asyncio's
# default executor (min(32, cpus + 4) threads, started on demand by to_thread) and
# ThreadedChildWatcher's one short-lived thread per running git process.
THREAD_SLACK = min(32, (os.cpu_count() or 1) + 4)

# What deploy/rbac.yaml grants, used only if that file does not exist.
FALLBACK_RULES = [
    {"apiGroups": ["batch"], "resources": ["jobs"],
     "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {message}",
          file=sys.stderr, flush=True)


# ----------------------------------------------------------------- control plane


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


AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # Only service-account identities (the workers): the control plane's own components
  # (admin token) would make the log large and the apiserver slower.
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


def ssl_context(plane: testenv.ControlPlane) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(plane.ca_file))


def create_bench_node(plane: testenv.ControlPlane, name: str) -> None:
    """A second kwok node with room for thousands of pods (testenv's has 110 pods,
    32 CPUs, 256 GiB)."""
    plane.request("POST", "/api/v1/nodes", {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name,
                     "annotations": {testenv.KWOK_NODE_ANNOTATION: "fake",
                                     "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "type": "kwok"}},
        "status": {"allocatable": {"cpu": "2000", "memory": "16Ti", "pods": "10000"},
                   "capacity": {"cpu": "2000", "memory": "16Ti", "pods": "10000"}},
    })
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        node = plane.request("GET", f"/api/v1/nodes/{name}")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in node.get("status", {}).get("conditions", []))
        taints = [t for t in node.get("spec", {}).get("taints", [])
                  if t.get("effect") in ("NoSchedule", "NoExecute")]
        if ready and not taints:
            return
        time.sleep(0.5)
    raise RuntimeError(f"node {name} not Ready and untainted after 90 s")


def rbac_objects(namespace: str) -> list[dict[str, Any]]:
    """deploy/rbac.yaml's ServiceAccount, Role, RoleBinding moved to ``namespace``."""
    if RBAC_FILE.exists():
        objects = [d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d]
    else:
        meta = {"name": ACCOUNT, "namespace": "scanward"}
        objects = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": dict(meta), "rules": FALLBACK_RULES},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": dict(meta),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": ACCOUNT},
             "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT,
                           "namespace": "scanward"}]},
        ]
    moved = []
    for obj in objects:
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = namespace
        for subject in obj.get("subjects") or []:
            subject["namespace"] = namespace
        moved.append(obj)
    return moved


COLLECTIONS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


def worker_namespace(plane: testenv.ControlPlane, name: str, workdir: Path) -> Path:
    """A namespace with bound claims and the worker's RBAC; returns a kubeconfig that
    authenticates as the namespace's scanward-worker ServiceAccount."""
    plane.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    bound_claims(plane, name)
    for obj in rbac_objects(name):
        plane.request("POST", COLLECTIONS[obj["kind"]].format(ns=name), obj)
    token = service_account_token(plane, name, ACCOUNT, seconds=6 * 3600)
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
    return f"system:serviceaccount:{namespace}:{ACCOUNT}"


# ------------------------------------------------------------------ bench's watches


class ListWatch:
    """The bench's own list+watch of one collection (admin token) in a thread, resuming
    from the last resourceVersion. ``handle(type, obj, seen)``; ``seen`` is time.time()
    right after the event's line was read."""

    def __init__(self, plane: testenv.ControlPlane, path: str,
                 handle: Callable[[str, dict[str, Any], float], None]) -> None:
        self._plane = plane
        self._path = path
        self._handle = handle
        self._ctx = ssl_context(plane)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"bench-watch{path}")
        self.synced = threading.Event()
        self.errors = 0
        self.streams = 0  # watch requests opened (a closed stream is resumed)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    body = self._plane.request("GET", f"{self._path}?labelSelector={SELECTOR}",
                                               timeout=120)
                    now = time.time()
                    for item in body.get("items") or []:
                        self._handle("LISTED", item, now)
                    version = body["metadata"]["resourceVersion"]
                    self.synced.set()
                url = (f"{self._plane.server}{self._path}?labelSelector={SELECTOR}&watch=true"
                       f"&allowWatchBookmarks=true&timeoutSeconds=120"
                       f"&resourceVersion={version}")
                req = urllib.request.Request(  # noqa: S310 - https URL of the plane
                    url, headers={"Authorization": f"Bearer {self._plane.token}"})
                self.streams += 1
                with urllib.request.urlopen(req, timeout=150, context=self._ctx) as r:  # noqa: S310
                    for line in r:
                        seen = time.time()
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            version = None  # 410 Gone: list again
                            break
                        version = obj["metadata"].get("resourceVersion", version)
                        if kind != "BOOKMARK":
                            self._handle(kind, obj, seen)
                        if self._stop.is_set():
                            break
            except (OSError, ValueError, urllib.error.URLError, testenv.ApiError):
                self.errors += 1
                self._stop.wait(0.5)


def _complete(job: dict[str, Any]) -> bool:
    return any(c.get("type") == "Complete" and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


class ClusterObserver:
    """Plays the pods' part (writes each new Job's SARIF where its pod would, like
    tests/test_kube_backend.py's PodStandIn), records when each Job's Complete condition
    was first seen, and counts each namespace's Running pods."""

    def __init__(self, plane: testenv.ControlPlane, results_root: Path) -> None:
        self._root = results_root
        self._lock = threading.Lock()
        self.jobs_seen: set[str] = set()
        self.complete_at: dict[str, float] = {}
        self.running: dict[str, set[str]] = {}  # namespace -> pod names Running
        self.sarif_written = 0
        self.jobs = ListWatch(plane, "/apis/batch/v1/jobs", self._on_job)
        self.pods = ListWatch(plane, "/api/v1/pods", self._on_pod)

    def start(self) -> None:
        self.jobs.start()
        self.pods.start()
        if not (self.jobs.synced.wait(60) and self.pods.synced.wait(60)):
            raise RuntimeError("the bench's job/pod watches did not sync in 60 s")

    def stop(self) -> None:
        self.jobs.stop()
        self.pods.stop()

    def _on_job(self, kind: str, job: dict[str, Any], seen: float) -> None:
        if kind == "DELETED":
            return
        name = job["metadata"]["name"]
        if _complete(job):
            with self._lock:
                self.complete_at.setdefault(name, seen)
        if name not in self.jobs_seen:
            self.jobs_seen.add(name)
            subpath = (job["metadata"].get("annotations") or {}).get(ANNOTATION_RESULTS)
            if subpath:
                self._write_sarif(name, subpath)

    def _write_sarif(self, name: str, subpath: str) -> None:
        out = self._root / subpath
        out.mkdir(parents=True, exist_ok=True)
        doc = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "bench-fake"}},
               "results": [{"ruleId": "BENCH001", "level": "warning",
                            "message": {"text": f"finding from {name}"},
                            "locations": [{"physicalLocation": {
                                "artifactLocation": {"uri": "/src/app.py"},
                                "region": {"startLine": 3}}}]}]}]}
        tmp = out / f".{SARIF_FILE}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(out / SARIF_FILE)
        self.sarif_written += 1

    def _on_pod(self, kind: str, pod: dict[str, Any], seen: float) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        with self._lock:
            running = self.running.setdefault(ns, set())
            if kind != "DELETED" and (pod.get("status") or {}).get("phase") == "Running":
                running.add(name)
            else:
                running.discard(name)

    def running_in(self, namespace: str) -> int:
        with self._lock:
            return len(self.running.get(namespace, ()))


# ------------------------------------------------------------------------ audit log


@dataclass
class AuditEvent:
    audit_id: str
    user: str
    user_agent: str
    verb: str
    resource: str
    namespace: str
    uri: str
    received: float
    code: int | None


class AuditLog:
    """The apiserver's audit log, read incrementally; one entry per request (auditID)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.events: dict[str, AuditEvent] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
            self._offset = f.tell()
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            e = json.loads(line)
            ref = e.get("objectRef") or {}
            resource = ref.get("resource", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            code = (e.get("responseStatus") or {}).get("code")
            known = self.events.get(e["auditID"])
            if known is not None:
                if code is not None:
                    known.code = code
                continue
            self.events[e["auditID"]] = AuditEvent(
                audit_id=e["auditID"], user=(e.get("user") or {}).get("username", ""),
                user_agent=e.get("userAgent", ""), verb=e.get("verb", ""),
                resource=resource, namespace=ref.get("namespace", ""),
                uri=e.get("requestURI", ""),
                received=datetime.fromisoformat(e["requestReceivedTimestamp"]).timestamp(),
                code=code)

    def of(self, user: str, start: float = 0.0, end: float = float("inf")) -> list[AuditEvent]:
        self.poll()
        return [e for e in self.events.values()
                if e.user == user and start <= e.received <= end]


PER_SCAN = ("create jobs", "get jobs", "delete jobs", "list pods (job-name)", "get pods/log")
WATCH = ("list jobs", "watch jobs", "list pods", "watch pods")


def classify(event: AuditEvent) -> str:
    kind = f"{event.verb} {event.resource}"
    if kind == "create jobs" and "dryRun" in event.uri:
        return "preflight (dry-run create)"
    if kind == "create selfsubjectaccessreviews":
        return "preflight (access review)"
    if kind == "list pods" and "job-name" in urllib.parse.unquote(event.uri):
        return "list pods (job-name)"
    return kind


def breakdown(events: Iterable[AuditEvent]) -> dict[str, int]:
    return dict(Counter(classify(e) for e in events))


# --------------------------------------------------------------------- worker procs


@dataclass
class WorkerProc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    counters_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    stopped_at: float = 0.0

    def start(self) -> None:
        self.started_at = time.time()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out,
                                         stderr=out, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "worker polling" in self.log_text():
                return
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.name} not ready after {timeout}s:\n"
                           f"{self.log_text()[-3000:]}")

    def counters(self, timeout: float = 10) -> dict[str, Any]:
        """Ask the counting worker (SIGUSR1) for its client-side counters."""
        if self.counters_path is None or self.proc is None or self.proc.poll() is not None:
            return {}
        before = self._read_counters().get("seq", 0)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self._read_counters()
            if data.get("seq", 0) > before:
                return data
            time.sleep(0.05)
        return {}

    def _read_counters(self) -> dict[str, Any]:
        assert self.counters_path is not None
        try:
            result: dict[str, Any] = json.loads(self.counters_path.read_text())
            return result
        except (OSError, ValueError):
            return {}

    def stop(self, timeout: float = 180) -> float:
        """SIGTERM (graceful shutdown), SIGKILL after ``timeout``; returns seconds taken."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"worker {self.name} did not stop in {timeout}s: SIGKILL")
            self.proc.kill()
            self.proc.wait(30)
        self.stopped_at = time.time()
        return time.monotonic() - started


def proc_memory(pid: int) -> dict[str, int]:
    """RSS and thread count from /proc/<pid>/status; PSS/USS from smaps_rollup (bytes)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            out["rss"] = int(value.split()[0]) * 1024
        elif key == "Threads":
            out["threads"] = int(value.strip())
    with contextlib.suppress(OSError):
        rollup: dict[str, int] = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                rollup[key.strip()] = int(parts[0]) * 1024
        out["pss"] = rollup.get("Pss", 0)
        out["uss"] = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    return out


def thread_names(pid: int) -> dict[str, int]:
    """Threads by name (/proc/<pid>/task/*/comm): Python 3.11 threads keep the process
    name, the Temporal core's tokio threads are "tokio-runtime-w"."""
    names: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            names[(task / "comm").read_text().strip()] += 1
    return dict(names)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------- helpers


def code_version() -> dict[str, str]:
    """The commit measured, and product files that differ from it (others edit them)."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                             text=True, check=False)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--short", "--", "worker.py", "activities", "workflows",
                         "scanward")}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def event_seconds(event: Any) -> float:
    return float(event.event_time.seconds + event.event_time.nanos / 1e9)


def kwok_complete(delay: str, jitter: str | None = None) -> dict[str, Any]:
    meta = testenv.job_complete_metadata(delay=delay, jitter=jitter)
    return {"pod_annotations": meta.get("annotations", {}),
            "pod_labels": meta.get("labels", {})}


def write_catalog(path: Path, scanners: dict[str, dict[str, Any]]) -> Path:
    entries = [{"name": name, "image": IMAGE, "command": ["scan", "{source}", "{sarif}"],
                "findings_exit_codes": [1], "bad_input_exit_codes": [2],
                "base": {"cpu_millis": 100, "memory_mib": 128}, **behaviour}
               for name, behaviour in scanners.items()]
    path.write_text(json.dumps({"scanners": entries}))
    return path


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    results: dict[str, Any] = field(default_factory=dict)
    plane: BenchPlane | None = None
    dev: DevServer | None = None
    observer: ClusterObserver | None = None
    audit: AuditLog | None = None
    workers: list[WorkerProc] = field(default_factory=list)
    client: Client | None = None
    repo: Path | None = None
    catalog_file: Path | None = None

    # ---------------------------------------------------------------- setup / teardown

    def setup(self) -> None:
        a = self.args
        (self.workdir / "results").mkdir(parents=True)
        (self.workdir / "workspace").mkdir(parents=True)
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        self.audit = AuditLog(self.workdir / "audit.log")
        t = time.monotonic()
        self.plane = BenchPlane(kcm_qps=a.kcm_qps, keep_workdir=a.keep, extra_apiserver_args=[
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit.path}",
            "--audit-log-maxsize=1000"])
        self.plane.start()
        log(f"control plane up in {time.monotonic() - t:.1f}s at {self.plane.server}")
        create_bench_node(self.plane, "bench-node-0")
        self.dev = DevServer(port=free_port(), ui_port=None,
                             log_file=self.workdir / "temporal.log")
        self.dev.start()
        os.environ["TEMPORAL_ADDRESS"] = self.dev.address
        os.environ["TEMPORAL_NAMESPACE"] = "default"
        self.repo = create_example_repo(self.workdir / "repo")
        self.catalog_file = write_catalog(self.workdir / "catalog.json", {
            "b-short": kwok_complete(f"{a.short_job_seconds}s"),
            "b-long": kwok_complete(f"{a.long_job_seconds}s"),
            "b-jitter": kwok_complete(f"{a.jitter_from}s", f"{a.jitter_to}s"),
            "b-hold": kwok_complete("7200s"),
        })
        self.observer = ClusterObserver(self.plane, self.workdir / "results")
        self.observer.start()

    async def connect(self) -> Client:
        if self.client is None:
            self.client = await api.connect()
        return self.client

    def teardown(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                taken = w.stop(timeout=self.args.worker_stop_timeout)
                if taken:
                    log(f"worker {w.name} stopped in {taken:.1f}s")
        if self.observer is not None:
            self.results["bench_watch_streams"] = {"jobs": self.observer.jobs.streams,
                                                   "pods": self.observer.pods.streams}
            self.observer.stop()
        if self.dev is not None:
            with contextlib.suppress(Exception):
                self.dev.stop()
        if self.plane is not None:
            with contextlib.suppress(Exception):
                self.plane.stop()
        log("control plane, dev server and workers stopped")

    # ------------------------------------------------------------------- workers

    def spawn_worker(self, name: str, namespace: str, *, counting: bool,
                     extra_env: dict[str, str] | None = None) -> WorkerProc:
        assert self.plane is not None and self.dev is not None
        kubeconfig = worker_namespace(self.plane, namespace, self.workdir)
        home = self.workdir / f"home-{name}"
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "PYTHONPATH": str(REPO),
            "TEMPORAL_ADDRESS": self.dev.address,
            "TEMPORAL_NAMESPACE": "default",
            "SCANWARD_HOME": str(home),
            "SCANWARD_WORKSPACE": str(self.workdir / "workspace"),
            "SCANWARD_RESULTS": str(self.workdir / "results"),
            "SCANWARD_DATABASE_URL": f"sqlite:///{home / 'scanward.db'}",
            "SCANWARD_TASK_QUEUE": f"bench-{name}-{uuid.uuid4().hex[:8]}",
            "SCANWARD_ALLOW_LOCAL_REPOS": "1",
            "SCANWARD_CATALOG": str(self.catalog_file),
            "SCANWARD_BACKEND": "kubernetes",
            "SCANWARD_KUBECONFIG": str(kubeconfig),
            "SCANWARD_KUBE_NAMESPACE": namespace,
            "SCANWARD_MAX_CONCURRENT_ACTIVITIES": str(self.args.max_concurrent_activities),
            "SCANWARD_GRACEFUL_SHUTDOWN_SECONDS": str(self.args.graceful_shutdown_seconds),
            **(extra_env or {}),
        }
        counters = self.workdir / f"counters-{name}.json" if counting else None
        if counters is not None:
            env["BENCH_COUNTERS_FILE"] = str(counters)
            argv = [sys.executable, str(REPO / "bench" / "counting_worker.py")]
        else:
            argv = [sys.executable, "-m", "worker"]
        w = WorkerProc(name, argv, env, self.workdir / f"worker-{name}.log", counters)
        self.workers.append(w)
        t = time.monotonic()
        w.start()
        w.wait_ready()
        log(f"worker {name} (pid {w.pid}, {' '.join(argv[1:])}) ready in "
            f"{time.monotonic() - t:.1f}s, namespace {namespace}, queue "
            f"{env['SCANWARD_TASK_QUEUE']}")
        return w

    def diag_env(self) -> dict[str, str]:
        """Diagnostic worker options (--diag-*), for both workers; none by default."""
        diag = {}
        if self.args.diag_max_cached_workflows is not None:
            diag["BENCH_MAX_CACHED_WORKFLOWS"] = str(self.args.diag_max_cached_workflows)
        if self.args.diag_unsandboxed:
            diag["BENCH_UNSANDBOXED"] = "1"
        return diag

    async def start_scans(self, w: WorkerProc, scanner: str, count: int) -> list[Any]:
        assert self.repo is not None and self.catalog_file is not None
        client = await self.connect()
        queue = w.env["SCANWARD_TASK_QUEUE"]
        gate = asyncio.Semaphore(self.args.start_concurrency)

        async def one() -> Any:
            request = ScanRequest(repository=self.repo.as_uri(), ref="main",  # type: ignore[union-attr]
                                  scanners=(scanner,), dedupe_key=uuid.uuid4().hex)
            async with gate:
                return await api.start_scan(client, request, task_queue=queue)

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def wait_results(self, handles: list[Any], limit: float) -> list[Any]:
        summaries = await asyncio.wait_for(
            asyncio.gather(*(h.result() for h in handles)), limit)
        bad = [s for s in summaries if s.status is not ScanStatus.COMPLETED]
        if bad:
            raise RuntimeError(f"{len(bad)} scans did not complete: {bad[0]}")
        return list(summaries)

    # --------------------------------------------------------- 1. requests per scan

    async def phase_requests(self, w: WorkerProc, namespace: str) -> None:
        assert self.audit is not None
        user = service_account_user(namespace)
        n = self.args.requests_scans
        rows = []
        for label, scanner, seconds in (
                ("short", "b-short", self.args.short_job_seconds),
                ("long", "b-long", self.args.long_job_seconds)):
            await asyncio.sleep(1.0)
            before = w.counters()
            t0 = time.time()
            handles = await self.start_scans(w, scanner, n)
            await self.wait_results(handles, limit=180 + 3 * seconds + n)
            await asyncio.sleep(1.5)  # anything trailing lands in the window
            t1 = time.time()
            after = w.counters()
            events = self.audit.of(user, t0, t1)
            counts = breakdown(events)
            per_scan = sum(counts.get(k, 0) for k in PER_SCAN)
            watch = sum(counts.get(k, 0) for k in WATCH)
            other = len(events) - per_scan - watch
            client_side: dict[str, Any] = {}
            if before and after:
                client_side = {
                    "backend_requests": after["requests"] - before["requests"],
                    "watch_lists": (after["jobs_lists"] + after["pods_lists"]
                                    - before["jobs_lists"] - before["pods_lists"]),
                    "watch_watches": (after["jobs_watches"] + after["pods_watches"]
                                      - before["jobs_watches"] - before["pods_watches"]),
                }
            row = {
                "job": label, "job_seconds": seconds, "scans": n,
                "window_seconds": round(t1 - t0, 1),
                "audit_total": len(events), "audit_by_kind": counts,
                "per_scan_requests": per_scan, "watch_requests": watch, "other": other,
                "requests_per_scan": round(len(events) / n, 3),
                "per_scan_requests_per_scan": round(per_scan / n, 3),
                "watch_requests_per_scan": round(watch / n, 3),
                "client_counters": client_side,
                "status_codes": dict(Counter(str(e.code) for e in events)),
            }
            rows.append(row)
            log(f"requests, {label} Job ({seconds}s): {len(events)} audit events for {n} "
                f"scans in {t1 - t0:.1f}s: {counts}; client counters {client_side}")
        life = self.audit.of(user, w.started_at, time.time())
        agents = sorted({e.user_agent for e in life})
        self.results["requests"] = {"user": user, "user_agents": agents, "rows": rows}

    # --------------------------------------------------------------- 2. latency

    async def phase_latency(self, w: WorkerProc, namespace: str) -> None:
        assert self.observer is not None and self.audit is not None
        n = self.args.scans_latency
        t0 = time.time()
        handles = await self.start_scans(w, "b-jitter", n)
        started = time.time()
        log(f"latency: {n} scans started in {started - t0:.1f}s")
        await self.wait_results(handles, limit=300 + self.args.jitter_to + 2 * n)
        t1 = time.time()
        log(f"latency: {n} scans completed in {t1 - t0:.1f}s")
        await asyncio.sleep(1.0)
        deltas, to_completed, to_schedule, missing = [], [], [], []
        spans = []
        for h in handles:
            name = job_name(h.id, "b-jitter", 1)
            seen = self.observer.complete_at.get(name)
            history = await h.fetch_history()
            types: dict[int, str] = {}
            scheduled_persist = completed_scanner = None
            for e in history.events:
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    kind = e.activity_task_scheduled_event_attributes.activity_type.name
                    types[e.event_id] = kind
                    if kind == "persist_results" and scheduled_persist is None:
                        scheduled_persist = event_seconds(e)
                elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                    sid = e.activity_task_completed_event_attributes.scheduled_event_id
                    if types.get(sid) == "run_scanner" and completed_scanner is None:
                        completed_scanner = event_seconds(e)
            if seen is None or scheduled_persist is None or completed_scanner is None:
                missing.append(h.id)
                continue
            deltas.append((scheduled_persist - seen) * 1000)
            to_completed.append((completed_scanner - seen) * 1000)
            to_schedule.append((scheduled_persist - completed_scanner) * 1000)
            spans.append(seen)

        def stats(values: list[float]) -> dict[str, float]:
            return {"p50": round(percentile(values, 0.50), 1),
                    "p90": round(percentile(values, 0.90), 1),
                    "p99": round(percentile(values, 0.99), 1),
                    "max": round(max(values), 1) if values else float("nan"),
                    "min": round(min(values), 1) if values else float("nan")}

        per_sec = Counter(int(s) for s in spans)
        user = service_account_user(namespace)
        events = self.audit.of(user, t0, t1)
        self.results["latency"] = {
            "scans": n, "measured": len(deltas), "missing": missing[:5],
            "complete_to_next_step_ms": stats(deltas),
            "complete_to_run_scanner_completed_ms": stats(to_completed),
            "run_scanner_completed_to_persist_scheduled_ms": stats(to_schedule),
            "completions_spread_seconds": round(max(spans) - min(spans), 1) if spans else 0,
            "max_completions_in_one_second": max(per_sec.values()) if per_sec else 0,
            "wall_seconds": round(t1 - t0, 1),
            "audit_requests": len(events), "audit_by_kind": breakdown(events),
            "requests_per_scan": round(len(events) / n, 3),
        }
        log(f"latency: {self.results['latency']}")

    # ------------------------------------------------------------------ 3. memory

    async def phase_memory(self, w: WorkerProc, namespace: str) -> None:
        assert self.observer is not None and self.audit is not None
        a = self.args
        n, warm = a.scans_memory, min(a.warmup, a.scans_memory)
        user = service_account_user(namespace)
        await asyncio.sleep(a.settle_seconds)
        idle = proc_memory(w.pid)
        log(f"memory: idle after start-up {idle}")

        async def wait_running(count: int) -> float:
            t = time.monotonic()
            deadline = t + 120 + 0.5 * count
            last, last_change = -1, t
            while True:
                running = self.observer.running_in(namespace)  # type: ignore[union-attr]
                if running >= count:
                    return time.monotonic() - t
                now = time.monotonic()
                if running != last:
                    last, last_change = running, now
                if now > deadline or now - last_change > 180:
                    raise RuntimeError(f"only {running}/{count} pods Running in {namespace} "
                                       f"after {now - t:.0f}s")
                if w.proc is None or w.proc.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{w.log_text()[-3000:]}")
                await asyncio.sleep(1.0)

        t0 = time.monotonic()
        handles = await self.start_scans(w, "b-hold", warm)
        took = await wait_running(warm)
        await asyncio.sleep(a.settle_seconds)
        warm_mem = proc_memory(w.pid)
        log(f"memory: {warm} waiting (Running after {took:.1f}s): {warm_mem}")
        # The rest in steps, each sampled once its pods are all Running: the slope per
        # step shows whether the cost per scan is flat (e.g. past the Temporal worker's
        # 1,000-workflow cache).
        steps = []
        targets = sorted({warm + round((n - warm) * k / a.memory_steps)
                          for k in range(1, a.memory_steps + 1)})
        have = warm
        for target in targets:
            t1 = time.monotonic()
            handles += await self.start_scans(w, "b-hold", target - have)
            started = time.monotonic() - t1
            took = await wait_running(target)
            await asyncio.sleep(a.settle_seconds)
            sample = proc_memory(w.pid)
            steps.append({"waiting": target, "start_seconds": round(started, 1),
                          "running_after_seconds": round(took + started, 1), **sample})
            log(f"memory: {target} waiting ({target - have} started in {started:.1f}s, all "
                f"Running {took + started:.1f}s after): {sample}")
            have = target
        full = proc_memory(w.pid)
        threads_by_name = thread_names(w.pid)
        starting = w.log_text().count("starting on kubernetes backend")
        log(f"memory: {n} waiting: {full}; run_scanner starts logged: {starting}")
        # The quiet window: everything waits; how much does the worker ask the apiserver?
        q0, c0 = time.time(), cpu_seconds(w.pid)
        samples = []
        while time.time() - q0 < a.quiet_seconds:
            await asyncio.sleep(min(5.0, a.quiet_seconds))
            samples.append(proc_memory(w.pid)["rss"])
        q1, c1 = time.time(), cpu_seconds(w.pid)
        quiet = self.audit.of(user, q0, q1)
        end = proc_memory(w.pid)
        end_threads = thread_names(w.pid)
        creates = sum(1 for e in self.audit.of(user) if classify(e) == "create jobs")
        denom = max(n - warm, 1)
        self.results["memory"] = {
            "scans": n, "warmup": warm,
            "idle": idle, "warm": warm_mem, "waiting": full, "after_quiet_window": end,
            "bytes_per_waiting_scan_rss": round((full["rss"] - warm_mem["rss"]) / denom),
            "bytes_per_waiting_scan_uss": round((full.get("uss", 0) - warm_mem.get("uss", 0))
                                                / denom),
            "bytes_per_waiting_scan_vs_idle_rss": round((full["rss"] - idle["rss"]) / n),
            "threads_idle": idle["threads"], "threads_warm": warm_mem["threads"],
            "threads_waiting": full["threads"],
            "threads_after_quiet_window": end["threads"],
            "threads_by_name_waiting": threads_by_name,
            "threads_by_name_after_quiet_window": end_threads,
            "steps": steps,
            "pods_running": self.observer.running_in(namespace),
            "run_scanner_started_logged": starting,
            "jobs_created_audit": creates,
            "seconds_to_all_running": round(time.monotonic() - t0, 1),
            "quiet_window_seconds": round(q1 - q0, 1),
            "quiet_requests": len(quiet), "quiet_by_kind": breakdown(quiet),
            "quiet_requests_per_second": round(len(quiet) / (q1 - q0), 4),
            "quiet_cpu_percent": round(100 * (c1 - c0) / (q1 - q0), 1),
            "rss_during_quiet_window": samples,
        }
        log(f"memory: {self.results['memory']}")
        del handles

    # ----------------------------------------------------------------------- run

    async def run(self) -> None:
        a = self.args
        self.results["config"] = {k: v for k, v in vars(a).items() if k != "json"}
        self.results["machine"] = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()}
        self.results["code"] = code_version()
        self.setup()
        try:
            if a.requests_scans or a.scans_latency:
                ns = f"bench-req-{uuid.uuid4().hex[:6]}"
                wa = self.spawn_worker("a", ns, counting=True, extra_env=self.diag_env())
                if a.requests_scans:
                    await self.phase_requests(wa, ns)
                self.results["machine"]["load_after_requests"] = os.getloadavg()
                if a.scans_latency:
                    await self.phase_latency(wa, ns)
                self.results["machine"]["load_after_latency"] = os.getloadavg()
                assert self.plane is not None
                self.results["terminated_watchers_after_a"] = terminated_watchers(self.plane)
                final = wa.counters()
                taken = wa.stop(a.worker_stop_timeout)
                assert self.audit is not None
                life = self.audit.of(service_account_user(ns), wa.started_at, wa.stopped_at)
                kinds = breakdown(life)
                scans = 2 * a.requests_scans + a.scans_latency
                watch = sum(kinds.get(k, 0) for k in WATCH)
                self.results["worker_a"] = {
                    "counters_at_end": final, "stop_seconds": round(taken, 1),
                    "audit_lifetime_by_kind": kinds, "scans": scans,
                    "lifetime_seconds": round(wa.stopped_at - wa.started_at, 1),
                    "watch_requests_lifetime": watch,
                    "watch_requests_per_scan_lifetime": round(watch / max(scans, 1), 4),
                    "requests_per_scan_lifetime": round(len(life) / max(scans, 1), 4),
                }
                log(f"worker a: {self.results['worker_a']}")
            if a.scans_memory:
                ns = f"bench-mem-{uuid.uuid4().hex[:6]}"
                diag = self.diag_env()
                wb = self.spawn_worker("b", ns, counting=bool(diag), extra_env=diag)
                await self.phase_memory(wb, ns)
                self.results["machine"]["load_after_memory"] = os.getloadavg()
                taken = wb.stop(a.worker_stop_timeout)
                assert self.audit is not None
                life = self.audit.of(service_account_user(ns), wb.started_at, wb.stopped_at)
                self.results["memory"]["worker_stop_seconds"] = round(taken, 1)
                self.results["memory"]["audit_lifetime_by_kind"] = breakdown(life)
                assert self.plane is not None
                self.results["terminated_watchers_at_end"] = terminated_watchers(self.plane)
                log(f"worker b (with {a.scans_memory} waiting) stopped in {taken:.1f}s; its "
                    f"requests over its life: {breakdown(life)}")
        finally:
            if self.client is not None:
                self.client = None
            self.teardown()


# ------------------------------------------------------------------------- report


def ratio(value: float, target: float) -> str:
    return f"{value / target:.2f}" if target else "-"


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []

    def row(metric: str, value: str, target: str = "", r: str = "", ok: str = "") -> None:
        lines.append(f"{metric:<58} {value:>22} {target:>12} {r:>7} {ok:>4}")

    row("metric", "value", "target", "ratio", "")
    row("-" * 58, "-" * 22, "-" * 12, "-" * 7, "-" * 4)
    req = results.get("requests")
    if req:
        for r in req["rows"]:
            v = r["requests_per_scan"]
            row(f"API requests/scan, {r['job_seconds']} s Job ({r['scans']} scans, audit)",
                f"{v:.2f}", f"<= {TARGET_REQUESTS:g}", ratio(v, TARGET_REQUESTS),
                "ok" if v <= TARGET_REQUESTS else "FAIL")
            row("  per-scan (create/get/delete jobs, list pods, logs)",
                f"{r['per_scan_requests_per_scan']:.2f} ({r['per_scan_requests']})")
            row("  shared watch (list/watch jobs+pods), amortised",
                f"{r['watch_requests_per_scan']:.2f} ({r['watch_requests']})")
            cc = r["client_counters"]
            if cc:
                row("  client counters: backend.requests / watch lists+watches",
                    f"{cc['backend_requests']} / {cc['watch_lists']}+{cc['watch_watches']}")
    wa = results.get("worker_a")
    if wa and wa.get("lifetime_seconds"):
        row(f"  shared watch over worker A's life ({wa['lifetime_seconds']:.0f} s, "
            f"{wa['scans']} scans)",
            f"{wa['watch_requests_per_scan_lifetime']:.3f} ({wa['watch_requests_lifetime']})")
        row("  all of worker A's requests / scan (incl. start-up)",
            f"{wa['requests_per_scan_lifetime']:.3f}", f"<= {TARGET_REQUESTS:g}",
            ratio(wa["requests_per_scan_lifetime"], TARGET_REQUESTS))
    if req:
        row("  audit identity (user / user agent)", "")
        lines.append(f"    {req['user']} / {', '.join(req['user_agents'])}")
    lat = results.get("latency")
    if lat:
        s = lat["complete_to_next_step_ms"]
        row(f"Complete -> persist_results scheduled, ms ({lat['measured']} scans)",
            f"p50 {s['p50']:.0f} p90 {s['p90']:.0f}", "", "", "")
        row("", f"p99 {s['p99']:.0f} max {s['max']:.0f}", f"p99 < {TARGET_P99_MS:g}",
            ratio(s["p99"], TARGET_P99_MS), "ok" if s["p99"] < TARGET_P99_MS else "FAIL")
        c = lat["complete_to_run_scanner_completed_ms"]
        row("  of which Complete -> run_scanner completed (p50/p99)",
            f"{c['p50']:.0f} / {c['p99']:.0f}")
        c = lat["run_scanner_completed_to_persist_scheduled_ms"]
        row("  of which -> persist_results scheduled (p50/p99)",
            f"{c['p50']:.0f} / {c['p99']:.0f}")
        row("  completions spread over s / max per second",
            f"{lat['completions_spread_seconds']:.0f} / "
            f"{lat['max_completions_in_one_second']}")
        row("  API requests/scan in this phase (audit)", f"{lat['requests_per_scan']:.2f}",
            f"<= {TARGET_REQUESTS:g}", ratio(lat["requests_per_scan"], TARGET_REQUESTS),
            "ok" if lat["requests_per_scan"] <= TARGET_REQUESTS else "FAIL")
    mem = results.get("memory")
    if mem:
        mib = 1024 * 1024
        row("worker RSS idle / warm / all waiting, MiB",
            f"{mem['idle']['rss'] / mib:.0f} / {mem['warm']['rss'] / mib:.0f} / "
            f"{mem['waiting']['rss'] / mib:.0f}")
        row("worker USS idle / warm / all waiting, MiB",
            f"{mem['idle'].get('uss', 0) / mib:.0f} / {mem['warm'].get('uss', 0) / mib:.0f}"
            f" / {mem['waiting'].get('uss', 0) / mib:.0f}")
        row(f"bytes per waiting scan, RSS ({mem['scans']} - {mem['warmup']} warm-up)",
            f"{mem['bytes_per_waiting_scan_rss']:,}")
        row("bytes per waiting scan, USS", f"{mem['bytes_per_waiting_scan_uss']:,}")
        for st in mem.get("steps", []):
            row(f"  RSS / USS MiB, threads at {st['waiting']} waiting",
                f"{st['rss'] / mib:.0f} / {st.get('uss', 0) / mib:.0f}, {st['threads']}")
        grow = mem["threads_after_quiet_window"] - mem["threads_warm"]
        row("worker threads idle / warm / all waiting / +quiet window",
            f"{mem['threads_idle']} / {mem['threads_warm']} / {mem['threads_waiting']} / "
            f"{mem['threads_after_quiet_window']}", "no growth", "",
            "ok" if grow <= THREAD_SLACK else "FAIL")
        row(f"worker -> apiserver req/s while {mem['scans']} wait "
            f"({mem['quiet_window_seconds']:.0f} s)",
            f"{mem['quiet_requests_per_second']:.3f} ({mem['quiet_requests']})", "~0")
        row("worker CPU while they wait", f"{mem['quiet_cpu_percent']:.1f} %")
        row("pods Running / run_scanner starts logged / Jobs created",
            f"{mem['pods_running']} / {mem['run_scanner_started_logged']} / "
            f"{mem['jobs_created_audit']}")
        if "worker_stop_seconds" in mem:
            row("worker graceful stop with all waiting, s", f"{mem['worker_stop_seconds']}")
    tw = results.get("terminated_watchers_at_end") or results.get("terminated_watchers_after_a")
    if tw is not None:
        row("apiserver_terminated_watchers_total (all clients) jobs / pods",
            f"{tw.get('jobs', 0):.0f} / {tw.get('pods', 0):.0f}")
        bw = results.get("bench_watch_streams", {})
        row("  bench's own watch streams opened jobs / pods",
            f"{bw.get('jobs', 0)} / {bw.get('pods', 0)}")
    diag = {k: v for k, v in results.get("config", {}).items()
            if k.startswith("diag_") and v not in (None, False)}
    if diag:
        lines.append(f"DIAGNOSTIC worker options (not the product's defaults): {diag}")
    m = results.get("machine", {})
    loads = " ".join(f"{k.replace('load_', '')}={v[0]:.2f}" for k, v in m.items()
                     if k.startswith("load_"))
    code = results.get("code", {})
    lines.append(f"\nproduct code at {code.get('commit')}"
                 + (f" with local changes: {code['dirty']}" if code.get("dirty") else ""))
    lines.append(f"{m.get('cpus')} CPUs; load avg (1 min) {loads}; wall "
                 f"{results.get('wall_seconds', 0):.0f} s")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--requests-scans", type=int, default=20,
                   help="scans per Job duration in the request-count phase (0 skips it)")
    p.add_argument("--scans-latency", type=int, default=200,
                   help="scans in the latency phase (0 skips it)")
    p.add_argument("--scans-memory", type=int, default=2000,
                   help="scans waiting at once in the memory phase (0 skips it)")
    p.add_argument("--warmup", type=int, default=50,
                   help="waiting scans before the memory baseline")
    p.add_argument("--quick", action="store_true",
                   help="small sizes: 5 / 20 / 100 scans, 10 warm-up")
    p.add_argument("--short-job-seconds", type=int, default=1)
    p.add_argument("--long-job-seconds", type=int, default=20)
    p.add_argument("--jitter-from", type=int, default=10,
                   help="latency Jobs' pods complete after a random delay in [from, to) s")
    p.add_argument("--jitter-to", type=int, default=40)
    p.add_argument("--memory-steps", type=int, default=4,
                   help="the scans after the warm-up are started in this many steps")
    p.add_argument("--settle-seconds", type=float, default=10.0,
                   help="pause before each memory sample")
    p.add_argument("--quiet-seconds", type=float, default=30.0,
                   help="window for the request rate while all scans wait")
    p.add_argument("--start-concurrency", type=int, default=32,
                   help="start_workflow calls in flight")
    p.add_argument("--max-concurrent-activities", type=int, default=5000)
    p.add_argument("--graceful-shutdown-seconds", type=int, default=10,
                   help="SCANWARD_GRACEFUL_SHUTDOWN_SECONDS of the workers")
    p.add_argument("--worker-stop-timeout", type=float, default=240.0)
    p.add_argument("--kcm-qps", type=int, default=100,
                   help="controller-manager --kube-api-qps (0: testenv's default, 20)")
    p.add_argument("--diag-max-cached-workflows", type=int, default=None, metavar="N",
                   help="diagnostics: workers built with max_cached_workflows=N (the memory "
                        "phase then runs bench/counting_worker.py, not python -m worker)")
    p.add_argument("--diag-unsandboxed", action="store_true",
                   help="diagnostics: workers with UnsandboxedWorkflowRunner")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, audit)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="also write the results as JSON to FILE (or stdout)")
    a = p.parse_args(argv)
    if a.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        if "--requests-scans" not in given:
            a.requests_scans = 5
        if "--scans-latency" not in given:
            a.scans_latency = 20
        if "--scans-memory" not in given:
            a.scans_memory = 100
        if "--warmup" not in given:
            a.warmup = 10
        if "--settle-seconds" not in given:
            a.settle_seconds = 5.0
        if "--quiet-seconds" not in given:
            a.quiet_seconds = 10.0
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="scanward-bench-"))
    bench = Bench(args, workdir)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    log(f"bench work dir {workdir}; uptime: "
        f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    failed: BaseException | None = None
    try:
        asyncio.run(bench.run())
    except BaseException as e:  # report what was measured, then fail
        failed = e
        bench.results["error"] = f"{type(e).__name__}: {e}"
        log(f"bench failed: {type(e).__name__}: {e}")
    bench.results["wall_seconds"] = round(time.monotonic() - started, 1)
    bench.results["machine"]["load_at_end"] = os.getloadavg()
    print(table(bench.results))
    if args.json:
        text = json.dumps(bench.results, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.keep or failed is not None:
        log(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed is not None else 0


if __name__ == "__main__":
    sys.exit(main())

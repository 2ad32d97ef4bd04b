"""``scanward load --kube KUBECONFIG``: the load's worker process runs the kubernetes job
backend against that cluster, so every scanner attempt is a batch/v1 Job there.

The worker runs on this machine and shares the workspace and results volumes with the
Jobs' pods (``--kube-workspace``/``--kube-results``: where this machine mounts the
claims' volumes). On a real cluster the synthetic scanner runs in its container. On
the test control plane (tools/k8s-testenv: kwok plays the kubelet, no container runs)
``--kube-stand-in`` plays each pod (:mod:`scanward.load.stand_in`). There the ``mixed``
scenario adds ``oom_then_ok`` scans: OOM-killed at their first memory limit, completed
with the doubled one; :func:`oom_report` checks the doubling from their histories.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from scanward.catalog import Catalog
from scanward.contract import ScannerJobInput
from scanward.load.report import ScanRecord
from scanward.load.scenarios import OOM_THEN_OK
from scanward.load.stand_in import HOLD, KubeconfigApi, PodStandIn, synthetic_player
from scanward.policy import size_resources

DEFAULT_NAMESPACE = "scanward"
OOM_SHARE = 0.1  # mixed's default share of oom_then_ok scans with --kube
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class KubeOptionError(ValueError):
    """A ``--kube*`` option that cannot work; one line naming it."""


@dataclass(frozen=True)
class KubeTarget:
    """The cluster the load's worker runs its Jobs on."""

    kubeconfig: Path  # the worker's identity: deploy/rbac.yaml's Role is enough
    namespace: str = DEFAULT_NAMESPACE
    context: str | None = None
    workspace: Path | None = None  # this machine's mount of the workspace claim's volume
    results: Path | None = None  # ... and of the results claim's
    stand_in: Path | None = None  # a kubeconfig that may patch pods: play them (kwok)


def target(kubeconfig: Path | None, *, namespace: str | None = None,
           context: str | None = None, workspace: Path | None = None,
           results: Path | None = None, stand_in: Path | None = None) -> KubeTarget | None:
    """The target the ``--kube*`` options describe (None without ``--kube``), checked."""
    if kubeconfig is None:
        given = [option for option, value in (
            ("--kube-namespace", namespace), ("--kube-context", context),
            ("--kube-workspace", workspace), ("--kube-results", results),
            ("--kube-stand-in", stand_in)) if value is not None]
        if given:
            raise KubeOptionError(f"{', '.join(given)}: needs --kube KUBECONFIG (the cluster "
                                  "the worker runs its Jobs on)")
        return None
    for option, path in (("--kube", kubeconfig), ("--kube-stand-in", stand_in)):
        if path is not None and not path.is_file():
            raise KubeOptionError(f"{option} {path}: no such kubeconfig file")
    for option, path in (("--kube-workspace", workspace), ("--kube-results", results)):
        if path is not None and not path.is_dir():
            raise KubeOptionError(f"{option} {path}: not a directory (where this machine "
                                  "mounts the claim's volume)")
    namespace = namespace or DEFAULT_NAMESPACE
    if not _DNS_LABEL.fullmatch(namespace):
        raise KubeOptionError(f"--kube-namespace {namespace!r}: expected a DNS label "
                              "(lowercase letters, digits and '-'), like scanward")
    return KubeTarget(kubeconfig, namespace, context, workspace, results, stand_in)


def worker_env(kube: KubeTarget, home: Path, scanners: Iterable[str]) -> dict[str, str]:
    """The worker's kubernetes settings, volumes and catalog (the synthetic scanner under
    each of ``scanners``' names; held for the stand-in when there is one)."""
    workspace = kube.workspace or home / "worker" / "workspace"
    results = kube.results or home / "worker" / "results"
    spec = Catalog.load().get("synthetic")
    annotations = {**spec.pod_annotations, **(HOLD if kube.stand_in else {})}
    catalog = home / "kube-catalog.json"
    catalog.write_text(json.dumps({"scanners": [
        spec.model_copy(update={"name": name, "pod_annotations": annotations}
                        ).model_dump(mode="json") for name in scanners]}))
    env = {"SCANWARD_BACKEND": "kubernetes",
           "SCANWARD_KUBECONFIG": str(kube.kubeconfig.resolve()),
           "SCANWARD_KUBE_NAMESPACE": kube.namespace,
           "SCANWARD_WORKSPACE": str(workspace),
           "SCANWARD_RESULTS": str(results),
           "SCANWARD_CATALOG": str(catalog)}
    if kube.context:
        env["SCANWARD_KUBE_CONTEXT"] = kube.context
    return env


def start_stand_in(kube: KubeTarget, env: dict[str, str]) -> Callable[[], None]:
    """Play the pods of the worker's Jobs (``env`` from :func:`worker_env`); returns
    what stops it. Fails at once, saying why, if its identity cannot list the Jobs."""
    if kube.stand_in is None:
        raise KubeOptionError("no --kube-stand-in kubeconfig")
    api = KubeconfigApi(str(kube.stand_in))
    try:
        api.request("GET", f"/apis/batch/v1/namespaces/{kube.namespace}/jobs?limit=1")
    except Exception as e:
        api.close()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"--kube-stand-in {kube.stand_in}: cannot list Jobs in namespace "
                           f"{kube.namespace!r}: {first}") from e
    stand_in = PodStandIn(api, kube.namespace, Path(env["SCANWARD_RESULTS"]),
                          synthetic_player(Path(env["SCANWARD_WORKSPACE"]))).start()

    def stop() -> None:
        stand_in.stop()
        api.close()

    return stop


def oom_memory_mib() -> int:
    """What an ``oom_then_ok`` scan holds: half again the synthetic scanner's first
    memory limit, so the first attempt is OOM-killed and the doubled second one has
    room to spare (for the interpreter, on a real cluster)."""
    first = size_resources(Catalog.load().get("synthetic"), 0).memory_mib
    return first * 3 // 2


def attempt_memory(history: WorkflowHistory) -> dict[str, list[int]]:
    """Each scanner's memory limit (MiB) per attempt, in order, from the run_scanner
    activities the workflow scheduled."""
    memory: dict[str, list[int]] = {}
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        scheduled = event.activity_task_scheduled_event_attributes
        if scheduled.activity_type.name != "run_scanner":
            continue
        job = ScannerJobInput.model_validate_json(scheduled.input.payloads[0].data)
        memory.setdefault(job.scanner, []).append(job.resources.memory_mib)
    return memory


def oom_report(records: Iterable[ScanRecord], histories: Iterable[WorkflowHistory]
               ) -> tuple[dict[str, Any], str]:
    """For the ``oom_then_ok`` scans: how many completed, each one's memory per attempt,
    and how many had every scanner's second attempt at twice the first's memory."""
    by_id = {h.workflow_id: h for h in histories}
    scans = [r for r in records if r.kind == OOM_THEN_OK]
    memory = {r.scan_id: attempt_memory(by_id[r.scan_id]) for r in scans if r.scan_id in by_id}
    doubled = [scan for scan, runs in memory.items()
               if runs and all(len(m) >= 2 and m[1] == 2 * m[0] for m in runs.values())]
    completed = sum(r.outcome == "completed" for r in scans)
    seen = sorted({" → ".join(map(str, m)) for runs in memory.values() for m in runs.values()})
    note = (f"oom_then_ok: {completed} of {len(scans)} scan(s) completed after an OOM kill; "
            f"memory per attempt (MiB): {', '.join(seen) or '-'}; doubled on the retry in "
            f"{len(doubled)} of {len(scans)}")
    return ({"scans": len(scans), "completed": completed, "doubled": len(doubled),
             "memory_mib_by_attempt": memory}, note)

"""Pure construction of a scanner's batch/v1 Job manifest (a plain dict, as the API
server takes it), and of its deterministic name. No I/O: tests call it directly, and the
server-side dry-run test validates every spec it can build."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from scanward.catalog import ScannerSpec
from scanward.contract import ScannerJobInput

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "scanward"
LABEL_SCAN = "scanward.dev/scan"  # a hash: label values are limited to 63 characters
LABEL_SCANNER = "scanward.dev/scanner"
LABEL_ATTEMPT = "scanward.dev/attempt"
# The workflow run the Job belongs to (a hash): a scan id started again after a cancel or
# a failure is a new run, whose attempt 1 must not adopt the earlier run's Job.
LABEL_RUN = "scanward.dev/run"
ANNOTATION_SCAN_ID = "scanward.dev/scan-id"
ANNOTATION_WORKFLOW = "scanward.dev/workflow-id"
ANNOTATION_RESULTS = "scanward.dev/results-subpath"
ANNOTATION_TRACEPARENT = "scanward.dev/traceparent"
# A catalog entry whose image has no /bin/sh sets this pod annotation to "false": its
# command then runs as is, and only an attempt that crashed or was OOM-killed gets a log
# (its pod's, read from the API).
ANNOTATION_TEE_LOG = "scanward.dev/tee-log"
CONTAINER = "scanner"
SOURCE_MOUNT = "/src"
RESULTS_MOUNT = "/results"
SARIF_FILE = "results.sarif"
LOG_FILE = "scanner.log"  # the attempt's output, next to its SARIF (both backends)
EXIT_CODE_FILE = "/tmp/.scanward-exit-code"  # noqa: S108 - the pod's own emptyDir

# The scanner's command runs under this POSIX sh script (busybox ash, dash, bash), so that
# its output goes both to the pod's log and to the attempt's scanner.log on the results
# volume: every attempt keeps its log with no API request. Arguments: the log file, the
# file carrying the scanner's exit code out of the pipeline (no pipefail in POSIX sh),
# then the scanner's argv. The container exits with the scanner's own code, so the
# podFailurePolicy's exit-code rules still apply. SIGTERM (the Job deleted) is passed to
# the scanner and tee rather than ignored by a shell that runs as PID 1. Without tee in
# the image the command runs unwrapped.
TEE_LOG_SCRIPT = """\
log=$1 code=$2; shift 2
command -v tee >/dev/null 2>&1 || exec "$@"
trap 'trap "" TERM; kill -TERM 0 2>/dev/null' TERM
{ "$@" 2>&1; echo $? >"$code"; } | tee -a "$log" &
wait $!
wait
read -r rc 2>/dev/null <"$code" || rc=143
exit "$rc"
"""

# podFailurePolicy rule order: the Job's failure message names the matching rule's
# index, which is how the backend tells "findings" from "bad input" without reading pods.
RULE_FINDINGS = 1
RULE_BAD_INPUT = 2


@dataclass(frozen=True)
class KubeJobConfig:
    """Per-cluster settings of the Jobs a worker creates."""

    namespace: str = "scanward"
    workspace_claim: str = "scanward-workspace"
    results_claim: str = "scanward-results"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    ttl_seconds_after_finished: int = 3600
    default_deadline_seconds: int = 3600
    run_as_user: int = 65532
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)


def job_name(scan_id: str, scanner: str, attempt: int) -> str:
    """Deterministic, DNS-1123 and at most 63 characters (the ``job-name`` pod label):
    creating it twice names the same Job."""
    digest = hashlib.sha256(scan_id.encode()).hexdigest()[:12]
    if len(scanner) > 30:  # cut, and told apart from others cut the same (names go to 32)
        scanner = f"{scanner[:21]}-{hashlib.sha256(scanner.encode()).hexdigest()[:8]}"
    return f"sw-{digest}-{scanner}-a{attempt}"


def run_label(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:40]


def scan_label(scan_id: str) -> str:
    return hashlib.sha256(scan_id.encode()).hexdigest()[:40]


def results_subpath(job: ScannerJobInput) -> str:
    """The attempt's directory on the results volume; the same layout as the local
    backend's results directory."""
    return f"{job.scan_id}/{job.scanner}/attempt-{job.attempt}"


def tee_log_command(command: list[str], log: str = f"{RESULTS_MOUNT}/{LOG_FILE}",
                    exit_code_file: str = EXIT_CODE_FILE) -> list[str]:
    """``command`` wrapped by :data:`TEE_LOG_SCRIPT`."""
    return ["/bin/sh", "-c", TEE_LOG_SCRIPT, "scanward", log, exit_code_file, *command]


def build_job(job: ScannerJobInput, spec: ScannerSpec, cfg: KubeJobConfig, *,
              deadline_seconds: int | None = None,
              env: dict[str, str] | None = None,
              run_id: str | None = None) -> dict[str, Any]:
    """The Job manifest for one attempt of one scanner (of workflow run ``run_id``)."""
    sarif = f"{RESULTS_MOUNT}/{SARIF_FILE}"
    command = [a.format(source=SOURCE_MOUNT, sarif=sarif) for a in spec.command]
    if spec.pod_annotations.get(ANNOTATION_TEE_LOG, "true").lower() != "false":
        command = tee_log_command(command)
    labels = {
        MANAGED_BY: MANAGER,
        LABEL_SCAN: scan_label(job.scan_id),
        LABEL_SCANNER: job.scanner,
        LABEL_ATTEMPT: str(job.attempt),
        **({LABEL_RUN: run_label(run_id)} if run_id else {}),
    }
    annotations = {
        ANNOTATION_SCAN_ID: job.scan_id,
        ANNOTATION_WORKFLOW: job.scan_id,
        ANNOTATION_RESULTS: results_subpath(job),
    }
    all_env = {**cfg.extra_env, **(env or {})}
    if "TRACEPARENT" in all_env:
        annotations[ANNOTATION_TRACEPARENT] = all_env["TRACEPARENT"]
    memory = f"{job.resources.memory_mib}Mi"
    findings_codes = sorted(spec.findings_exit_codes)
    bad_input_codes = sorted(spec.bad_input_exit_codes)
    rules: list[dict[str, Any]] = [
        # 0: evictions, preemption, node drain: not the scanner's fault, not counted.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        # 1: "ran and found something": the backend reads this as success.
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER,
                                              "operator": "In",
                                              "values": findings_codes or [255]}},
        # 2: the scanner rejected its input: retrying cannot fix it.
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER,
                                              "operator": "In",
                                              "values": bad_input_codes or [254]}},
    ]
    if not findings_codes:
        rules[RULE_FINDINGS] = {**rules[RULE_FINDINGS], "action": "Count"}
    if not bad_input_codes:
        rules[RULE_BAD_INPUT] = {**rules[RULE_BAD_INPUT], "action": "Count"}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "command": command,
        "workingDir": SOURCE_MOUNT,
        "env": [{"name": k, "value": v} for k, v in sorted(all_env.items())],
        "resources": {
            "requests": {"cpu": f"{job.resources.cpu_millis}m", "memory": memory},
            "limits": {"memory": memory},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True,
             "subPath": job.checkout.source_subpath},
            {"name": "results", "mountPath": RESULTS_MOUNT, "subPath": results_subpath(job)},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's
        ],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": cfg.run_as_user,
            "runAsGroup": cfg.run_as_user,
            "fsGroup": cfg.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "source", "persistentVolumeClaim": {"claimName": cfg.workspace_claim,
                                                         "readOnly": True}},
            {"name": "results", "persistentVolumeClaim": {"claimName": cfg.results_claim}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    if cfg.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in cfg.image_pull_secrets]
    if cfg.node_selector:
        pod_spec["nodeSelector"] = dict(cfg.node_selector)
    if cfg.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in cfg.tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(job.scan_id, job.scanner, job.attempt),
            "namespace": cfg.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            # Retries are the workflow's: each attempt is its own Job, sized anew.
            "backoffLimit": 0,
            "podFailurePolicy": {"rules": rules},
            "activeDeadlineSeconds": deadline_seconds or cfg.default_deadline_seconds,
            "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
            "template": {
                "metadata": {
                    "labels": {**labels, **spec.pod_labels},
                    "annotations": {**annotations, **spec.pod_annotations},
                },
                "spec": pod_spec,
            },
        },
    }

"""The pod metadata kwok's stages (kwok-stages.yaml) act on, and the test Jobs that
carry it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STAGES_FILE = Path(__file__).resolve().parent / "kwok-stages.yaml"

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_SELECTOR = f"{KWOK_NODE_ANNOTATION}=fake"

# Pod metadata understood by the stages in kwok-stages.yaml.
COMPLETE_DELAY_ANNOTATION = "pod-complete.stage.kwok.x-k8s.io/delay"
COMPLETE_JITTER_ANNOTATION = "pod-complete.stage.kwok.x-k8s.io/jitter-delay"
FAIL_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
FAIL_EXIT_CODE_ANNOTATION = "pod-container-running-failed.stage.kwok.x-k8s.io/exit-code"
FAIL_DELAY_ANNOTATION = "pod-container-running-failed.stage.kwok.x-k8s.io/delay"
FAIL_REASON_ANNOTATION = "pod-container-running-failed.stage.kwok.x-k8s.io/reason"
FAIL_MESSAGE_ANNOTATION = "pod-container-running-failed.stage.kwok.x-k8s.io/message"


def job_complete_metadata(delay: str = "1s", jitter: str | None = None) -> dict[str, Any]:
    """Pod template metadata: kwok completes the pod (exit 0) after `delay`."""
    ann = {COMPLETE_DELAY_ANNOTATION: delay}
    if jitter:
        ann[COMPLETE_JITTER_ANNOTATION] = jitter
    return {"annotations": ann}


def job_fail_metadata(
    exit_code: int = 1, delay: str = "1s", reason: str = "Error", message: str | None = None
) -> dict[str, Any]:
    """Pod template metadata: kwok fails the container with `exit_code` after `delay`."""
    ann = {
        FAIL_EXIT_CODE_ANNOTATION: str(exit_code),
        FAIL_DELAY_ANNOTATION: delay,
        FAIL_REASON_ANNOTATION: reason,
    }
    if message:
        ann[FAIL_MESSAGE_ANNOTATION] = message
    return {"labels": {FAIL_LABEL: "true"}, "annotations": ann}


def job_manifest(name: str, pod_metadata: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A Job of one pod, which kwok plays (no namespace: the collection path gives it)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": pod_metadata,
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "example.invalid/scanner:1", "command": ["scan"]}
                    ],
                },
            },
        },
    }


def has_condition(job: dict[str, Any], ctype: str) -> bool:
    """Whether the Job has condition `ctype` with status True."""
    return any(
        c.get("type") == ctype and c.get("status") == "True"
        for c in job.get("status", {}).get("conditions", [])
    )

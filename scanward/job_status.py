"""Pure reading of Job and Pod status (API JSON dicts) into outcomes and failure
classes. No I/O: the watcher and the backend feed it what the API server said."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from scanward.catalog import ScannerSpec
from scanward.contract import FailureClass
from scanward.job_spec import CONTAINER, RULE_BAD_INPUT, RULE_FINDINGS

# Waiting reasons after which a pod will not start by itself: the image is wrong.
BAD_IMAGE_REASONS = frozenset({"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
_RULE_INDEX = re.compile(r"rule at index (\d+)")

SUCCEEDED = "Succeeded"
DELETED = "Deleted"
BAD_IMAGE = "BadImage"


@dataclass(frozen=True)
class JobOutcome:
    """A Job's end as the watch saw it: the terminal condition's reason and message, or
    ``Deleted`` (gone before it finished), or ``BadImage`` (from its pod)."""

    name: str
    reason: str
    message: str = ""

    @property
    def succeeded(self) -> bool:
        return self.reason == SUCCEEDED


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def terminal_outcome(job: dict[str, Any]) -> JobOutcome | None:
    """The Job's outcome once it has a terminal condition (``Complete``/``Failed``;
    ``FailureTarget`` is not terminal yet: pods may still be running)."""
    name = job["metadata"]["name"]
    for cond in _conditions(job):
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return JobOutcome(name, SUCCEEDED, cond.get("message") or "")
        if cond.get("type") == "Failed":
            return JobOutcome(name, cond.get("reason") or "Failed", cond.get("message") or "")
    return None


def pod_bad_image(pod: dict[str, Any]) -> str | None:
    """A message if the pod's container cannot start because of its image."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in BAD_IMAGE_REASONS:
            image = status.get("image", "")
            return f"{waiting['reason']}: {image}: {waiting.get('message', '')}".strip(": ")
    return None


def classify(outcome: JobOutcome, spec: ScannerSpec,
             pods: list[dict[str, Any]] | None = None) -> tuple[FailureClass | None, str]:
    """``(None, "")`` when the attempt succeeded (including "exited with a findings
    code"), else the failure class and a message. ``pods`` (the Job's pods) are only
    needed for ``BackoffLimitExceeded``, to tell an OOM kill from a crash."""
    if outcome.succeeded:
        return None, ""
    if outcome.reason == "PodFailurePolicy":
        m = _RULE_INDEX.search(outcome.message)
        index = int(m.group(1)) if m else -1
        if index == RULE_FINDINGS:
            return None, ""
        if index == RULE_BAD_INPUT:
            return FailureClass.BAD_INPUT, outcome.message
        return FailureClass.CRASHED, outcome.message
    if outcome.reason == "DeadlineExceeded":
        return FailureClass.DEADLINE_EXCEEDED, outcome.message or "Job was active longer than "\
            "its activeDeadlineSeconds"
    if outcome.reason == BAD_IMAGE:
        return FailureClass.BAD_IMAGE, outcome.message
    if outcome.reason == DELETED:
        return FailureClass.CRASHED, "the Job was deleted before it finished"
    return _classify_pods(spec, pods or [], outcome)


def _classify_pods(spec: ScannerSpec, pods: list[dict[str, Any]],
                   outcome: JobOutcome) -> tuple[FailureClass | None, str]:
    for pod in pods:
        if any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
               for c in _conditions(pod)):
            return FailureClass.EVICTED, f"pod {pod['metadata']['name']} was disrupted"
        if (pod.get("status") or {}).get("reason") == "Evicted":
            return FailureClass.EVICTED, (pod.get("status") or {}).get("message", "evicted")
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != CONTAINER:
                continue
            term = (status.get("state") or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                return FailureClass.OOM_KILLED, (
                    f"container {CONTAINER} OOMKilled (exit {term.get('exitCode')})")
            code = term.get("exitCode")
            if isinstance(code, int):
                if code == 0 or code in spec.findings_exit_codes:
                    return None, ""
                if code in spec.bad_input_exit_codes:
                    return FailureClass.BAD_INPUT, f"{spec.name} exited {code}"
                return FailureClass.CRASHED, f"{spec.name} exited {code}"
    return FailureClass.CRASHED, f"{outcome.reason}: {outcome.message}".strip(": ")

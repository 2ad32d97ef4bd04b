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
    # Why its pod had not started when the Job ended (it was never scheduled, say), as
    # :func:`pod_pending_reason` words it; None once a pod ran, or when none was seen.
    pending: str | None = None
    had_pod: bool = True  # whether the watch saw a pod of the Job at all

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
             pods: list[dict[str, Any]] | None = None, *,
             create_error: str | None = None) -> tuple[FailureClass | None, str]:
    """``(None, "")`` when the attempt succeeded (including "exited with a findings
    code"), else the failure class and a message. ``pods`` (the Job's pods) are only
    needed for ``BackoffLimitExceeded``, to tell an OOM kill from a crash;
    ``create_error`` (its FailedCreate event) words a deadline of a Job with no pod."""
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
        return FailureClass.DEADLINE_EXCEEDED, deadline_message(outcome, create_error)
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
                deleted = (pod.get("metadata") or {}).get("deletionTimestamp")
                if deleted:
                    # Someone deleted the pod (kubectl delete pod, a drain without the
                    # eviction API): the kubelet stopped the scanner. Not its fault.
                    return FailureClass.CRASHED, (
                        f"pod {pod['metadata'].get('name')} was deleted at {deleted} while "
                        f"{spec.name} ran (exit {code})")
                return FailureClass.CRASHED, f"{spec.name} exited {code}"
    if outcome.pending and BEING_DELETED in outcome.pending:
        deleted = outcome.pending.replace(f"{BEING_DELETED} (since", "was deleted (at")
        return FailureClass.CRASHED, f"{deleted} before it ended ({outcome.reason})"
    return FailureClass.CRASHED, f"{outcome.reason}: {outcome.message}".strip(": ")


# ------------------------------------------------- a Job whose pod does not start

NOT_SCHEDULED = "not scheduled: "
BEING_DELETED = "is being deleted"
# Container waiting reasons on the way to running: not worth saying while they last.
_STARTING = frozenset({"ContainerCreating", "PodInitializing"})
# A LimitRange's refusal ("maximum memory usage per Container is 1Gi, but limit is 2Gi"):
# the same pod is refused every time.
_LIMIT_RANGE = re.compile(r"(maximum|minimum) \S+ usage per (Container|Pod) is|"
                          r"must be less than or equal to \S+ limit")
# A ResourceQuota's: "exceeded quota: q, requested: limits.memory=2Gi, used:
# limits.memory=0, limited: limits.memory=1Gi".
_QUOTA = re.compile(r"exceeded quota: [^,]+, requested: (?P<requested>.*?), used: "
                    r"(?P<used>.*?), limited: (?P<limited>[^;]*)")
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_UNITS = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
          "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}


def pod_pending_reason(pod: dict[str, Any]) -> str | None:
    """Why the pod has not started, in one line, or None when it runs or ended (or is
    still only being created): not scheduled (the scheduler's message: no node with
    enough memory, a selector or taint nothing matches, a missing claim), a container
    that cannot be created; or, for a pod that ran, that it is being deleted before it
    ended (:data:`BEING_DELETED`: what a pod held by a lost node says for ever)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return _deleting(meta)  # ended because it was deleted, or not
    for cond in _conditions(pod):
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            why = _one_line(cond.get("message") or "") or cond.get("reason") or "pending"
            return f"{NOT_SCHEDULED}{why}"
    for c in status.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting and waiting.get("reason") not in _STARTING:
            return (f"container {c.get('name')} waiting: {waiting.get('reason')}: "
                    f"{_one_line(waiting.get('message') or '')}").strip(": ")
    return _deleting(meta)


def _deleting(meta: dict[str, Any]) -> str | None:
    if meta.get("deletionTimestamp"):
        return f"pod {meta.get('name')} {BEING_DELETED} (since {meta['deletionTimestamp']})"
    return None


def failed_create_message(events: list[dict[str, Any]]) -> str | None:
    """The latest ``FailedCreate`` event's message among a Job's events (the Job
    controller could not create its pod: a quota, a LimitRange, an admission webhook),
    without the pod's generated name; None if there is none."""
    failed = [e for e in events if e.get("reason") == "FailedCreate"]
    if not failed:
        return None
    latest = max(failed, key=lambda e: (e.get("lastTimestamp") or e.get("eventTime")
                                        or (e.get("metadata") or {}).get("creationTimestamp")
                                        or ""))
    message = _one_line(latest.get("message") or "")
    return re.sub(r'^Error creating: pods "[^"]*" is ', "pod ", message)


def create_refused_for_good(message: str) -> bool:
    """Whether a pod refused with ``message`` (a FailedCreate's) will be refused again
    whatever else runs: a LimitRange's bound, or a ResourceQuota whose hard limit is
    below what the pod alone requests. A quota filled by other pods frees up: not that."""
    if _LIMIT_RANGE.search(message):
        return True
    m = _QUOTA.search(message)
    if not m:
        return False
    requested, limited = _pairs(m.group("requested")), _pairs(m.group("limited"))
    return any(key in requested and requested[key] > value for key, value in limited.items())


def deadline_message(outcome: JobOutcome, create_error: str | None = None) -> str:
    """Why a Job ended by its ``activeDeadlineSeconds``: a scanner that ran too long, or
    a pod that never started (named with what kept it, which a bare "deadline exceeded"
    hid), or no pod at all (the Job controller's ``create_error``, when read)."""
    ran = outcome.message or "Job was active longer than its activeDeadlineSeconds"
    if outcome.pending and BEING_DELETED in outcome.pending:
        return ran  # a pod that ran, deleted: by the deadline itself, or by someone
    if outcome.pending and outcome.pending.startswith(NOT_SCHEDULED):
        return f"never scheduled: {outcome.pending.removeprefix(NOT_SCHEDULED)} ({ran})"
    if outcome.pending:
        return f"never started: {outcome.pending} ({ran})"
    if not outcome.had_pod:
        return (f"no pod was created: {create_error or 'no FailedCreate event found'} "
                f"({ran})")
    return ran


_WAITING = re.compile(r"^(?P<who>.+?) waiting \d+s: (?P<why>.+)$", re.DOTALL)


def waiting_detail(scanner: str, attempt: int, waited: float, why: str) -> str:
    """A waiting attempt's heartbeat detail, as the Web UI and `scanward status` show
    it: ``k attempt 1 waiting 40s: not scheduled: ...``."""
    return f"{scanner} attempt {attempt} waiting {waited:.0f}s: {why}"


def read_waiting_detail(detail: str) -> tuple[str, str] | None:
    """A :func:`waiting_detail` line as (``k attempt 1``, why); None if it is not one."""
    m = _WAITING.match(detail)
    return (m.group("who"), m.group("why")) if m else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _pairs(text: str) -> dict[str, float]:
    """``limits.memory=2Gi,pods=1`` as numbers (unparseable values left out)."""
    pairs = {}
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        m = _QUANTITY.match(value.strip())
        if key and m and m.group(2) in _UNITS:
            pairs[key] = float(m.group(1)) * _UNITS[m.group(2)]
    return pairs

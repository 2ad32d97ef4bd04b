"""Pure reading of why a scanner Job's pod has not started (scanward/job_status.py): the
pod's scheduling condition, its FailedCreate events, whether a refusal is for good, and
the dead reason of a Job ended by its deadline. tests/test_kube_failure_modes.py runs the
same cases end to end on the real control plane."""

from __future__ import annotations

from typing import Any

import pytest

from scanward.catalog import Catalog
from scanward.cli.progress import waiting_notes
from scanward.contract import FailureClass
from scanward.job_status import (
    JobOutcome,
    classify,
    create_refused_for_good,
    deadline_message,
    failed_create_message,
    pod_pending_reason,
)

BANDIT = Catalog.load().get("bandit")
UNSCHEDULABLE = ("0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are "
                 "available: 3 Preemption is not helpful for scheduling.")
DEADLINE = "Job was active longer than specified deadline"


def pod(name: str = "p", deleted: str | None = None, **status: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleted:
        meta["deletionTimestamp"] = deleted
    return {"metadata": meta, "status": status}


def unscheduled(message: str = UNSCHEDULABLE) -> dict[str, Any]:
    return pod(phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": message}])


def test_pending_reason_names_the_schedulers_message() -> None:
    assert pod_pending_reason(unscheduled()) == f"not scheduled: {UNSCHEDULABLE}"
    # Multi-line messages are one line.
    assert pod_pending_reason(unscheduled("a\n  b")) == "not scheduled: a b"
    # Being deleted does not hide why it never ran.
    never = unscheduled()
    never["metadata"]["deletionTimestamp"] = "t"
    assert pod_pending_reason(never) == f"not scheduled: {UNSCHEDULABLE}"


def test_pending_reason_is_none_while_it_runs_or_starts() -> None:
    assert pod_pending_reason(pod(phase="Running", conditions=[
        {"type": "PodScheduled", "status": "True"}])) is None
    assert pod_pending_reason(pod(phase="Pending", containerStatuses=[
        {"name": "scanner", "state": {"waiting": {"reason": "ContainerCreating"}}}])) is None
    assert pod_pending_reason(pod(phase="Succeeded")) is None
    assert pod_pending_reason({}) is None


def test_pending_reason_names_a_container_that_cannot_start() -> None:
    waiting = pod(phase="Pending", containerStatuses=[{"name": "scanner", "state": {
        "waiting": {"reason": "CreateContainerConfigError",
                    "message": 'secret "x" not found'}}}])
    assert pod_pending_reason(waiting) == (
        'container scanner waiting: CreateContainerConfigError: secret "x" not found')


def test_pending_reason_names_a_pod_being_deleted() -> None:
    running = pod("p1", deleted="2026-11-29T02:00:00Z", phase="Running")
    assert pod_pending_reason(running) == (
        "pod p1 is being deleted (since 2026-11-29T02:00:00Z)")
    # Ended by the kubelet after the delete: still said (it words the crash).
    assert pod_pending_reason(pod("p1", deleted="t", phase="Failed")) == (
        "pod p1 is being deleted (since t)")


def event(message: str, at: str, reason: str = "FailedCreate") -> dict[str, Any]:
    return {"reason": reason, "message": message, "lastTimestamp": at}


def test_failed_create_message_is_the_latest_without_the_pods_name() -> None:
    events = [
        event('Error creating: pods "j-abcde" is forbidden: exceeded quota: q, old', "2"),
        event('Error creating: pods "j-fghij" is forbidden: exceeded quota: q, new', "3"),
        event("Created pod: j-x", "4", reason="SuccessfulCreate"),
    ]
    assert failed_create_message(events) == "pod forbidden: exceeded quota: q, new"
    assert failed_create_message([event("x", "1", reason="SuccessfulCreate")]) is None
    assert failed_create_message([]) is None


@pytest.mark.parametrize(("message", "for_good"), [
    ("pod forbidden: maximum memory usage per Container is 1Gi, but limit is 2Gi", True),
    ("pod forbidden: minimum cpu usage per Pod is 100m, but request is 50m", True),
    # The pod alone asks for more than the quota allows: refused whatever else ends.
    ("pod forbidden: exceeded quota: q, requested: limits.memory=2Gi, used: "
     "limits.memory=0, limited: limits.memory=1Gi", True),
    ("pod forbidden: exceeded quota: q, requested: requests.cpu=64,pods=1, used: "
     "requests.cpu=0,pods=0, limited: requests.cpu=32,pods=10", True),
    # Full because of other pods: frees up when they end.
    ("pod forbidden: exceeded quota: q, requested: pods=1, used: pods=10, limited: pods=10",
     False),
    ("pod forbidden: exceeded quota: q, requested: limits.memory=512Mi, used: "
     "limits.memory=900Mi, limited: limits.memory=1Gi", False),
    ('admission webhook "x" denied the request: try later', False),
    ("pod forbidden: exceeded quota: q, requested: x=what, used: x=0, limited: x=1", False),
])
def test_refused_for_good(message: str, for_good: bool) -> None:
    assert create_refused_for_good(message) is for_good


def test_deadline_message_says_what_kept_the_pod() -> None:
    never = JobOutcome("j", "DeadlineExceeded", DEADLINE,
                       pending=f"not scheduled: {UNSCHEDULABLE}")
    assert deadline_message(never) == f"never scheduled: {UNSCHEDULABLE} ({DEADLINE})"
    stuck = JobOutcome("j", "DeadlineExceeded", DEADLINE,
                       pending="container scanner waiting: CreateContainerConfigError: x")
    assert deadline_message(stuck).startswith("never started: container scanner waiting")
    no_pod = JobOutcome("j", "DeadlineExceeded", DEADLINE, had_pod=False)
    assert deadline_message(no_pod, "pod forbidden: exceeded quota: q") == (
        f"no pod was created: pod forbidden: exceeded quota: q ({DEADLINE})")
    assert "no FailedCreate event found" in deadline_message(no_pod)
    # A scanner that ran too long (its pod deleted by the deadline): as before.
    ran = JobOutcome("j", "DeadlineExceeded", DEADLINE, pending="pod p is being deleted (since t)")
    assert deadline_message(ran) == DEADLINE
    assert deadline_message(JobOutcome("j", "DeadlineExceeded", DEADLINE)) == DEADLINE
    assert classify(never, BANDIT) == (FailureClass.DEADLINE_EXCEEDED,
                                       deadline_message(never))


def test_a_pod_deleted_while_it_ran_is_a_crash_that_says_so() -> None:
    killed = pod("p1", deleted="t", phase="Failed", containerStatuses=[
        {"name": "scanner", "state": {"terminated": {"reason": "Error", "exitCode": 143}}}])
    assert classify(JobOutcome("j", "BackoffLimitExceeded"), BANDIT, [killed]) == (
        FailureClass.CRASHED, "pod p1 was deleted at t while bandit ran (exit 143)")
    # Its pod already gone when the pods are read: the watch's word for it.
    gone = JobOutcome("j", "BackoffLimitExceeded", "Job has reached the specified backoff "
                      "limit", pending="pod p1 is being deleted (since t)")
    assert classify(gone, BANDIT, []) == (
        FailureClass.CRASHED, "pod p1 was deleted (at t) before it ended (BackoffLimitExceeded)")


def test_scan_wait_announces_each_wait_once_and_again_when_it_changes() -> None:
    said: dict[str, str] = {}
    first = ("k attempt 1 waiting 3s: not scheduled: 0/3 nodes are available",
             "j attempt 2 waiting 40s: no pod yet: pod forbidden: exceeded quota: q")
    assert waiting_notes(said, first) == [
        "k attempt 1 is waiting: not scheduled: 0/3 nodes are available",
        "j attempt 2 is waiting: no pod yet: pod forbidden: exceeded quota: q"]
    later = ("k attempt 1 waiting 13s: not scheduled: 0/3 nodes are available",
             "j attempt 2 waiting 50s: no pod yet: pod forbidden: exceeded quota: r")
    assert waiting_notes(said, later) == [
        "j attempt 2 is waiting: no pod yet: pod forbidden: exceeded quota: r"]
    assert waiting_notes(said, ()) == []  # both started
    assert waiting_notes(said, first[:1]) == [  # waits again: said again
        "k attempt 1 is waiting: not scheduled: 0/3 nodes are available"]
    assert waiting_notes(said, ("not a heartbeat line",)) == []

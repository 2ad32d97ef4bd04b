"""Pure Job-spec building and Job/Pod status classification (no cluster needed; the
server-side dry-run test validates the same specs against a real API server)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from scanward.catalog import Catalog
from scanward.contract import Checkout, FailureClass, Resources, ScannerJobInput
from scanward.job_spec import (
    LABEL_SCAN,
    RULE_BAD_INPUT,
    RULE_FINDINGS,
    KubeJobConfig,
    build_job,
    job_name,
)
from scanward.job_status import (
    BAD_IMAGE,
    DELETED,
    JobOutcome,
    classify,
    pod_bad_image,
    terminal_outcome,
)

BANDIT = Catalog.load().get("bandit")
TRIVY = Catalog.load().get("trivy")
SCAN = "scan-acme-0123456789abcdef0123"


def job_input(attempt: int = 1, memory: int = 512, scan_id: str = SCAN) -> ScannerJobInput:
    return ScannerJobInput(
        scan_id=scan_id, scanner="bandit", attempt=attempt,
        checkout=Checkout(scan_id=scan_id, source_subpath=f"{scan_id}/src", commit="a" * 40,
                          size_bytes=10, file_count=1),
        resources=Resources(cpu_millis=250, memory_mib=memory))


def test_name_is_deterministic_and_a_dns_label() -> None:
    long_scan = "scan-" + "t" * 63 + "-0123456789abcdef0123"
    for scan_id, scanner, attempt in ((SCAN, "bandit", 1), (long_scan, "x" * 32, 999)):
        name = job_name(scan_id, scanner, attempt)
        assert name == job_name(scan_id, scanner, attempt)
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert job_name(SCAN, "bandit", 1) != job_name(SCAN, "bandit", 2)


def test_spec_carries_identity_sizing_and_hardening() -> None:
    job = build_job(job_input(attempt=2, memory=768), BANDIT, KubeJobConfig(namespace="ns"),
                    deadline_seconds=900, env={"TRACEPARENT": "00-abc-def-01"})
    meta, spec = job["metadata"], job["spec"]
    assert meta["namespace"] == "ns" and meta["labels"]["scanward.dev/attempt"] == "2"
    assert len(meta["labels"][LABEL_SCAN]) <= 63
    assert meta["annotations"]["scanward.dev/scan-id"] == SCAN
    assert spec["activeDeadlineSeconds"] == 900 and spec["backoffLimit"] == 0
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "250m", "memory": "768Mi"},
                                      "limits": {"memory": "768Mi"}}
    assert container["command"][-2:] == ["-o", "/results/results.sarif"]
    assert {"name": "TRACEPARENT", "value": "00-abc-def-01"} in container["env"]
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_failure_policy_rule_indices_are_stable() -> None:
    rules = build_job(job_input(), BANDIT, KubeJobConfig())["spec"]["podFailurePolicy"]["rules"]
    assert rules[RULE_FINDINGS]["action"] == "FailJob"
    assert rules[RULE_FINDINGS]["onExitCodes"]["values"] == [1]
    assert rules[RULE_BAD_INPUT]["onExitCodes"]["values"] == [2]
    # trivy declares neither: the rules keep their places but only count.
    rules = build_job(job_input(), TRIVY, KubeJobConfig())["spec"]["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["Ignore", "Count", "Count"]


def _job(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "j"}, "status": {"conditions": conditions}}


def test_terminal_outcome_waits_for_failed_not_failure_target() -> None:
    assert terminal_outcome(_job([])) is None
    assert terminal_outcome(_job([{"type": "FailureTarget", "status": "True"}])) is None
    done = terminal_outcome(_job([{"type": "Complete", "status": "True"}]))
    assert done is not None and done.succeeded
    failed = terminal_outcome(_job([{"type": "Failed", "status": "True",
                                     "reason": "DeadlineExceeded", "message": "too long"}]))
    assert failed == JobOutcome("j", "DeadlineExceeded", "too long")


def _pod(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": status}


def _terminated(reason: str, code: int) -> dict[str, Any]:
    return {"containerStatuses": [{"name": "scanner",
                                   "state": {"terminated": {"reason": reason,
                                                            "exitCode": code}}}]}


RULE_MSG = ("Container scanner for pod ns/p failed with exit code {} matching FailJob rule "
            "at index {}")


@pytest.mark.parametrize(
    ("outcome", "pods", "expected"),
    [
        (JobOutcome("j", "Succeeded"), None, None),
        (JobOutcome("j", "PodFailurePolicy", RULE_MSG.format(1, RULE_FINDINGS)), None, None),
        (JobOutcome("j", "PodFailurePolicy", RULE_MSG.format(2, RULE_BAD_INPUT)), None,
         FailureClass.BAD_INPUT),
        (JobOutcome("j", "DeadlineExceeded", "x"), None, FailureClass.DEADLINE_EXCEEDED),
        (JobOutcome("j", BAD_IMAGE, "ImagePullBackOff"), None, FailureClass.BAD_IMAGE),
        (JobOutcome("j", DELETED), None, FailureClass.CRASHED),
        (JobOutcome("j", "BackoffLimitExceeded"), [_pod(**_terminated("OOMKilled", 137))],
         FailureClass.OOM_KILLED),
        (JobOutcome("j", "BackoffLimitExceeded"), [_pod(**_terminated("Error", 3))],
         FailureClass.CRASHED),
        (JobOutcome("j", "BackoffLimitExceeded"),
         [_pod(reason="Evicted", message="node low on memory")], FailureClass.EVICTED),
        (JobOutcome("j", "BackoffLimitExceeded"),
         [_pod(conditions=[{"type": "DisruptionTarget", "status": "True"}])],
         FailureClass.EVICTED),
        (JobOutcome("j", "BackoffLimitExceeded"), [], FailureClass.CRASHED),
    ],
)
def test_classify(outcome: JobOutcome, pods: list[dict[str, Any]] | None,
                  expected: FailureClass | None) -> None:
    failure, message = classify(outcome, BANDIT, pods)
    assert failure is expected
    assert (message == "") == (expected is None)


def test_bad_image_is_read_from_the_pod() -> None:
    pod = _pod(containerStatuses=[{"name": "scanner", "image": "nope:1", "state": {
        "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}}}])
    assert pod_bad_image(pod) == "ImagePullBackOff: nope:1: Back-off pulling"
    transient = _pod(containerStatuses=[{"name": "scanner", "state": {
        "waiting": {"reason": "ErrImagePull"}}}])
    assert pod_bad_image(transient) is None  # the kubelet retries that one


def test_long_scanner_names_cut_to_the_same_prefix_stay_apart() -> None:
    """Scanner names go to 32 characters, Job names keep 30 of them: two that share
    those 30 named the same Job, and one scanner went dead ("not created by scanward for
    this attempt"). Names of 30 characters or less are as they always were."""
    a, b = "longscanner-name-for-collision-a", "longscanner-name-for-collision-b"
    assert job_name(SCAN, a, 1) != job_name(SCAN, b, 1)
    assert len(job_name(SCAN, a, 1)) <= 63
    digest = hashlib.sha256(SCAN.encode()).hexdigest()[:12]
    assert job_name(SCAN, "x" * 30, 7) == f"sw-{digest}-{'x' * 30}-a7"

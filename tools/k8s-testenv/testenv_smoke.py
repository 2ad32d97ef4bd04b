"""The plane's self-test (`testenv.py smoke`): a completing and a failing Job played by
kwok, and a service-account token checked by RBAC."""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

from testenv_errors import ApiError, ControlPlaneError
from testenv_kwok import has_condition, job_complete_metadata, job_fail_metadata, job_manifest
from testenv_plane import ControlPlane


def smoke(cp: ControlPlane) -> None:
    """Prints what it checked; raises ControlPlaneError (or ApiError) when a check fails."""
    ns = "/apis/batch/v1/namespaces/default/jobs"
    version = cp.request("GET", "/version")
    print(f"apiserver version: {version.get('gitVersion')} ({version.get('goVersion')})")
    print(
        f"started in {cp.timings['start']:.2f}s: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in cp.timings.items() if k != "start")
    )

    job, dt = _run_job(cp, ns, job_manifest("smoke-complete",
                                           job_complete_metadata(delay="1s")))
    if not has_condition(job, "Complete"):
        raise ControlPlaneError(f"smoke-complete did not complete: {job.get('status')}")
    print(
        f"job smoke-complete: Complete after {dt:.2f}s (pod asked kwok for 1s), "
        f"succeeded={job['status'].get('succeeded')}"
    )

    job, dt = _run_job(cp, ns, job_manifest(
        "smoke-fail",
        job_fail_metadata(exit_code=3, delay="1s"),
        podFailurePolicy={
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]},
                }
            ]
        },
    ))
    failed = next(
        c
        for c in job["status"].get("conditions", [])
        if c["type"] == "Failed" and c["status"] == "True"
    )
    pods = cp.request(
        "GET",
        "/api/v1/namespaces/default/pods?labelSelector="
        + urllib.parse.quote("batch.kubernetes.io/job-name=smoke-fail"),
    )
    codes = [
        cs["state"]["terminated"]["exitCode"]
        for p in pods["items"]
        for cs in p.get("status", {}).get("containerStatuses", [])
        if "terminated" in cs.get("state", {})
    ]
    if 3 not in codes:
        raise ControlPlaneError(f"expected a container exit code 3, got {codes}")
    print(
        f"job smoke-fail: Failed after {dt:.2f}s reason={failed.get('reason')} "
        f"message={failed.get('message')!r} pod exit codes={codes}"
    )

    # A bound service-account token from the TokenRequest API, checked by RBAC.
    t = time.monotonic()
    cp.request(
        "POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "smoke-sa"}}
    )
    tr = cp.request(
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/smoke-sa/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    sa_token = tr["status"]["token"]
    pods_path = "/api/v1/namespaces/default/pods"
    try:
        cp.request("GET", pods_path, token=sa_token)
        raise ControlPlaneError("service account could list pods without any RBAC grant")
    except ApiError as e:
        if e.status != 403:
            raise
    cp.request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    cp.request(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        {
            "metadata": {"name": "smoke-sa-pod-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "smoke-sa", "namespace": "default"}],
        },
    )
    deadline = time.monotonic() + 10
    while True:  # the RBAC authorizer sees the binding through an informer: retry briefly
        try:
            n = len(cp.request("GET", pods_path, token=sa_token)["items"])
            break
        except ApiError as e:
            if e.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    print(
        f"service account token: 403 before RoleBinding, list pods ({n}) after; "
        f"{time.monotonic() - t:.2f}s"
    )


def _run_job(cp: ControlPlane, ns: str, manifest: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Create a Job, wait until it completes or fails: (the Job, seconds it took)."""
    t = time.monotonic()
    cp.request("POST", ns, manifest)
    job = cp.wait_for(
        ns,
        manifest["metadata"]["name"],
        lambda j: has_condition(j, "Complete") or has_condition(j, "Failed"),
        timeout=60,
    )
    return job, time.monotonic() - t

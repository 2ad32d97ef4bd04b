"""The ``kubernetes`` job backend: one batch/v1 Job per (scan, scanner, attempt).

Cheap for the API server: a successful attempt costs one request (the create); its end
arrives through the worker's shared watch, and the Job removes itself
(``ttlSecondsAfterFinished``). Failed attempts read their pods once to say why. The SARIF
is read from the results volume, never from the pod's output; so is the attempt's log,
which the pod tees into ``scanner.log`` there (``job_spec.TEE_LOG_SCRIPT``): only an
image without a shell makes a failed attempt read its pod's log through the API, saved
to ``scanner.log`` so that every attempt has the same layout as with the local backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from temporalio import activity
from urllib3.exceptions import HTTPError

from activities.backends import (
    Heartbeat,
    ScannerFailed,
    heartbeat_once,
    wait_heartbeating,
    worker_leaving,
)
from activities.backends.job_watch import JobTracker
from scanward.attempt_logs import read_tail, with_log_tail
from scanward.catalog import Catalog, ScannerSpec
from scanward.contract import (
    Checkout,
    FailureClass,
    Resources,
    ScannerJobInput,
    ScannerJobResult,
)
from scanward.job_spec import (
    CONTAINER,
    LABEL_ATTEMPT,
    LABEL_RUN,
    LABEL_SCAN,
    LABEL_SCANNER,
    LOG_FILE,
    MANAGED_BY,
    MANAGER,
    SARIF_FILE,
    SOURCE_MOUNT,
    KubeJobConfig,
    build_job,
    job_name,
    results_subpath,
    scan_label,
)
from scanward.job_status import (
    BAD_IMAGE,
    BEING_DELETED,
    NOT_SCHEDULED,
    classify,
    create_refused_for_good,
    failed_create_message,
    waiting_detail,
)
from scanward.tracing import traceparent_env

log = logging.getLogger("scanward.kube")


# What the backend does with the API, and so what deploy/rbac.yaml grants:
# (API group, resource, subresource, verb).
REQUIRED_PERMISSIONS = (
    *(("batch", "jobs", "", verb) for verb in ("create", "get", "list", "watch", "delete")),
    *(("", "pods", "", verb) for verb in ("list", "watch")),
    ("", "pods", "log", "get"),
    ("", "events", "", "list"),
)


class ClusterError(Exception):
    """The cluster cannot be used as configured (unreachable, forbidden, no namespace)."""


@dataclass(frozen=True)
class KubeSettings:
    """Which cluster a worker serves and how its Jobs look."""

    kubeconfig: str | None = None
    context: str | None = None
    job: KubeJobConfig = field(default_factory=KubeJobConfig)
    resync_seconds: float = 300.0
    watch_timeout: int = 240
    # A Job with no pod this long after its create has its events read once (why not).
    no_pod_seconds: float = 30.0
    # A pod deleted while it ran ends (Failed) within its grace period (30 s) on a live
    # node; one still there this long after is held by a lost node: the attempt is given
    # up as crashed (retried) rather than left to its Job's deadline (dead).
    deleted_pod_seconds: float = 120.0
    # A pod unschedulable this long ends the attempt (dead, cluster_error); 0: never, it
    # waits for its Job's deadline (a cluster autoscaler may yet add the node it needs).
    unschedulable_seconds: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KubeSettings:
        """From the backend's variables (README); a value that cannot work raises
        :class:`~scanward.env_values.ConfigError` naming the variable and the form
        expected (checked here, not at the first Job's create)."""
        from scanward import env_values as ev  # here: this function is all that uses it

        job = KubeJobConfig(
            namespace=ev.env_k8s_name(env, "SCANWARD_KUBE_NAMESPACE", "scanward",
                                      dns_label=True),
            workspace_claim=ev.env_k8s_name(env, "SCANWARD_KUBE_WORKSPACE_CLAIM",
                                            "scanward-workspace"),
            results_claim=ev.env_k8s_name(env, "SCANWARD_KUBE_RESULTS_CLAIM",
                                          "scanward-results"),
            image_pull_policy=ev.env_choice(env, "SCANWARD_KUBE_IMAGE_PULL_POLICY",
                                            "IfNotPresent", ("Always", "IfNotPresent", "Never")),
            image_pull_secrets=ev.env_names(env, "SCANWARD_KUBE_IMAGE_PULL_SECRETS"),
            ttl_seconds_after_finished=ev.env_int(env, "SCANWARD_KUBE_JOB_TTL_SECONDS", 3600,
                                                  min=0, what="a number of seconds"),
            node_selector=ev.env_mapping(env, "SCANWARD_KUBE_NODE_SELECTOR"),
            tolerations=tuple(ev.env_json_list(
                env, "SCANWARD_KUBE_TOLERATIONS",
                example='[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]')),
        )
        variable = "SCANWARD_KUBECONFIG" if env.get("SCANWARD_KUBECONFIG") else "KUBECONFIG"
        kubeconfig = env.get(variable) or None
        context = env.get("SCANWARD_KUBE_CONTEXT") or None
        if kubeconfig and not any(Path(p).expanduser().is_file()
                                  for p in kubeconfig.split(os.pathsep) if p):
            # Starts like api_client's own message, and names the variable too.
            raise ev.ConfigError(f"kubeconfig {kubeconfig}: file not found ({variable}: "
                                 "expected a kubeconfig file)")
        if context and (kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST")):
            try:
                contexts, _ = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
            except (k8s_config.ConfigException, OSError, ValueError):
                contexts = None  # an unreadable kubeconfig: api_client says why, at start
            names = [c.get("name") for c in contexts or []]
            if contexts is not None and context not in names:
                raise ev.bad("SCANWARD_KUBE_CONTEXT", context,
                             f"a context of kubeconfig {kubeconfig or '~/.kube/config'} "
                             f"({', '.join(map(str, names)) or 'it has none'})")
        return cls(
            kubeconfig=kubeconfig,
            context=context,
            job=job,
            resync_seconds=ev.env_float(env, "SCANWARD_KUBE_RESYNC_SECONDS", 300, positive=True),
            no_pod_seconds=ev.env_float(env, "SCANWARD_KUBE_NO_POD_SECONDS", 30,
                                        positive=True),
            deleted_pod_seconds=ev.env_float(env, "SCANWARD_KUBE_DELETED_POD_SECONDS", 120,
                                             positive=True),
            unschedulable_seconds=ev.env_float(env, "SCANWARD_KUBE_UNSCHEDULABLE_SECONDS", 0),
        )


def api_client(settings: KubeSettings) -> k8s.ApiClient:
    """A client from the kubeconfig (and context), or the in-cluster service account."""
    try:
        if settings.kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            loaded: k8s.ApiClient = k8s_config.new_client_from_config(
                config_file=settings.kubeconfig, context=settings.context)
            return loaded
        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        return k8s.ApiClient(configuration)
    except (k8s_config.ConfigException, OSError, ValueError) as e:
        where = settings.kubeconfig or "~/.kube/config"
        raise ClusterError(f"kubeconfig {where}: {e}") from e


def describe_api_error(e: ApiException, *, action: str, namespace: str) -> str:
    """One line naming what failed and why, for operators."""
    try:
        message = json.loads(e.body or "{}").get("message") or e.reason
    except ValueError:
        message = e.reason
    if e.status == 403:
        return (f"forbidden to {action} in namespace {namespace!r}: {message} "
                "(bind the Role in deploy/rbac.yaml to the worker's identity)")
    if e.status == 404 and "namespaces" in str(message):
        return f"namespace {namespace!r} not found: {message} (SCANWARD_KUBE_NAMESPACE)"
    if e.status == 401:
        return f"unauthorized to {action}: {message} (check the kubeconfig's credentials)"
    return f"cannot {action} in namespace {namespace!r}: {e.status} {message}"


class KubernetesBackend:
    """Runs scanner attempts as Jobs and learns of their ends from a shared watch."""

    name = "kubernetes"

    def __init__(self, settings: KubeSettings, results_root: Path) -> None:
        self._settings = settings
        self._cfg = settings.job
        self._results_root = results_root
        self._client = api_client(settings)
        self._batch = k8s.BatchV1Api(self._client)
        self._core = k8s.CoreV1Api(self._client)
        self._tracker = JobTracker(self._client, self._cfg.namespace,
                                   resync_seconds=settings.resync_seconds,
                                   watch_timeout=settings.watch_timeout)
        self.requests = 0  # API requests made for scans (the watch's are the tracker's)

    @property
    def server(self) -> str:
        return str(self._client.configuration.host)

    @property
    def tracker(self) -> JobTracker:
        return self._tracker

    @property
    def settings(self) -> KubeSettings:
        return self._settings

    def preflight(self) -> None:
        """Check that the cluster is reachable, the namespace exists, this identity holds
        every permission the backend uses (one SelfSubjectAccessReview each), and a Job
        passes admission (a dry-run create). Raises :class:`ClusterError`."""
        self._check_permissions()

        probe = ScannerJobInput(
            scan_id="scan-preflight-00000000000000000000", scanner="bandit", attempt=1,
            checkout=Checkout(scan_id="scan-preflight-00000000000000000000",
                              source_subpath="scan-preflight/src", commit="0" * 40,
                              size_bytes=0, file_count=0),
            resources=Resources(cpu_millis=100, memory_mib=64))
        manifest = build_job(probe, Catalog.load().get("bandit"), self._cfg)
        with self._cluster_errors("create jobs"):
            self._batch.create_namespaced_job(self._cfg.namespace, cast(Any, manifest),
                                              dry_run="All", _request_timeout=15)

    @contextlib.contextmanager
    def _cluster_errors(self, action: str) -> Iterator[None]:
        """API and connection errors as one-line :class:`ClusterError`s."""
        try:
            yield
        except ApiException as e:
            raise ClusterError(describe_api_error(e, action=action,
                                                  namespace=self._cfg.namespace)) from e
        except (HTTPError, OSError) as e:
            raise self._unreachable(e) from e

    def _check_permissions(self) -> None:
        authz = k8s.AuthorizationV1Api(self._client)
        missing = []
        for group, resource, sub, verb in REQUIRED_PERMISSIONS:
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": {
                          "namespace": self._cfg.namespace, "group": group,
                          "resource": resource, "subresource": sub, "verb": verb}}}
            with self._cluster_errors("review permissions"):
                result = authz.create_self_subject_access_review(cast(Any, review),
                                                                 _request_timeout=15)
            if not (result.status and result.status.allowed):
                missing.append(f"{verb} {resource}{'/' + sub if sub else ''}")
        if len(missing) == len(REQUIRED_PERMISSIONS):
            # A Role grants nothing in a namespace that does not exist, and the worker's
            # identity may not list namespaces: name both causes.
            raise ClusterError(
                f"no permission at all in namespace {self._cfg.namespace!r}: check that the "
                "namespace exists (SCANWARD_KUBE_NAMESPACE) and that the Role in "
                "deploy/rbac.yaml is bound there to the worker's identity")
        if missing:
            raise ClusterError(
                f"forbidden to {', '.join(missing)} in namespace {self._cfg.namespace!r} "
                "(bind the Role in deploy/rbac.yaml to the worker's identity)")

    def start(self) -> None:
        self.preflight()
        self._tracker.start()
        log.info("kubernetes backend on %s, namespace %s", self.server, self._cfg.namespace)

    def close(self) -> None:
        self._tracker.stop()
        self._client.close()

    # ------------------------------------------------------------------- one attempt

    async def run(self, job: ScannerJobInput, spec: ScannerSpec, heartbeat: Heartbeat,
                  heartbeat_every: float) -> ScannerJobResult:
        started = time.monotonic()
        run_id = activity.info().workflow_run_id if activity.in_activity() else None
        manifest = build_job(job, spec, self._cfg, deadline_seconds=job.deadline_seconds,
                             env=traceparent_env(), run_id=run_id)
        name = manifest["metadata"]["name"]
        # The kubelet would create a missing subPath directory as root, which a non-root
        # scanner cannot write to: the worker (same uid, same volume) creates it first.
        (self._results_root / results_subpath(job)).mkdir(parents=True, exist_ok=True)
        uid = await asyncio.to_thread(self._create_or_adopt, manifest, job)
        waiter = asyncio.ensure_future(self._tracker.wait(name, uid))
        watch = _AttemptWait(self, name, uid, spec.name, job.attempt, heartbeat)
        try:
            outcome = await wait_heartbeating(waiter, watch.beat, heartbeat_every)
        except BaseException:
            waiter.cancel()
            if worker_leaving():
                # A deploy: the Job runs on without this worker, and the retried activity
                # on another worker adopts it (create -> 409 -> adopt) instead of starting
                # the scanner again from zero.
                log.info("worker shutting down: Job %s left running for the next worker",
                         name)
                raise
            # Cancelled, or failed here: no orphans. A delete that fails is said; on a
            # cancel the workflow's stop_scanner deletes it again, with retries.
            await asyncio.shield(asyncio.to_thread(self._delete_or_warn, name, uid))
            raise
        finally:
            self._tracker.forget(name)
        pods = None
        if not outcome.succeeded and outcome.reason not in ("PodFailurePolicy",
                                                            "DeadlineExceeded", BAD_IMAGE):
            try:
                pods = await asyncio.to_thread(self._pods, name)
            except ClusterError:
                # Without its pods the failure cannot be told (an OOM kill looked like a
                # crash, and was retried without more memory): the retried activity adopts
                # the Job, finds it ended, and reads them again.
                self._tracker.remember(outcome, uid)
                raise
        if outcome.reason == "DeadlineExceeded" and not outcome.had_pod \
                and watch.create_error is None:
            # No pod ever: what the Job controller said when it could not create one (a
            # quota, a LimitRange, a webhook); one request, on this failure's path only.
            watch.create_error = await asyncio.to_thread(self.read_create_error, name, uid)
        failure, message = classify(outcome, spec, pods, create_error=watch.create_error)
        out_dir = self._results_root / results_subpath(job)
        if failure is not None:
            if failure is FailureClass.BAD_IMAGE:
                await asyncio.to_thread(self._delete_or_warn, name, uid)
            await asyncio.to_thread(self._save_pod_log, name, pods, out_dir / LOG_FILE)
            raise ScannerFailed(failure, with_log_tail(f"{spec.name}: {message}", out_dir))
        sarif = f"{results_subpath(job)}/{SARIF_FILE}"
        if not (self._results_root / sarif).is_file():
            raise ScannerFailed(FailureClass.BROKEN_SARIF, with_log_tail(
                f"{spec.name}: Job {name} ended but wrote no SARIF at {sarif} on the "
                "results volume", out_dir))
        return ScannerJobResult(scanner=spec.name, attempt=job.attempt, sarif_subpath=sarif,
                                exit_code=0, duration_seconds=round(time.monotonic() - started,
                                                                    3),
                                source_root=SOURCE_MOUNT)

    async def stop(self, job: ScannerJobInput) -> str:
        """Delete the attempt's Job (its pods follow): its waiting ``run`` sees it go."""
        name = job_name(job.scan_id, job.scanner, job.attempt)
        gone = await asyncio.to_thread(self._delete, name)
        return f"Job {self._cfg.namespace}/{name} {'deleted' if gone else 'already gone'}"

    # ------------------------------------------------------------ API requests

    def _create_or_adopt(self, manifest: dict[str, Any], job: ScannerJobInput) -> str | None:
        """Create the attempt's Job, or adopt the one an earlier try of this activity
        created; its uid (what the watch's events are matched with)."""
        name = manifest["metadata"]["name"]
        ns = self._cfg.namespace
        created, uid = self._create(manifest)
        if created:
            return uid
        # 409: an earlier try of this activity created it (a retry after a crash): adopt
        # it, once we are sure it is ours.
        existing = self._read(name)
        labels = dict((existing.metadata.labels if existing.metadata else None) or {})
        ours = manifest["metadata"]["labels"].get(LABEL_RUN)
        if ours and labels.get(LABEL_RUN) not in (None, ours) and labels.get(
                LABEL_SCAN) == scan_label(job.scan_id):
            # An earlier run of this scan id (cancelled or failed, then started again)
            # left it: this run's attempt starts afresh, it does not inherit that one.
            log.info("Job %s/%s is an earlier run's: replacing it", ns, name)
            return self._replace(manifest)
        expected = {MANAGED_BY: MANAGER, LABEL_SCAN: scan_label(job.scan_id),
                    LABEL_SCANNER: job.scanner, LABEL_ATTEMPT: str(job.attempt)}
        if any(labels.get(k) != v for k, v in expected.items()):
            raise ScannerFailed(FailureClass.BAD_INPUT,
                                f"Job {ns}/{name} exists but was not created by scanward for "
                                f"this attempt (labels {labels})")
        log.info("adopted existing Job %s/%s", ns, name)
        return _uid(existing)

    def _read(self, name: str) -> Any:
        try:
            self.requests += 1
            return self._batch.read_namespaced_job(name, self._cfg.namespace,
                                                   _request_timeout=30)
        except ApiException as e:
            raise self._failure(e, "read jobs") from e
        except (HTTPError, OSError) as e:
            raise self._unreachable(e) from e

    def _create(self, manifest: dict[str, Any]) -> tuple[bool, str | None]:
        """(True, its uid) once created; (False, None) if a Job of that name exists."""
        try:
            self.requests += 1
            created = self._batch.create_namespaced_job(self._cfg.namespace,
                                                        cast(Any, manifest),
                                                        _request_timeout=30)
            return True, _uid(created)
        except ApiException as e:
            if e.status != 409:
                raise self._failure(e, "create jobs") from e
            return False, None
        except (HTTPError, OSError) as e:
            raise self._unreachable(e) from e

    def _replace(self, manifest: dict[str, Any], patience: float = 60.0) -> str | None:
        """Delete the Job of this name and create ``manifest`` once it is gone."""
        name, ns = manifest["metadata"]["name"], self._cfg.namespace
        self._delete(name)
        deadline = time.monotonic() + patience
        while True:
            created, uid = self._create(manifest)
            if created:
                return uid
            if time.monotonic() > deadline:
                raise ClusterError(f"Job {ns}/{name} of an earlier run was deleted but is "
                                   f"still there after {patience:.0f}s")
            time.sleep(0.5)

    def _delete(self, name: str, uid: str | None = None) -> bool:
        """Delete the Job (its pods follow), only the one with ``uid`` when given (a later
        run may have replaced it under the same name); False if it was already gone. Any
        other failure raises (ClusterError, retried; ScannerFailed for a refusal): a
        delete that did not happen must not be reported as done."""
        options = k8s.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=k8s.V1Preconditions(uid=uid) if uid else None)
        try:
            self.requests += 1
            self._batch.delete_namespaced_job(name, self._cfg.namespace, body=options,
                                              _request_timeout=30)
            return True
        except ApiException as e:
            if e.status == 404 or (uid and e.status == 409):  # gone, or not that one
                return False
            raise self._failure(e, "delete jobs") from e
        except (HTTPError, OSError) as e:
            raise self._unreachable(e) from e

    def _delete_or_warn(self, name: str, uid: str | None = None) -> None:
        try:
            self._delete(name, uid)
        except (ClusterError, ScannerFailed) as e:
            log.warning("could not delete Job %s/%s: %s", self._cfg.namespace, name, e)

    def _pods(self, name: str, tries: int = 3) -> list[dict[str, Any]]:
        """The Job's pods (what tells an OOM kill or an eviction from a crash); a request
        that keeps failing raises rather than read as "no pods"."""
        for attempt in range(1, tries + 1):
            try:
                self.requests += 1
                pods = self._core.list_namespaced_pod(self._cfg.namespace,
                                                      label_selector=f"job-name={name}",
                                                      _request_timeout=30)
                break
            except ApiException as e:
                if e.status in (401, 403, 404) or attempt == tries:
                    raise self._failure(e, "list pods") from e
            except (HTTPError, OSError) as e:
                if attempt == tries:
                    raise self._unreachable(e) from e
            time.sleep(1.0)
        result: list[dict[str, Any]] = self._client.sanitize_for_serialization(pods)["items"]
        return result

    def read_create_error(self, name: str, uid: str | None) -> str | None:
        """The Job's latest FailedCreate event message (why it has no pod), or None;
        one request. An error reading events is said in the message, never raised: it
        only words a failure (or a wait) known otherwise."""
        selector = f"involvedObject.kind=Job,involvedObject.name={name}"
        try:
            self.requests += 1
            raw = self._core.list_namespaced_event(self._cfg.namespace,
                                                   field_selector=selector,
                                                   _request_timeout=15)
        except ApiException as e:
            why = describe_api_error(e, action="list events", namespace=self._cfg.namespace)
            return f"(its events could not be read: {why})"
        except (HTTPError, OSError) as e:
            return f"(its events could not be read: {_reason(e)})"
        events: list[dict[str, Any]] = self._client.sanitize_for_serialization(raw)["items"]
        events = [e for e in events
                  if uid is None or (e.get("involvedObject") or {}).get("uid") in (None, uid)]
        return failed_create_message(events)

    def _save_pod_log(self, name: str, pods: list[dict[str, Any]] | None, path: Path) -> None:
        """A failed attempt whose pod wrote no scanner.log (an image without a shell, or
        the pod never started): its pod's log tail, if the pods were read, saved there.
        One request at most, and none when the pod's own log is on the volume."""
        if read_tail(path) or not pods:
            return
        text = self._log_tail(name, pods)
        if not text:
            return
        # O_NOFOLLOW: the pod may have left a symlink here, pointing at a worker's file.
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")

    def _log_tail(self, name: str, pods: list[dict[str, Any]] | None) -> str:
        for pod in pods or []:
            try:
                self.requests += 1
                text: str = self._core.read_namespaced_pod_log(
                    pod["metadata"]["name"], self._cfg.namespace, container=CONTAINER,
                    tail_lines=20, _request_timeout=15)
                return text.strip()
            except (ApiException, HTTPError, OSError):
                continue
        return ""

    def _failure(self, e: ApiException, action: str) -> Exception:
        message = describe_api_error(e, action=action, namespace=self._cfg.namespace)
        if e.status in (401, 403, 404, 422):
            return ScannerFailed(FailureClass.CLUSTER, message)
        return ClusterError(message)  # 5xx, 429: retried by Temporal

    def _unreachable(self, e: BaseException) -> ClusterError:
        return ClusterError(f"cannot reach the Kubernetes API at {self.server}: {_reason(e)}")


class _AttemptWait:
    """The heartbeat of one waiting attempt: it carries why the attempt's pod has not
    started (the Pod watch's word: not scheduled, and the scheduler's message), so that
    a scan that waits says why (``scanward status``, the Web UI's pending activity). A Job
    with no pod at all ``no_pod_seconds`` after it was created has its events read, once:
    a quota or LimitRange that refuses its pod is said while it waits, and one that will
    refuse it whatever else runs fails the attempt at once (``cluster_error``) instead of
    at its deadline. A pod unschedulable for ``unschedulable_seconds`` (when set) or
    being deleted for ``deleted_pod_seconds`` also ends the attempt."""

    def __init__(self, backend: KubernetesBackend, name: str, uid: str | None,
                 scanner: str, attempt: int, heartbeat: Heartbeat) -> None:
        self._backend = backend
        self._name = name
        self._uid = uid
        self._scanner = scanner
        self._attempt = attempt
        self._heartbeat = heartbeat
        self._started = time.monotonic()
        self._events_read = False
        self._deleting_since: float | None = None
        self._unscheduled_since: float | None = None
        self.create_error: str | None = None

    async def beat(self) -> None:
        had_pod, pending = self._backend.tracker.pod_state(self._name, self._uid)
        now = time.monotonic()
        waited = now - self._started
        if pending and BEING_DELETED in pending:
            self._deleting_since = self._deleting_since or now
            if now - self._deleting_since >= self._backend.settings.deleted_pod_seconds:
                raise ScannerFailed(FailureClass.CRASHED, (
                    f"{self._scanner}: {pending}, and has not ended "
                    f"{now - self._deleting_since:.0f}s later (its node may be lost): "
                    f"attempt given up, its Job {self._name} deleted"))
        else:
            self._deleting_since = None
        patience = self._backend.settings.unschedulable_seconds
        if pending and pending.startswith(NOT_SCHEDULED):
            self._unscheduled_since = self._unscheduled_since or now
            if patience and now - self._unscheduled_since >= patience:
                raise ScannerFailed(FailureClass.CLUSTER, (
                    f"{self._scanner}: never scheduled in {now - self._unscheduled_since:.0f}s "
                    f"(SCANWARD_KUBE_UNSCHEDULABLE_SECONDS={patience:g}): "
                    f"{pending.removeprefix(NOT_SCHEDULED)}"))
        else:
            self._unscheduled_since = None
        if not had_pod and not self._events_read \
                and waited >= self._backend.settings.no_pod_seconds:
            self._events_read = True
            self.create_error = await asyncio.to_thread(self._backend.read_create_error,
                                                        self._name, self._uid)
            if self.create_error:
                log.warning("Job %s has no pod after %.0fs: %s", self._name, waited,
                            self.create_error)
            if self.create_error and create_refused_for_good(self.create_error):
                raise ScannerFailed(FailureClass.CLUSTER, (
                    f"{self._scanner}: Job {self._name} cannot create its pod: "
                    f"{self.create_error} (namespace "
                    f"{self._backend.settings.job.namespace}; refused whatever else runs, "
                    "so not left to its deadline)"))
        if had_pod:
            self.create_error = None
        why = pending or (None if had_pod else
                          f"no pod yet: {self.create_error}" if self.create_error else None)
        if why is None:
            await heartbeat_once(self._heartbeat)
        else:
            await heartbeat_once(self._heartbeat,
                                 waiting_detail(self._scanner, self._attempt, waited, why))


def _uid(job: Any) -> str | None:
    uid = job.metadata.uid if getattr(job, "metadata", None) is not None else None
    return uid if isinstance(uid, str) else None


def _reason(e: BaseException) -> str:
    text = str(e)
    for marker in ("Connection refused", "timed out", "Name or service not known",
                   "No route to host", "certificate verify failed"):
        if marker in text:
            return marker
    return text.splitlines()[0][:200] if text else type(e).__name__

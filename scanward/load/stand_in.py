"""Plays the pods of scanward's scanner Jobs on a cluster whose kubelet is kwok (the
test control plane, tools/k8s-testenv), where no container runs.

For each new scanner Job it writes what the scanner would have written on the results
volume (its SARIF and ``scanner.log``), and, when its player says how, ends the Job's
pod as the scanner would have ended, through the pod annotations kwok's stages act on
(tools/k8s-testenv/kwok-stages.yaml): completed after N seconds, or failed with an exit
code and a reason such as ``OOMKilled``. Jobs, pods, the Job controller, the worker's
watch and its reading of the pod's end are the real control plane's.

It lives in the package, not in tests/, because ``scanward load --kube-stand-in`` runs
it; the tests play their own catalog with it (tests/test_kube_backend.py).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scanward import synthetic_scanner as synthetic
from scanward.job_spec import (
    ANNOTATION_RESULTS,
    CONTAINER,
    LABEL_ATTEMPT,
    LABEL_SCANNER,
    LOG_FILE,
    MANAGED_BY,
    MANAGER,
    SARIF_FILE,
)

log = logging.getLogger("scanward.load.stand_in")

# kwok's stage knobs (tools/k8s-testenv/kwok-stages.yaml; testenv.py names them too).
COMPLETE_DELAY = "pod-complete.stage.kwok.x-k8s.io/delay"
FAIL_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
FAIL_EXIT_CODE = f"{FAIL_LABEL}/exit-code"
FAIL_DELAY = f"{FAIL_LABEL}/delay"
FAIL_JITTER = f"{FAIL_LABEL}/jitter-delay"
FAIL_REASON = f"{FAIL_LABEL}/reason"
FAIL_CONTAINER = f"{FAIL_LABEL}/container-name"
# Pod annotations for catalog entries the stand-in ends: kwok would otherwise complete
# the pod at once, before the stand-in decides; the stand-in's patch replaces this.
HOLD = {COMPLETE_DELAY: "3600s"}
SELECTOR = urllib.parse.quote(f"{MANAGED_BY}={MANAGER}")
MERGE_PATCH = "application/merge-patch+json"


class Api(Protocol):
    """The few API calls the stand-in makes (tools/k8s-testenv's ControlPlane has them;
    :class:`KubeconfigApi` makes them with a kubeconfig's identity)."""

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json") -> Any: ...

    def watch(self, path: str, timeout: float = 60) -> Iterator[tuple[str, dict[str, Any]]]: ...


class KubeconfigApi:
    """:class:`Api` through the ``kubernetes`` client, as a kubeconfig's identity (it
    must watch Jobs and pods and patch pods in the namespace)."""

    def __init__(self, kubeconfig: str, context: str | None = None) -> None:
        from kubernetes import config

        # The kubernetes client is only partly annotated (its loaders, its watch).
        self._client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context)

    def _call(self, method: str, path: str, *, body: Any = None,
              content_type: str = "application/json", timeout: float = 30) -> Any:
        """The urllib3 response (not read yet) of one request; raises on a non-2xx."""
        base, _, query = path.partition("?")
        request = self._client.param_serialize(
            method, base, query_params=urllib.parse.parse_qsl(query),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body, auth_settings=["BearerToken"])
        response = self._client.call_api(*request, _request_timeout=timeout).response
        if not 200 <= response.status < 300:
            detail = response.data.decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("message") or detail
            except ValueError:
                pass
            raise RuntimeError(f"{method} {base}: HTTP {response.status}: {detail}")
        return response

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json") -> Any:
        return json.loads(self._call(method, path, body=body, content_type=content_type).data)

    def watch(self, path: str, timeout: float = 60) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes.watch.watch import iter_resp_lines

        sep = "&" if "?" in path else "?"
        response = self._call("GET", f"{path}{sep}watch=true&timeoutSeconds={int(timeout)}",
                              timeout=timeout + 10)
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if line:
                    event = json.loads(line)
                    yield event["type"], event["object"]
        finally:
            response.release_conn()

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True)
class JobView:
    """What a pod would know of itself, read from its scanner Job."""

    name: str
    scanner: str
    attempt: int
    results_subpath: str  # the attempt's directory on the results volume
    source_subpath: str  # the checkout on the workspace volume
    memory_limit_mib: int | None

    @classmethod
    def of(cls, job: dict[str, Any]) -> JobView | None:
        """None for a Job scanward did not make for a scanner attempt."""
        meta = job["metadata"]
        template = job["spec"]["template"]
        labels = template["metadata"].get("labels") or {}
        results = (template["metadata"].get("annotations") or {}).get(ANNOTATION_RESULTS)
        containers = [c for c in template["spec"]["containers"] if c["name"] == CONTAINER]
        if not results or not containers or LABEL_ATTEMPT not in labels:
            return None
        mounts = {m["name"]: m for m in containers[0].get("volumeMounts") or []}
        limit = ((containers[0].get("resources") or {}).get("limits") or {}).get("memory")
        return cls(meta["name"], labels.get(LABEL_SCANNER, ""), int(labels[LABEL_ATTEMPT]),
                   results, (mounts.get("source") or {}).get("subPath", ""),
                   mebibytes(limit) if limit else None)


def mebibytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``128Mi``, ``1Gi``, ``134217728``, ``200M``) in
    whole MiB, rounded down."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?",
                         quantity.strip())
    if not match:
        raise ValueError(f"memory quantity {quantity!r}")
    powers = {"K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    return int(float(match.group(1)) * powers.get(match.group(2) or "", 1) // 2**20)


@dataclass(frozen=True)
class PodPlay:
    """What the pod of one Job does: writes ``sarif`` (None: no file) and ``log``, then
    ends with ``exit_code`` (``reason`` names the termination: ``OOMKilled``) after
    ``seconds``; an ``exit_code`` of None leaves the end to the pod's own kwok
    annotations (from its catalog entry)."""

    sarif: str | None = None
    log: str = ""
    exit_code: int | None = None
    reason: str = "Error"
    seconds: float = 0.0


Player = Callable[[JobView], PodPlay]


def synthetic_player(workspace_root: Path) -> Player:
    """Plays the synthetic scanner as its commit's ``.scanward-synthetic.json`` asks
    (read from the checkout on the workspace volume, which the worker shares with the
    stand-in), under the Job's memory limit: :func:`synthetic_scanner.plan`."""
    def play(view: JobView) -> PodPlay:
        try:
            config = synthetic.read_config(workspace_root / view.source_subpath)
        except ValueError as e:
            return PodPlay(log=f"synthetic scanner: {e}\n", exit_code=synthetic.EXIT_BAD_INPUT)
        what = synthetic.plan(config, view.attempt, view.memory_limit_mib)
        sarif = (json.dumps(synthetic.sarif_document(what.findings, what.path))
                 if what.exit_code == 0 else None)
        return PodPlay(sarif, "".join(f"{line}\n" for line in what.log), what.exit_code,
                       what.reason, what.seconds)

    return play


def ending(play: PodPlay) -> dict[str, Any]:
    """The merge patch of a pod's metadata that makes kwok end it as ``play`` says."""
    delay = f"{round(play.seconds * 1000)}ms"
    if play.exit_code == 0:
        return {"metadata": {"annotations": {COMPLETE_DELAY: delay}}}
    # The failure label also stops the completion stage from matching (kwok-stages.yaml);
    # a jitter equal to the delay makes the delay exact.
    return {"metadata": {"labels": {FAIL_LABEL: "true"}, "annotations": {
        FAIL_EXIT_CODE: str(play.exit_code), FAIL_REASON: play.reason, FAIL_DELAY: delay,
        FAIL_JITTER: delay, FAIL_CONTAINER: CONTAINER}}}


def _finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


class PodStandIn:
    """Watches the namespace's scanner Jobs (writing each one's outputs when it appears)
    and their pods (ending each as its Job's play says, once it exists)."""

    def __init__(self, api: Api, namespace: str, results_root: Path, player: Player, *,
                 keep_jobs: bool = False, watch_seconds: float = 2.0) -> None:
        self._api = api
        self._ns = namespace
        self._root = results_root
        self._player = player
        self._keep_jobs = keep_jobs
        self._watch_seconds = watch_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # What it tracks is forgotten as Jobs and pods go (ttlSecondsAfterFinished).
        self.jobs: dict[str, dict[str, Any]] = {}  # with keep_jobs: each Job as first seen
        self._handled: set[str] = set()  # Job uids played
        self._ends: dict[str, PodPlay] = {}  # Job name -> how its pods end
        self._pods: dict[str, set[str]] = {}  # Job name -> its pods seen
        self._ended: set[str] = set()  # pods patched
        self._threads = [
            threading.Thread(target=self._list_watch, daemon=True, name=f"stand-in-{what}",
                             args=(f"{prefix}/namespaces/{namespace}/{what}?labelSelector="
                                   f"{SELECTOR}", handle))
            for prefix, what, handle in (("/apis/batch/v1", "jobs", self._on_job),
                                         ("/api/v1", "pods", self._on_pod))]

    def start(self) -> PodStandIn:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._watch_seconds + 10)

    def _list_watch(self, path: str, handle: Callable[[str, dict[str, Any]], None]) -> None:
        """List, then watch from the list's resourceVersion; list again after 410 Gone
        or an error (an apiserver restart)."""
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = self._api.request("GET", path)
                    for item in listing.get("items") or []:
                        self._handle(handle, "ADDED", item)
                    version = listing["metadata"]["resourceVersion"]
                for kind, obj in self._api.watch(f"{path}&resourceVersion={version}"
                                                 "&allowWatchBookmarks=true",
                                                 timeout=self._watch_seconds):
                    if kind == "ERROR":
                        version = None
                        break
                    version = obj["metadata"].get("resourceVersion") or version
                    if kind != "BOOKMARK":
                        self._handle(handle, kind, obj)
                    if self._stop.is_set():
                        break
            except Exception as e:  # the apiserver may be restarting: list again
                log.debug("stand-in watch %s: %s; again", path, e)
                version = None
                self._stop.wait(0.5)

    @staticmethod
    def _handle(handle: Callable[[str, dict[str, Any]], None], kind: str,
                obj: dict[str, Any]) -> None:
        try:
            handle(kind, obj)
        except Exception:  # a bad object must not stop the watch of all the others
            log.exception("stand-in: %s %s", kind, obj.get("metadata", {}).get("name"))

    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        if kind == "DELETED":
            self._handled.discard(uid)
            with self._lock:
                self._ends.pop(name, None)
            return
        if uid in self._handled:
            return
        self._handled.add(uid)
        if self._keep_jobs:
            self.jobs.setdefault(name, job)
        view = JobView.of(job)
        if view is None or _finished(job):  # listed at start: an earlier run's
            return
        play = self._player(view)
        out = self._root / view.results_subpath
        out.mkdir(parents=True, exist_ok=True)
        if play.sarif is not None:
            # Whole or absent: the worker reads it once the Job has ended, not before.
            tmp = out / f".{SARIF_FILE}.tmp"
            tmp.write_text(play.sarif)
            tmp.replace(out / SARIF_FILE)
        (out / LOG_FILE).write_text(play.log)
        if play.exit_code is None:
            return
        with self._lock:
            self._ends[name] = PodPlay(exit_code=play.exit_code, reason=play.reason,
                                       seconds=play.seconds)
            pods = self._claim(name)
        self._end(pods, play)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        job = (pod["metadata"].get("labels") or {}).get("job-name")
        if not job:
            return
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            with self._lock:
                seen = self._pods.get(job)
                if seen is not None:
                    seen.discard(name)
                    if not seen:
                        del self._pods[job]
                self._ended.discard(name)
            return
        with self._lock:
            self._pods.setdefault(job, set()).add(name)
            play = self._ends.get(job)
            pods = self._claim(job) if play else []
        if play:
            self._end(pods, play)

    def _claim(self, job: str) -> list[str]:
        """The job's pods seen and not ended yet, now counted as ended (under the lock:
        whichever watch sees both the play and the pod first ends it, once)."""
        pods = sorted(self._pods.get(job, set()) - self._ended)
        self._ended.update(pods)
        return pods

    def _end(self, pods: list[str], play: PodPlay) -> None:
        for pod in pods:
            try:
                self._api.request("PATCH", f"/api/v1/namespaces/{self._ns}/pods/{pod}",
                                  ending(play), content_type=MERGE_PATCH)
            except Exception as e:  # gone already (a cancelled scan)
                log.debug("stand-in: pod %s not ended: %s", pod, e)

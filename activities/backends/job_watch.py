"""One shared list+watch per worker process, from which every waiting scan learns that
its Job ended.

A waiting scan is an ``asyncio.Future`` in a dict: no thread and no API request of its
own. Two threads per worker (Jobs and Pods, label-selected) hold the watches: they
resume from the last resourceVersion, re-list on 410 Gone, reconnect with backoff after
a disconnect, and re-list every ``resync_seconds`` anyway, the slow reconcile path that
catches whatever a lost watch missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from scanward.job_spec import MANAGED_BY, MANAGER
from scanward.job_status import (
    BAD_IMAGE,
    BEING_DELETED,
    DELETED,
    JobOutcome,
    pod_bad_image,
    pod_pending_reason,
    terminal_outcome,
)

log = logging.getLogger("scanward.kube.watch")
SELECTOR = f"{MANAGED_BY}={MANAGER}"

Handler = Callable[[str, dict[str, Any]], None]
Lister = Callable[..., Any]


class _RawWatch(k8s_watch.Watch):
    """Events as API JSON dicts: deserialising thousands of models costs CPU for
    nothing we read."""

    def get_return_type(self, func: Any) -> None:
        return None


class ResourceWatch:
    """list+watch of one resource kind in a thread, calling ``handle(event, obj)`` with
    API JSON dicts, and ``relisted(names)`` after every full list."""

    def __init__(self, api_client: k8s.ApiClient, lister: Lister, namespace: str,
                 handle: Handler, relisted: Callable[[set[str], float], None], *,
                 kind: str, resync_seconds: float = 300.0, watch_timeout: int = 240) -> None:
        self._api_client = api_client
        self._lister = lister
        self._namespace = namespace
        self._handle = handle
        self._relisted = relisted
        self._kind = kind
        self._resync = resync_seconds
        self._timeout = watch_timeout
        self._stop = threading.Event()
        self._watch: _RawWatch | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)
        self.synced = threading.Event()
        self.lists = 0  # full lists done (the initial one, 410s, resyncs, reconnects)
        self.watches = 0  # watch requests opened

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _list(self) -> str:
        started = time.monotonic()
        raw = self._lister(self._namespace, label_selector=SELECTOR, _preload_content=False,
                           _request_timeout=60)
        body = _json(raw)
        names = set()
        for item in body.get("items") or []:
            names.add(item["metadata"]["name"])
            self._handle("LISTED", item)
        self.lists += 1
        self._relisted(names, started)
        self.synced.set()
        return str(body["metadata"]["resourceVersion"])

    def _run(self) -> None:
        backoff = 0.5
        version: str | None = None
        listed_at = 0.0
        while not self._stop.is_set():
            try:
                if version is None or time.monotonic() - listed_at > self._resync:
                    version = self._list()
                    listed_at = time.monotonic()
                self._watch = _RawWatch()
                self.watches += 1
                for event in self._watch.stream(
                        self._lister, self._namespace, label_selector=SELECTOR,
                        resource_version=version, allow_watch_bookmarks=True,
                        timeout_seconds=self._timeout, _request_timeout=self._timeout + 30):
                    kind, obj = _event(event)
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = None  # too old: list again
                            break
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    version = obj["metadata"].get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self._handle(kind, obj)
                    if self._stop.is_set() or time.monotonic() - listed_at > self._resync:
                        break
                backoff = 0.5
            except ApiException as e:
                if e.status == 410:
                    version = None
                    continue
                self._pause(f"{self._kind} watch: API error {e.status} {e.reason}", backoff)
                backoff = min(backoff * 2, 30.0)
            except (HTTPError, OSError, ValueError) as e:
                # Disconnects, an apiserver restart: resume from the last version.
                self._pause(f"{self._kind} watch interrupted: {type(e).__name__}: {e}", backoff)
                backoff = min(backoff * 2, 30.0)

    def _pause(self, message: str, seconds: float) -> None:
        if not self._stop.is_set():
            log.warning("%s; retrying in %.1fs", message, seconds)
            self._stop.wait(seconds)


def _json(response: Any) -> dict[str, Any]:
    data = response.data if hasattr(response, "data") else response
    result: dict[str, Any] = json.loads(data)
    return result


def _event(event: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(event, dict):
        raw = event.get("raw_object")
        return str(event.get("type")), raw if isinstance(raw, dict) else {}
    return "ERROR", {"code": 500, "message": f"unexpected watch event {event!r:.200}"}


class JobTracker:
    """Waiters on Jobs by name, resolved from the shared Job and Pod watches."""

    def __init__(self, api_client: k8s.ApiClient, namespace: str, *,
                 resync_seconds: float = 300.0, watch_timeout: int = 240) -> None:
        self._lock = threading.Lock()
        # Jobs seen ended and not yet deleted, with their uid.
        self._ended: dict[str, tuple[str | None, JobOutcome]] = {}
        # Usually one waiter a Job; two when an activity is retried on this worker while
        # its first try still waits. A waiter may name the uid of the Job it waits for:
        # events of an earlier Job of the same name (replaced) are not its.
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop,
                                            asyncio.Future[JobOutcome], float,
                                            str | None]]] = {}
        # The last pod seen of each scanward Job (by Job name): its owner's uid and why
        # it has not started (None once it runs), from the Pod watch; what a waiting
        # scan reports while it waits, and words a deadline with. Forgotten with the Job.
        self._pods: dict[str, tuple[str | None, str | None]] = {}
        batch = k8s.BatchV1Api(api_client)
        core = k8s.CoreV1Api(api_client)
        self.jobs = ResourceWatch(api_client, batch.list_namespaced_job, namespace,
                                  self._on_job, self._jobs_relisted, kind="jobs",
                                  resync_seconds=resync_seconds, watch_timeout=watch_timeout)
        self.pods = ResourceWatch(api_client, core.list_namespaced_pod, namespace,
                                  self._on_pod, lambda names, started: None, kind="pods",
                                  resync_seconds=resync_seconds, watch_timeout=watch_timeout)

    def start(self, timeout: float = 30.0) -> None:
        self.jobs.start()
        self.pods.start()
        if not (self.jobs.synced.wait(timeout) and self.pods.synced.wait(timeout)):
            log.warning("job watch not synced after %.0fs; waiting scans resolve later",
                        timeout)

    def stop(self) -> None:
        self.jobs.stop()
        self.pods.stop()

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def wait(self, name: str, uid: str | None = None) -> JobOutcome:
        """Until the Job ``name`` (the one with ``uid``, when given) ends, or is deleted,
        or its image cannot be pulled."""
        loop = asyncio.get_running_loop()
        with self._lock:
            ended = self._ended.get(name)
            if ended is not None and _same(uid, ended[0]):
                return ended[1]
            future: asyncio.Future[JobOutcome] = loop.create_future()
            self._waiters.setdefault(name, []).append((loop, future, time.monotonic(), uid))
        try:
            return await future
        finally:
            with self._lock:
                left = [w for w in self._waiters.get(name, []) if w[1] is not future]
                if left:
                    self._waiters[name] = left
                else:
                    self._waiters.pop(name, None)

    def remember(self, outcome: JobOutcome, uid: str | None) -> None:
        """Keep ``outcome`` for a later :meth:`wait` (a retry of the activity that read it
        and could not finish), until the Job is deleted."""
        with self._lock:
            self._ended.setdefault(outcome.name, (uid, outcome))

    def forget(self, name: str) -> None:
        with self._lock:
            self._ended.pop(name, None)

    def pod_state(self, name: str, uid: str | None = None) -> tuple[bool, str | None]:
        """Whether the watch has seen a pod of the Job ``name`` (the one with ``uid``,
        when given), and why that pod has not started (None: it runs, or none seen)."""
        with self._lock:
            return self._pod_state(name, uid)

    def _pod_state(self, name: str, uid: str | None) -> tuple[bool, str | None]:
        """:meth:`pod_state`, lock held."""
        seen = self._pods.get(name)
        if seen is None or not _same(uid, seen[0]):
            return False, None
        return True, seen[1]

    def _with_pods(self, outcome: JobOutcome, uid: str | None) -> JobOutcome:
        """``outcome`` with what the Pod watch saw of the Job's pod. Lock held."""
        had_pod, pending = self._pod_state(outcome.name, uid)
        return dataclasses.replace(outcome, pending=pending, had_pod=had_pod)

    # ------------------------------------------------------------ watch threads

    def _resolve(self, outcome: JobOutcome, uid: str | None = None) -> None:
        """Hand ``outcome`` (of the Job with ``uid``, if known) to its waiters. Called with
        the lock held."""
        waiters = self._waiters.pop(outcome.name, [])
        rest = [w for w in waiters if not _same(w[3], uid)]
        for loop, future, _, _ in (w for w in waiters if _same(w[3], uid)):
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_set, future, outcome)
        if rest:
            self._waiters[outcome.name] = rest

    def _on_job(self, event: str, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        uid = job["metadata"].get("uid")
        with self._lock:
            if event == "DELETED":
                self._pods.pop(name, None)
                ended = self._ended.get(name)
                if ended is not None and _same(ended[0], uid):
                    del self._ended[name]
                elif name in self._waiters:
                    self._resolve(JobOutcome(name, DELETED), uid)
                return
            outcome = terminal_outcome(job)
            ended = self._ended.get(name)
            if outcome is not None and (ended is None or not _same(ended[0], uid)):
                outcome = self._with_pods(outcome, uid)
                self._ended[name] = (uid, outcome)
                self._resolve(outcome, uid)

    def _jobs_relisted(self, names: set[str], started: float) -> None:
        with self._lock:
            for name in list(self._ended):
                if name not in names:
                    del self._ended[name]
            for name in list(self._pods):
                if name not in names:
                    del self._pods[name]
            # A waiter registered before this list began whose Job is absent: it was
            # deleted while the watch was not looking.
            for name, waiters in list(self._waiters.items()):
                if name not in names and min(w[2] for w in waiters) < started:
                    self._resolve(JobOutcome(name, DELETED))

    def _on_pod(self, event: str, pod: dict[str, Any]) -> None:
        if event == "DELETED":
            return  # what it last said stands: a deadline ends the Jobs of pods never run
        meta = pod.get("metadata") or {}
        job = (meta.get("labels") or {}).get("job-name")
        if not job:
            return
        owner = next((o.get("uid") for o in meta.get("ownerReferences") or []
                      if o.get("kind") == "Job"), None)
        pending = pod_pending_reason(pod)
        with self._lock:
            before = self._pods.get(job)
            if before is not None and before[0] == owner and before[1] and pending \
                    and BEING_DELETED in pending:
                # A pod never started, deleted (the Job's deadline): what kept it stands.
                pending = before[1]
            self._pods[job] = (owner, pending)
            if pending and job in self._waiters and (before is None or before[1] != pending):
                log.info("Job %s waits: %s", job, pending)
        message = pod_bad_image(pod)
        if message:
            with self._lock:
                if job in self._waiters and job not in self._ended:
                    self._resolve(JobOutcome(job, BAD_IMAGE, message), owner)


def _same(wanted: str | None, uid: str | None) -> bool:
    """Whether an event of the Job with ``uid`` is for a waiter of ``wanted`` (either
    unknown: yes, as before uids were compared)."""
    return wanted is None or uid is None or wanted == uid


def _set(future: asyncio.Future[JobOutcome], outcome: JobOutcome) -> None:
    if not future.done():
        future.set_result(outcome)

"""The bench's own Job and pod watches: when each Job was first seen Complete, pods Running
per namespace, and each new Job's SARIF written where its pod would write it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import k8s_bench_repo  # noqa: F401 - puts the repository on sys.path
from k8s_bench_cluster import ssl_context

from scanward.job_spec import ANNOTATION_RESULTS, SARIF_FILE
from scanward.load.stand_in import SELECTOR
from tests.k8s_fixture import testenv


class ListWatch:
    """The bench's own list+watch of one collection (admin token) in a thread, resuming
    from the last resourceVersion. ``handle(type, obj, seen)``; ``seen`` is time.time()
    right after the event's line was read."""

    def __init__(self, plane: testenv.ControlPlane, path: str,
                 handle: Callable[[str, dict[str, Any], float], None]) -> None:
        self._plane = plane
        self._path = path
        self._handle = handle
        self._ctx = ssl_context(plane)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"bench-watch{path}")
        self.synced = threading.Event()
        self.errors = 0
        self.streams = 0  # watch requests opened (a closed stream is resumed)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    body = self._plane.request("GET", f"{self._path}?labelSelector={SELECTOR}",
                                               timeout=120)
                    now = time.time()
                    for item in body.get("items") or []:
                        self._handle("LISTED", item, now)
                    version = body["metadata"]["resourceVersion"]
                    self.synced.set()
                url = (f"{self._plane.server}{self._path}?labelSelector={SELECTOR}&watch=true"
                       f"&allowWatchBookmarks=true&timeoutSeconds=120"
                       f"&resourceVersion={version}")
                req = urllib.request.Request(  # noqa: S310 - https URL of the plane
                    url, headers={"Authorization": f"Bearer {self._plane.token}"})
                self.streams += 1
                with urllib.request.urlopen(req, timeout=150, context=self._ctx) as r:  # noqa: S310
                    for line in r:
                        seen = time.time()
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            version = None  # 410 Gone: list again
                            break
                        version = obj["metadata"].get("resourceVersion", version)
                        if kind != "BOOKMARK":
                            self._handle(kind, obj, seen)
                        if self._stop.is_set():
                            break
            except (OSError, ValueError, urllib.error.URLError, testenv.ApiError):
                self.errors += 1
                self._stop.wait(0.5)


def _complete(job: dict[str, Any]) -> bool:
    return any(c.get("type") == "Complete" and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


class ClusterObserver:
    """Plays the pods' part (writes each new Job's SARIF where its pod would, like
    tests/test_kube_backend.py's PodStandIn), records when each Job's Complete condition
    was first seen, and counts each namespace's Running pods.

    Not scanward.load.stand_in.PodStandIn itself: that one watches one namespace in 2 s
    watch windows (more requests to the apiserver being measured), also writes
    scanner.log, and stamps no times; here the watches' timestamps are the latency
    measurement, so they stay the bench's own."""

    def __init__(self, plane: testenv.ControlPlane, results_root: Path) -> None:
        self._root = results_root
        self._lock = threading.Lock()
        self.jobs_seen: set[str] = set()
        self.complete_at: dict[str, float] = {}
        self.running: dict[str, set[str]] = {}  # namespace -> pod names Running
        self.sarif_written = 0
        self.jobs = ListWatch(plane, "/apis/batch/v1/jobs", self._on_job)
        self.pods = ListWatch(plane, "/api/v1/pods", self._on_pod)

    def start(self) -> None:
        self.jobs.start()
        self.pods.start()
        if not (self.jobs.synced.wait(60) and self.pods.synced.wait(60)):
            raise RuntimeError("the bench's job/pod watches did not sync in 60 s")

    def stop(self) -> None:
        self.jobs.stop()
        self.pods.stop()

    def _on_job(self, kind: str, job: dict[str, Any], seen: float) -> None:
        if kind == "DELETED":
            return
        name = job["metadata"]["name"]
        if _complete(job):
            with self._lock:
                self.complete_at.setdefault(name, seen)
        if name not in self.jobs_seen:
            self.jobs_seen.add(name)
            subpath = (job["metadata"].get("annotations") or {}).get(ANNOTATION_RESULTS)
            if subpath:
                self._write_sarif(name, subpath)

    def _write_sarif(self, name: str, subpath: str) -> None:
        out = self._root / subpath
        out.mkdir(parents=True, exist_ok=True)
        doc = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "bench-fake"}},
               "results": [{"ruleId": "BENCH001", "level": "warning",
                            "message": {"text": f"finding from {name}"},
                            "locations": [{"physicalLocation": {
                                "artifactLocation": {"uri": "/src/app.py"},
                                "region": {"startLine": 3}}}]}]}]}
        tmp = out / f".{SARIF_FILE}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(out / SARIF_FILE)
        self.sarif_written += 1

    def _on_pod(self, kind: str, pod: dict[str, Any], seen: float) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        with self._lock:
            running = self.running.setdefault(ns, set())
            if kind != "DELETED" and (pod.get("status") or {}).get("phase") == "Running":
                running.add(name)
            else:
                running.discard(name)

    def running_in(self, namespace: str) -> int:
        with self._lock:
            return len(self.running.get(namespace, ()))

"""One run of the bench: starts the control plane, dev server, observer and workers, runs
the three phases (requests per scan, latency, memory) into ``results``, stops it all."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k8s_bench_audit import AUDIT_POLICY, PER_SCAN, WATCH, AuditLog, breakdown, classify
from k8s_bench_catalog import kwok_complete, write_catalog
from k8s_bench_cluster import (
    BenchPlane,
    create_bench_node,
    service_account_user,
    terminated_watchers,
    worker_namespace,
)
from k8s_bench_log import log
from k8s_bench_observer import ClusterObserver
from k8s_bench_procs import WorkerProc, proc_memory, thread_names
from k8s_bench_repo import REPO
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from scanward import client as api
from scanward.contract import ScanRequest, ScanStatus
from scanward.devserver import DevServer, free_port
from scanward.example import create_example_repo
from scanward.job_spec import job_name
from scanward.load.stack import cpu_of


def code_version() -> dict[str, str]:
    """The commit measured, and product files that differ from it (others edit them)."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                             text=True, check=False)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--short", "--", "worker.py", "activities", "workflows",
                         "scanward")}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def event_seconds(event: Any) -> float:
    return float(event.event_time.seconds + event.event_time.nanos / 1e9)


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    results: dict[str, Any] = field(default_factory=dict)
    plane: BenchPlane | None = None
    dev: DevServer | None = None
    observer: ClusterObserver | None = None
    audit: AuditLog | None = None
    workers: list[WorkerProc] = field(default_factory=list)
    client: Client | None = None
    repo: Path | None = None
    catalog_file: Path | None = None

    # ---------------------------------------------------------------- setup / teardown

    def setup(self) -> None:
        a = self.args
        (self.workdir / "results").mkdir(parents=True)
        (self.workdir / "workspace").mkdir(parents=True)
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        self.audit = AuditLog(self.workdir / "audit.log")
        t = time.monotonic()
        self.plane = BenchPlane(kcm_qps=a.kcm_qps, keep_workdir=a.keep, extra_apiserver_args=[
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit.path}",
            "--audit-log-maxsize=1000"])
        self.plane.start()
        log(f"control plane up in {time.monotonic() - t:.1f}s at {self.plane.server}")
        create_bench_node(self.plane, "bench-node-0")
        self.dev = DevServer(port=free_port(), ui_port=None,
                             log_file=self.workdir / "temporal.log")
        self.dev.start()
        os.environ["TEMPORAL_ADDRESS"] = self.dev.address
        os.environ["TEMPORAL_NAMESPACE"] = "default"
        self.repo = create_example_repo(self.workdir / "repo")
        self.catalog_file = write_catalog(self.workdir / "catalog.json", {
            "b-short": kwok_complete(f"{a.short_job_seconds}s"),
            "b-long": kwok_complete(f"{a.long_job_seconds}s"),
            "b-jitter": kwok_complete(f"{a.jitter_from}s", f"{a.jitter_to}s"),
            "b-hold": kwok_complete("7200s"),
        })
        self.observer = ClusterObserver(self.plane, self.workdir / "results")
        self.observer.start()

    async def connect(self) -> Client:
        if self.client is None:
            self.client = await api.connect()
        return self.client

    def teardown(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                taken = w.stop(timeout=self.args.worker_stop_timeout)
                if taken:
                    log(f"worker {w.name} stopped in {taken:.1f}s")
        if self.observer is not None:
            self.results["bench_watch_streams"] = {"jobs": self.observer.jobs.streams,
                                                   "pods": self.observer.pods.streams}
            self.observer.stop()
        if self.dev is not None:
            with contextlib.suppress(Exception):
                self.dev.stop()
        if self.plane is not None:
            with contextlib.suppress(Exception):
                self.plane.stop()
        log("control plane, dev server and workers stopped")

    # ------------------------------------------------------------------- workers

    def spawn_worker(self, name: str, namespace: str, *, counting: bool,
                     extra_env: dict[str, str] | None = None) -> WorkerProc:
        assert self.plane is not None and self.dev is not None
        kubeconfig = worker_namespace(self.plane, namespace, self.workdir)
        home = self.workdir / f"home-{name}"
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "PYTHONPATH": str(REPO),
            "TEMPORAL_ADDRESS": self.dev.address,
            "TEMPORAL_NAMESPACE": "default",
            "SCANWARD_HOME": str(home),
            "SCANWARD_WORKSPACE": str(self.workdir / "workspace"),
            "SCANWARD_RESULTS": str(self.workdir / "results"),
            "SCANWARD_DATABASE_URL": f"sqlite:///{home / 'scanward.db'}",
            "SCANWARD_TASK_QUEUE": f"bench-{name}-{uuid.uuid4().hex[:8]}",
            "SCANWARD_ALLOW_LOCAL_REPOS": "1",
            "SCANWARD_CATALOG": str(self.catalog_file),
            "SCANWARD_BACKEND": "kubernetes",
            "SCANWARD_KUBECONFIG": str(kubeconfig),
            "SCANWARD_KUBE_NAMESPACE": namespace,
            "SCANWARD_MAX_CONCURRENT_ACTIVITIES": str(self.args.max_concurrent_activities),
            "SCANWARD_GRACEFUL_SHUTDOWN_SECONDS": str(self.args.graceful_shutdown_seconds),
            **(extra_env or {}),
        }
        counters = self.workdir / f"counters-{name}.json" if counting else None
        if counters is not None:
            env["BENCH_COUNTERS_FILE"] = str(counters)
            argv = [sys.executable, str(REPO / "bench" / "counting_worker.py")]
        else:
            argv = [sys.executable, "-m", "worker"]
        w = WorkerProc(name, argv, env, self.workdir / f"worker-{name}.log", counters)
        self.workers.append(w)
        t = time.monotonic()
        w.start()
        w.wait_ready()
        log(f"worker {name} (pid {w.pid}, {' '.join(argv[1:])}) ready in "
            f"{time.monotonic() - t:.1f}s, namespace {namespace}, queue "
            f"{env['SCANWARD_TASK_QUEUE']}")
        return w

    def diag_env(self) -> dict[str, str]:
        """Diagnostic worker options (--diag-*), for both workers; none by default."""
        diag = {}
        if self.args.diag_max_cached_workflows is not None:
            diag["BENCH_MAX_CACHED_WORKFLOWS"] = str(self.args.diag_max_cached_workflows)
        if self.args.diag_unsandboxed:
            diag["BENCH_UNSANDBOXED"] = "1"
        return diag

    async def start_scans(self, w: WorkerProc, scanner: str, count: int) -> list[Any]:
        assert self.repo is not None and self.catalog_file is not None
        client = await self.connect()
        queue = w.env["SCANWARD_TASK_QUEUE"]
        gate = asyncio.Semaphore(self.args.start_concurrency)

        async def one() -> Any:
            request = ScanRequest(repository=self.repo.as_uri(), ref="main",  # type: ignore[union-attr]
                                  scanners=(scanner,), dedupe_key=uuid.uuid4().hex)
            async with gate:
                return await api.start_scan(client, request, task_queue=queue)

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def wait_results(self, handles: list[Any], limit: float) -> list[Any]:
        summaries = await asyncio.wait_for(
            asyncio.gather(*(h.result() for h in handles)), limit)
        bad = [s for s in summaries if s.status is not ScanStatus.COMPLETED]
        if bad:
            raise RuntimeError(f"{len(bad)} scans did not complete: {bad[0]}")
        return list(summaries)

    # --------------------------------------------------------- 1. requests per scan

    async def phase_requests(self, w: WorkerProc, namespace: str) -> None:
        assert self.audit is not None
        user = service_account_user(namespace)
        n = self.args.requests_scans
        rows = []
        for label, scanner, seconds in (
                ("short", "b-short", self.args.short_job_seconds),
                ("long", "b-long", self.args.long_job_seconds)):
            await asyncio.sleep(1.0)
            before = w.counters()
            t0 = time.time()
            handles = await self.start_scans(w, scanner, n)
            await self.wait_results(handles, limit=180 + 3 * seconds + n)
            await asyncio.sleep(1.5)  # anything trailing lands in the window
            t1 = time.time()
            after = w.counters()
            events = self.audit.of(user, t0, t1)
            counts = breakdown(events)
            per_scan = sum(counts.get(k, 0) for k in PER_SCAN)
            watch = sum(counts.get(k, 0) for k in WATCH)
            other = len(events) - per_scan - watch
            client_side: dict[str, Any] = {}
            if before and after:
                client_side = {
                    "backend_requests": after["requests"] - before["requests"],
                    "watch_lists": (after["jobs_lists"] + after["pods_lists"]
                                    - before["jobs_lists"] - before["pods_lists"]),
                    "watch_watches": (after["jobs_watches"] + after["pods_watches"]
                                      - before["jobs_watches"] - before["pods_watches"]),
                }
            row = {
                "job": label, "job_seconds": seconds, "scans": n,
                "window_seconds": round(t1 - t0, 1),
                "audit_total": len(events), "audit_by_kind": counts,
                "per_scan_requests": per_scan, "watch_requests": watch, "other": other,
                "requests_per_scan": round(len(events) / n, 3),
                "per_scan_requests_per_scan": round(per_scan / n, 3),
                "watch_requests_per_scan": round(watch / n, 3),
                "client_counters": client_side,
                "status_codes": dict(Counter(str(e.code) for e in events)),
            }
            rows.append(row)
            log(f"requests, {label} Job ({seconds}s): {len(events)} audit events for {n} "
                f"scans in {t1 - t0:.1f}s: {counts}; client counters {client_side}")
        life = self.audit.of(user, w.started_at, time.time())
        agents = sorted({e.user_agent for e in life})
        self.results["requests"] = {"user": user, "user_agents": agents, "rows": rows}

    # --------------------------------------------------------------- 2. latency

    async def phase_latency(self, w: WorkerProc, namespace: str) -> None:
        assert self.observer is not None and self.audit is not None
        n = self.args.scans_latency
        t0 = time.time()
        handles = await self.start_scans(w, "b-jitter", n)
        started = time.time()
        log(f"latency: {n} scans started in {started - t0:.1f}s")
        await self.wait_results(handles, limit=300 + self.args.jitter_to + 2 * n)
        t1 = time.time()
        log(f"latency: {n} scans completed in {t1 - t0:.1f}s")
        await asyncio.sleep(1.0)
        deltas, to_completed, to_schedule, missing = [], [], [], []
        spans = []
        for h in handles:
            name = job_name(h.id, "b-jitter", 1)
            seen = self.observer.complete_at.get(name)
            history = await h.fetch_history()
            types: dict[int, str] = {}
            scheduled_persist = completed_scanner = None
            for e in history.events:
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    kind = e.activity_task_scheduled_event_attributes.activity_type.name
                    types[e.event_id] = kind
                    if kind == "persist_results" and scheduled_persist is None:
                        scheduled_persist = event_seconds(e)
                elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                    sid = e.activity_task_completed_event_attributes.scheduled_event_id
                    if types.get(sid) == "run_scanner" and completed_scanner is None:
                        completed_scanner = event_seconds(e)
            if seen is None or scheduled_persist is None or completed_scanner is None:
                missing.append(h.id)
                continue
            deltas.append((scheduled_persist - seen) * 1000)
            to_completed.append((completed_scanner - seen) * 1000)
            to_schedule.append((scheduled_persist - completed_scanner) * 1000)
            spans.append(seen)

        def stats(values: list[float]) -> dict[str, float]:
            return {"p50": round(percentile(values, 0.50), 1),
                    "p90": round(percentile(values, 0.90), 1),
                    "p99": round(percentile(values, 0.99), 1),
                    "max": round(max(values), 1) if values else float("nan"),
                    "min": round(min(values), 1) if values else float("nan")}

        per_sec = Counter(int(s) for s in spans)
        user = service_account_user(namespace)
        events = self.audit.of(user, t0, t1)
        self.results["latency"] = {
            "scans": n, "measured": len(deltas), "missing": missing[:5],
            "complete_to_next_step_ms": stats(deltas),
            "complete_to_run_scanner_completed_ms": stats(to_completed),
            "run_scanner_completed_to_persist_scheduled_ms": stats(to_schedule),
            "completions_spread_seconds": round(max(spans) - min(spans), 1) if spans else 0,
            "max_completions_in_one_second": max(per_sec.values()) if per_sec else 0,
            "wall_seconds": round(t1 - t0, 1),
            "audit_requests": len(events), "audit_by_kind": breakdown(events),
            "requests_per_scan": round(len(events) / n, 3),
        }
        log(f"latency: {self.results['latency']}")

    # ------------------------------------------------------------------ 3. memory

    async def phase_memory(self, w: WorkerProc, namespace: str) -> None:
        assert self.observer is not None and self.audit is not None
        a = self.args
        n, warm = a.scans_memory, min(a.warmup, a.scans_memory)
        user = service_account_user(namespace)
        await asyncio.sleep(a.settle_seconds)
        idle = proc_memory(w.pid)
        log(f"memory: idle after start-up {idle}")

        async def wait_running(count: int) -> float:
            t = time.monotonic()
            deadline = t + 120 + 0.5 * count
            last, last_change = -1, t
            while True:
                running = self.observer.running_in(namespace)  # type: ignore[union-attr]
                if running >= count:
                    return time.monotonic() - t
                now = time.monotonic()
                if running != last:
                    last, last_change = running, now
                if now > deadline or now - last_change > 180:
                    raise RuntimeError(f"only {running}/{count} pods Running in {namespace} "
                                       f"after {now - t:.0f}s")
                if w.proc is None or w.proc.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{w.log_text()[-3000:]}")
                await asyncio.sleep(1.0)

        t0 = time.monotonic()
        handles = await self.start_scans(w, "b-hold", warm)
        took = await wait_running(warm)
        await asyncio.sleep(a.settle_seconds)
        warm_mem = proc_memory(w.pid)
        log(f"memory: {warm} waiting (Running after {took:.1f}s): {warm_mem}")
        # The rest in steps, each sampled once its pods are all Running: the slope per
        # step shows whether the cost per scan is flat (e.g. past the Temporal worker's
        # 1,000-workflow cache).
        steps = []
        targets = sorted({warm + round((n - warm) * k / a.memory_steps)
                          for k in range(1, a.memory_steps + 1)})
        have = warm
        for target in targets:
            t1 = time.monotonic()
            handles += await self.start_scans(w, "b-hold", target - have)
            started = time.monotonic() - t1
            took = await wait_running(target)
            await asyncio.sleep(a.settle_seconds)
            sample = proc_memory(w.pid)
            steps.append({"waiting": target, "start_seconds": round(started, 1),
                          "running_after_seconds": round(took + started, 1), **sample})
            log(f"memory: {target} waiting ({target - have} started in {started:.1f}s, all "
                f"Running {took + started:.1f}s after): {sample}")
            have = target
        full = proc_memory(w.pid)
        threads_by_name = thread_names(w.pid)
        starting = w.log_text().count("starting on kubernetes backend")
        log(f"memory: {n} waiting: {full}; run_scanner starts logged: {starting}")
        # The quiet window: everything waits; how much does the worker ask the apiserver?
        q0, c0 = time.time(), cpu_of(w.pid).own
        samples = []
        while time.time() - q0 < a.quiet_seconds:
            await asyncio.sleep(min(5.0, a.quiet_seconds))
            samples.append(proc_memory(w.pid)["rss"])
        q1, c1 = time.time(), cpu_of(w.pid).own
        quiet = self.audit.of(user, q0, q1)
        end = proc_memory(w.pid)
        end_threads = thread_names(w.pid)
        creates = sum(1 for e in self.audit.of(user) if classify(e) == "create jobs")
        denom = max(n - warm, 1)
        self.results["memory"] = {
            "scans": n, "warmup": warm,
            "idle": idle, "warm": warm_mem, "waiting": full, "after_quiet_window": end,
            "bytes_per_waiting_scan_rss": round((full["rss"] - warm_mem["rss"]) / denom),
            "bytes_per_waiting_scan_uss": round((full.get("uss", 0) - warm_mem.get("uss", 0))
                                                / denom),
            "bytes_per_waiting_scan_vs_idle_rss": round((full["rss"] - idle["rss"]) / n),
            "threads_idle": idle["threads"], "threads_warm": warm_mem["threads"],
            "threads_waiting": full["threads"],
            "threads_after_quiet_window": end["threads"],
            "threads_by_name_waiting": threads_by_name,
            "threads_by_name_after_quiet_window": end_threads,
            "steps": steps,
            "pods_running": self.observer.running_in(namespace),
            "run_scanner_started_logged": starting,
            "jobs_created_audit": creates,
            "seconds_to_all_running": round(time.monotonic() - t0, 1),
            "quiet_window_seconds": round(q1 - q0, 1),
            "quiet_requests": len(quiet), "quiet_by_kind": breakdown(quiet),
            "quiet_requests_per_second": round(len(quiet) / (q1 - q0), 4),
            "quiet_cpu_percent": round(100 * (c1 - c0) / (q1 - q0), 1),
            "rss_during_quiet_window": samples,
        }
        log(f"memory: {self.results['memory']}")
        del handles

    # ----------------------------------------------------------------------- run

    async def run(self) -> None:
        a = self.args
        self.results["config"] = {k: v for k, v in vars(a).items() if k != "json"}
        self.results["machine"] = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()}
        self.results["code"] = code_version()
        self.setup()
        try:
            if a.requests_scans or a.scans_latency:
                ns = f"bench-req-{uuid.uuid4().hex[:6]}"
                wa = self.spawn_worker("a", ns, counting=True, extra_env=self.diag_env())
                if a.requests_scans:
                    await self.phase_requests(wa, ns)
                self.results["machine"]["load_after_requests"] = os.getloadavg()
                if a.scans_latency:
                    await self.phase_latency(wa, ns)
                self.results["machine"]["load_after_latency"] = os.getloadavg()
                assert self.plane is not None
                self.results["terminated_watchers_after_a"] = terminated_watchers(self.plane)
                final = wa.counters()
                taken = wa.stop(a.worker_stop_timeout)
                assert self.audit is not None
                life = self.audit.of(service_account_user(ns), wa.started_at, wa.stopped_at)
                kinds = breakdown(life)
                scans = 2 * a.requests_scans + a.scans_latency
                watch = sum(kinds.get(k, 0) for k in WATCH)
                self.results["worker_a"] = {
                    "counters_at_end": final, "stop_seconds": round(taken, 1),
                    "audit_lifetime_by_kind": kinds, "scans": scans,
                    "lifetime_seconds": round(wa.stopped_at - wa.started_at, 1),
                    "watch_requests_lifetime": watch,
                    "watch_requests_per_scan_lifetime": round(watch / max(scans, 1), 4),
                    "requests_per_scan_lifetime": round(len(life) / max(scans, 1), 4),
                }
                log(f"worker a: {self.results['worker_a']}")
            if a.scans_memory:
                ns = f"bench-mem-{uuid.uuid4().hex[:6]}"
                diag = self.diag_env()
                wb = self.spawn_worker("b", ns, counting=bool(diag), extra_env=diag)
                await self.phase_memory(wb, ns)
                self.results["machine"]["load_after_memory"] = os.getloadavg()
                taken = wb.stop(a.worker_stop_timeout)
                assert self.audit is not None
                life = self.audit.of(service_account_user(ns), wb.started_at, wb.stopped_at)
                self.results["memory"]["worker_stop_seconds"] = round(taken, 1)
                self.results["memory"]["audit_lifetime_by_kind"] = breakdown(life)
                assert self.plane is not None
                self.results["terminated_watchers_at_end"] = terminated_watchers(self.plane)
                log(f"worker b (with {a.scans_memory} waiting) stopped in {taken:.1f}s; its "
                    f"requests over its life: {breakdown(life)}")
        finally:
            if self.client is not None:
                self.client = None
            self.teardown()

"""Worker metrics: what a worker serves at ``/metrics`` and what it pushes to a Pushgateway.

Two registries, and one source for every series, so that a Prometheus that scrapes the
worker *and* the Pushgateway never counts an attempt twice:

* ``PUSHED``: counters of work that can end right before the worker dies (scanner
  attempts by outcome, their durations, webhook deliveries). Cumulative per worker
  process. With ``SCANWARD_PUSHGATEWAY`` set, a :class:`Pusher` pushes them under the
  grouping key ``{job="scanward_scanner", instance="<host>-<pid>"}`` when each attempt or
  delivery ends and every interval, and ``/metrics`` leaves them out while it does.
  Without a gateway, ``/metrics`` serves them.
* ``REGISTRY``: the worker's own state, meaningful only while it runs (ready, scans by
  status from Temporal's visibility): scraped, never pushed; a pushed gauge of a dead
  worker would stay in the gateway forever.

Pushgateway hygiene: a clean shutdown deletes the worker's group (after one interval when
its last push changed values, so that a scrape sees them); the group of a crashed worker
is deleted by any live worker once it has not been pushed for ``STALE_INTERVALS``
intervals, and the ``ScanwardPushgatewayStale`` alert fires when no one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import delete_from_gateway, push_to_gateway
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scanward.contract import FailureClass

log = logging.getLogger("scanward.metrics")

PUSH_JOB = "scanward_scanner"
INTERVAL_VARIABLE = "SCANWARD_METRICS_INTERVAL_SECONDS"
DEFAULT_INTERVAL = 30.0
# A group not pushed for this many intervals belongs to a worker that is gone.
STALE_INTERVALS = 20
# worker_shutdown: an attempt a draining worker gave up (retried elsewhere). Its series
# is only ever pushed by a stopping worker, whose group is deleted one interval later: born
# at 1 instead of 0, increase() would never see it.
OUTCOMES = ("succeeded", "cancelled", "worker_shutdown", *(c.value for c in FailureClass))
# A healthy gateway answers in milliseconds. An attempt's push runs before its activity
# completes, without heartbeating: a hung gateway must cost it seconds, not a heartbeat
# timeout (20 s), which would re-run a scanner that ran fine.
PUSH_TIMEOUT = 2.0

PUSHED = CollectorRegistry()
ATTEMPTS = Counter(
    "scanward_scanner_attempts", "Scanner attempts by outcome (succeeded, a failure class, "
    "or cancelled)", ["scanner", "backend", "outcome"], registry=PUSHED)
DURATION = Histogram(
    "scanward_scanner_attempt_seconds", "Wall time of a scanner attempt, start to end",
    ["scanner", "backend"], registry=PUSHED,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200))
# What each attempt was given and scanned, by how it ended: with the OOM rate, the data
# to tune the sizing rule (memory per GiB of checkout; deploy/README.md "Tuning").
MEMORY = Histogram(
    "scanward_scanner_memory_mib", "Memory (MiB) a scanner attempt was given, its Job's "
    "limit, by outcome", ["scanner", "backend", "outcome"], registry=PUSHED,
    buckets=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768))
CHECKOUT = Histogram(
    "scanward_scanner_checkout_mib", "Size (MiB) of the checkout a scanner attempt "
    "scanned, by outcome", ["scanner", "backend", "outcome"], registry=PUSHED,
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000))
DELIVERIES = Counter(
    "scanward_webhook_deliveries", "Webhook delivery attempts by outcome: delivered, "
    "failed (retried), gave_up (the last retry failed), rejected (not retryable)",
    ["host", "outcome"], registry=PUSHED)

REGISTRY = CollectorRegistry()
WORKER_READY = Gauge("scanward_worker_ready", "1 while /readyz answers ready, else 0",
                     registry=REGISTRY)

_pushers: set[Pusher] = set()
_pushers_lock = threading.Lock()


class _Unpushed(Collector):
    """``PUSHED`` as part of ``/metrics``, but only while nothing pushes it."""

    def collect(self) -> Iterable[Metric]:
        with _pushers_lock:
            if _pushers:
                return []
        return list(PUSHED.collect())


REGISTRY.register(_Unpushed())


def initialize(scanners: Iterable[str], backend: str) -> None:
    """Create every (scanner, outcome) series at zero: a counter that first appears at 1
    hides that increment from ``increase()``, and dashboards would miss it."""
    for scanner in scanners:
        DURATION.labels(scanner, backend)
        for outcome in OUTCOMES:
            ATTEMPTS.labels(scanner, backend, outcome)


def record(scanner: str, backend: str, outcome: str, seconds: float, *,
           memory_mib: int | None = None, checkout_bytes: int | None = None) -> None:
    ATTEMPTS.labels(scanner, backend, outcome).inc()
    DURATION.labels(scanner, backend).observe(seconds)
    if memory_mib is not None:
        MEMORY.labels(scanner, backend, outcome).observe(memory_mib)
    if checkout_bytes is not None:
        CHECKOUT.labels(scanner, backend, outcome).observe(checkout_bytes / 2**20)


def webhook_host(url: str) -> str:
    """The label for a webhook target: host and port only (paths and query strings of
    webhook URLs often carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or "invalid"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def record_delivery(url: str, outcome: str) -> None:
    DELIVERIES.labels(webhook_host(url), outcome).inc()


def exposition() -> bytes:
    """The worker's ``/metrics`` in Prometheus text format."""
    return generate_latest(REGISTRY)


def interval_from_env(env: Mapping[str, str]) -> float:
    """``SCANWARD_METRICS_INTERVAL_SECONDS``: how often the worker re-pushes its group and
    surveys scans, and how long a clean shutdown waits before deleting a group it has
    just changed (set it to at least the scrape interval)."""
    raw = env.get(INTERVAL_VARIABLE) or ""
    if not raw.strip():
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        # The form of scanward.env_values' messages: one line, variable, value, form.
        raise ValueError(f"{INTERVAL_VARIABLE}={raw.strip()!r}: expected a number of seconds "
                         "from 0 (exclusive) to 3600")
    return value


class Pusher:
    """Pushes ``PUSHED`` to a Pushgateway, grouped by this worker process."""

    def __init__(self, gateway: str, instance: str | None = None, *,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.gateway = gateway
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self.interval = interval
        self._lock = threading.Lock()
        self._last: bytes | None = None
        self._changed_at: float | None = None  # monotonic time of the last changing push
        self._failing = False  # the last push failed: the gateway is down or hangs
        self._failures = 0

    @property
    def grouping_key(self) -> dict[str, str]:
        return {"instance": self.instance}

    def push(self, *, retry: bool = False) -> bool:
        """Push now, as an attempt or delivery ends. A gateway that is down is logged
        once per outage, never raised (metrics must not fail a scan). While it is down
        (the last push failed) this returns at once: the counters are cumulative, so the
        interval's push (``retry=True``, :meth:`run`) carries them once it is back."""
        if self._failing and not retry:
            return False
        # Waiting behind a push that hangs would be the hang again: give up, the push
        # in flight or the next interval's carries this attempt's counts.
        if not self._lock.acquire(timeout=PUSH_TIMEOUT):
            return False
        try:
            if self._failing and not retry:
                return False
            payload = generate_latest(PUSHED)
            try:
                push_to_gateway(self.gateway, job=PUSH_JOB, registry=PUSHED,
                                grouping_key=self.grouping_key, timeout=PUSH_TIMEOUT)
            except OSError as e:
                self._failed(e)
                return False
            if self._failing:
                log.info("pushing metrics to %s works again (%d pushes failed)",
                         self.gateway, self._failures)
            self._failing, self._failures = False, 0
            if payload != self._last:
                self._last = payload
                self._changed_at = time.monotonic()
            return True
        finally:
            self._lock.release()

    def _failed(self, error: OSError) -> None:
        self._failures += 1
        if not self._failing:  # once per outage, not once per attempt and interval
            log.warning("pushing metrics to %s failed: %s; retrying every %.0fs, attempts "
                        "and deliveries are counted meanwhile", self.gateway, error,
                        self.interval)
        self._failing = True

    def delete(self) -> bool:
        """Delete this worker's group from the gateway."""
        try:
            delete_from_gateway(self.gateway, job=PUSH_JOB, grouping_key=self.grouping_key,
                                timeout=PUSH_TIMEOUT)
        except OSError as e:
            log.warning("deleting metrics group %s from %s failed: %s", self.instance,
                        self.gateway, e)
            return False
        return True

    async def run(self) -> None:
        """Until cancelled: take over ``PUSHED`` from ``/metrics``, push every interval
        (``push_time_seconds`` stays fresh while this worker lives), and delete the
        groups of workers that stopped pushing long ago."""
        with _pushers_lock:
            _pushers.add(self)
        while True:
            # A gateway that takes no push cannot be cleaned either: no second warning.
            if await asyncio.to_thread(self.push, retry=True):
                await asyncio.to_thread(delete_stale_groups, self.gateway,
                                        self.interval * STALE_INTERVALS)
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """On clean shutdown: a last push, then delete the group. When that push (or one
        just before) changed values, wait one interval first so a scrape records them."""
        await asyncio.to_thread(self.push, retry=True)
        if self._changed_at is not None:
            wait = self._changed_at + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        deleted = await asyncio.to_thread(self.delete)
        with _pushers_lock:
            _pushers.discard(self)
        if deleted:
            log.info("deleted metrics group instance=%s from %s", self.instance, self.gateway)


def _url(gateway: str) -> str:
    return gateway if "://" in gateway else f"http://{gateway}"


def groups(gateway: str) -> tuple[list[dict[str, Any]], float]:
    """The gateway's groups (``/api/v1/metrics``) and its clock (the ``Date`` header), so
    that ages never depend on this host's clock."""
    response = httpx.get(f"{_url(gateway)}/api/v1/metrics", timeout=5)
    response.raise_for_status()
    now = time.time()
    with contextlib.suppress(TypeError, ValueError):
        now = parsedate_to_datetime(response.headers["Date"]).timestamp()
    data: list[dict[str, Any]] = response.json().get("data") or []
    return data, now


def stale_groups(found: Iterable[Mapping[str, Any]], now: float, older_than: float,
                 job: str = PUSH_JOB) -> Iterator[dict[str, str]]:
    """Labels of ``job``'s groups last pushed more than ``older_than`` seconds before
    ``now``."""
    for group in found:
        labels: dict[str, str] = dict(group.get("labels") or {})
        if labels.get("job") != job:
            continue
        try:
            pushed = float(group["push_time_seconds"]["metrics"][0]["value"])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if now - pushed > older_than:
            yield labels


def delete_stale_groups(gateway: str, older_than: float, job: str = PUSH_JOB,
                        delete: Callable[..., None] = delete_from_gateway) -> list[str]:
    """Delete ``job``'s groups not pushed for ``older_than`` seconds (workers that
    crashed); returns their instances. Failures are logged: the next round retries."""
    try:
        found, now = groups(gateway)
    except (httpx.HTTPError, ValueError) as e:
        log.warning("listing metrics groups on %s failed: %s", gateway, e)
        return []
    deleted = []
    for labels in stale_groups(found, now, older_than, job):
        key = {k: v for k, v in labels.items() if k != "job"}
        try:
            delete(gateway, job=job, grouping_key=key, timeout=5)
        except OSError as e:
            log.warning("deleting stale metrics group %s failed: %s", key, e)
            continue
        log.info("deleted stale metrics group %s (no push for %.0fs)", key, older_than)
        deleted.append(key.get("instance", ""))
    return deleted


@dataclass(frozen=True)
class ScanCounts:
    """One survey of a task queue's scans (:mod:`scanward.scan_survey`)."""

    open: Mapping[str, int]  # running scans by ScanStatus (running, dead)
    closed_last_hour: Mapping[str, int]  # scans that ended in the last hour, by ScanStatus
    oldest_dead_seconds: float  # how long the longest-dead scan has been dead; 0: none


class ScanGauges(Collector):
    """Scans by ``ScanStatus`` per task queue, as last surveyed; nothing for a queue
    until its first survey, or once its figures are forgotten (too old to be true),
    rather than numbers that would be a lie. When each queue was last surveyed stays."""

    def __init__(self) -> None:
        self._by_queue: dict[str, ScanCounts] = {}
        self._surveyed_at: dict[str, float] = {}  # unix time of the last survey

    def set(self, task_queue: str, counts: ScanCounts) -> None:
        self._by_queue[task_queue] = counts
        self._surveyed_at[task_queue] = time.time()

    def forget(self, task_queue: str) -> None:
        """Drop the queue's figures (its survey has failed for too long)."""
        self._by_queue.pop(task_queue, None)

    def collect(self) -> Iterable[Metric]:
        scans = GaugeMetricFamily("scanward_scans", "Running scans by ScanStatus (running, "
                                  "dead), from Temporal's visibility",
                                  labels=["task_queue", "status"])
        closed = GaugeMetricFamily("scanward_scans_closed_1h", "Scans that ended in the "
                                   "last hour by ScanStatus", labels=["task_queue", "status"])
        oldest = GaugeMetricFamily("scanward_dead_scans_oldest_seconds", "How long the "
                                   "longest-dead running scan has been dead (0: none)",
                                   labels=["task_queue"])
        surveyed = GaugeMetricFamily("scanward_scans_surveyed_timestamp_seconds", "When "
                                     "the scans of a task queue were last surveyed",
                                     labels=["task_queue"])
        for queue, counts in sorted(self._by_queue.items()):
            for status, n in sorted(counts.open.items()):
                scans.add_metric([queue, status], n)
            for status, n in sorted(counts.closed_last_hour.items()):
                closed.add_metric([queue, status], n)
            oldest.add_metric([queue], counts.oldest_dead_seconds)
        for queue, at in sorted(self._surveyed_at.items()):
            surveyed.add_metric([queue], at)
        return [*([scans, closed, oldest] if self._by_queue else []),
                *([surveyed] if self._surveyed_at else [])]


SCANS = ScanGauges()
REGISTRY.register(SCANS)

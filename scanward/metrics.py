"""Scanner-attempt metrics, recorded by the worker that watched each attempt.

Scanner Jobs are often shorter than a scrape interval, and their images are third-party:
so the worker records every attempt (outcome, duration) and, with
``SCANWARD_PUSHGATEWAY`` set, pushes them to a Prometheus Pushgateway as soon as an
attempt ends. The same registry is served at ``/metrics`` on the health port.
"""

from __future__ import annotations

import logging
import os
import socket

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import push_to_gateway

log = logging.getLogger("scanward.metrics")

REGISTRY = CollectorRegistry()
ATTEMPTS = Counter(
    "scanward_scanner_attempts", "Scanner attempts by outcome (succeeded, a failure class, "
    "or cancelled)", ["scanner", "backend", "outcome"], registry=REGISTRY)
DURATION = Histogram(
    "scanward_scanner_attempt_seconds", "Wall time of a scanner attempt, start to end",
    ["scanner", "backend"], registry=REGISTRY,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200))
PUSH_JOB = "scanward_scanner"


def record(scanner: str, backend: str, outcome: str, seconds: float) -> None:
    ATTEMPTS.labels(scanner, backend, outcome).inc()
    DURATION.labels(scanner, backend).observe(seconds)


def exposition() -> bytes:
    """The registry in Prometheus text format (for ``/metrics``)."""
    return generate_latest(REGISTRY)


class Pusher:
    """Pushes the registry to a Pushgateway, grouped by this worker instance."""

    def __init__(self, gateway: str, instance: str | None = None) -> None:
        self.gateway = gateway
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"

    def push(self) -> bool:
        """Push now; a gateway that is down is logged, never raised (metrics must not
        fail a scan)."""
        try:
            push_to_gateway(self.gateway, job=PUSH_JOB, registry=REGISTRY,
                            grouping_key={"instance": self.instance}, timeout=5)
        except OSError as e:
            log.warning("pushing metrics to %s failed: %s", self.gateway, e)
            return False
        return True

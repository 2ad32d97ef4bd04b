"""A real Prometheus stack for the tests: Debian's ``prometheus`` and
``prometheus-pushgateway`` binaries (``.ci/run`` installs them), started once per session
on free loopback ports, data in a temp dir.

Prometheus scrapes every second: the Pushgateway (``honor_labels: true``, so pushed
``job``/``instance`` labels are kept), and the workers the tests register with
:meth:`PrometheusStack.scrape` (their health port's ``/metrics`` as job
``scanward-worker``, their Temporal runtime endpoint ``SCANWARD_METRICS_PORT`` as job
``scanward-temporal``), through ``file_sd`` files Prometheus re-reads when they change.
It loads ``deploy/prometheus/scanward-rules.yaml``, so the alert rules run for real.

When the binaries are missing the fixture FAILS and says how to install them; it never
skips.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from scanward.devserver import free_port

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "scanward-rules.yaml"
SCRAPE_INTERVAL = "1s"
WORKER_JOB = "scanward-worker"
TEMPORAL_JOB = "scanward-temporal"


def binary(*names: str) -> str:
    """The first of ``names`` on PATH or in /usr/bin; fails the test when none is."""
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}",
                                                                         os.X_OK) else None)
        if found:
            return found
    pytest.fail(f"{' or '.join(names)} is not installed: run .ci/run, or "
                "apt-get install -y prometheus prometheus-pushgateway")


def config(pushgateway: str, sd_dir: Path, rules: Path = RULES) -> dict[str, Any]:
    """The Prometheus configuration of the test stack."""
    def file_sd(job: str) -> dict[str, Any]:
        return {"job_name": job, "file_sd_configs": [{"files": [str(sd_dir / f"{job}-*.json")],
                                                      "refresh_interval": "1s"}]}
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL,
                   "scrape_timeout": SCRAPE_INTERVAL},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [pushgateway]}]},
            file_sd(WORKER_JOB),
            file_sd(TEMPORAL_JOB),
        ],
    }


class PrometheusStack:
    """A running Pushgateway and Prometheus, and helpers to use them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sd_dir = root / "sd"
        self.sd_dir.mkdir()
        self.pushgateway = f"127.0.0.1:{free_port()}"
        self.url = f"http://127.0.0.1:{free_port()}"
        self._procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> PrometheusStack:
        gateway_bin = binary("prometheus-pushgateway", "pushgateway")
        prometheus_bin = binary("prometheus")
        # Debian's default keeps groups in /var/lib: in memory here, each session fresh.
        self._spawn("pushgateway", [gateway_bin, f"--web.listen-address={self.pushgateway}",
                                    "--persistence.file=", "--log.level=warn"])
        cfg = self.root / "prometheus.yml"
        cfg.write_text(json.dumps(config(self.pushgateway, self.sd_dir)))  # JSON is YAML
        self._spawn("prometheus", [
            prometheus_bin, f"--config.file={cfg}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
            "--log.level=warn"])
        self._ready(f"http://{self.pushgateway}/-/ready", "pushgateway")
        self._ready(f"{self.url}/-/ready", "prometheus")
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        self._procs.append((proc, log))

    def _ready(self, url: str, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, log in self._procs:
                if proc.poll() is not None:
                    pytest.fail(f"{cast(list[str], proc.args)[0]!s} exited {proc.returncode}:\n"
                                f"{log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"{what} not ready after {timeout}s")

    def stop(self) -> None:
        for proc, _ in self._procs:
            proc.terminate()
        for proc, _ in self._procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    # ------------------------------------------------------------------ targets

    def scrape(self, *, health_port: int | None = None, metrics_port: int | None = None,
               labels: dict[str, str] | None = None) -> str:
        """Have Prometheus scrape a worker's endpoints; returns a key for
        :meth:`unscrape`. Written atomically: Prometheus must never read half a file."""
        key = uuid.uuid4().hex[:10]
        for job, port in ((WORKER_JOB, health_port), (TEMPORAL_JOB, metrics_port)):
            if port is None:
                continue
            path = self.sd_dir / f"{job}-{key}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"],
                                        "labels": labels or {}}]))
            tmp.rename(path)
        return key

    def unscrape(self, key: str) -> None:
        for path in self.sd_dir.glob(f"*-{key}.json"):
            path.unlink()

    # ------------------------------------------------------------------ queries

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result (a list of series, or one scalar as a series)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {body.get('error', body)}")
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, promql: str, by: str | None = None) -> dict[str, float]:
        """``{label value of by (or ""): value}`` of an instant query."""
        return {s["metric"].get(by, "") if by else "": float(s["value"][1])
                for s in self.query(promql)}

    def wait(self, promql: str, check: Any = bool, timeout: float = 60,
             by: str | None = None) -> dict[str, float]:
        """Poll until ``check(values(promql))`` holds; returns those values."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.values(promql, by)
                if check(last):
                    return dict(last)
            except (httpx.HTTPError, AssertionError) as e:
                last = e
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s waiting on {promql!r}; last: {last!r}")

    def alerts(self) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        alerts: list[dict[str, Any]] = body["data"]["alerts"]
        return alerts

    def rule_groups(self) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        groups: list[dict[str, Any]] = body["data"]["groups"]
        return groups

    def gateway_groups(self) -> list[dict[str, Any]]:
        body = httpx.get(f"http://{self.pushgateway}/api/v1/metrics", timeout=10).json()
        groups: list[dict[str, Any]] = body.get("data") or []
        return groups


def finite(result: list[dict[str, Any]]) -> list[float]:
    """The finite sample values of a query result (NaN is no data)."""
    values = [float(s["value"][1]) for s in result]
    return [v for v in values if math.isfinite(v)]


@pytest.fixture(scope="session")
def prometheus_stack() -> Iterator[PrometheusStack]:
    root = Path(tempfile.mkdtemp(prefix="scanward-prometheus-"))
    stack = PrometheusStack(root)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scrape_targets(prometheus_stack: PrometheusStack) -> Iterator[list[str]]:
    """Keys of targets a test registered with ``prometheus_stack.scrape``: removed
    after the test, so a stopped worker is not scraped forever."""
    keys: list[str] = []
    try:
        yield keys
    finally:
        for key in keys:
            prometheus_stack.unscrape(key)

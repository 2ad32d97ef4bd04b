"""The worker processes the bench starts, and what it reads of them from /proc: memory
(RSS, PSS, USS) and threads by name (CPU: scanward.load.stack.cpu_of)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k8s_bench_log import log
from k8s_bench_repo import REPO


@dataclass
class WorkerProc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    counters_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    stopped_at: float = 0.0

    def start(self) -> None:
        self.started_at = time.time()
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out,
                                         stderr=out, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "worker polling" in self.log_text():
                return
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.name} not ready after {timeout}s:\n"
                           f"{self.log_text()[-3000:]}")

    def counters(self, timeout: float = 10) -> dict[str, Any]:
        """Ask the counting worker (SIGUSR1) for its client-side counters."""
        if self.counters_path is None or self.proc is None or self.proc.poll() is not None:
            return {}
        before = self._read_counters().get("seq", 0)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self._read_counters()
            if data.get("seq", 0) > before:
                return data
            time.sleep(0.05)
        return {}

    def _read_counters(self) -> dict[str, Any]:
        assert self.counters_path is not None
        try:
            result: dict[str, Any] = json.loads(self.counters_path.read_text())
            return result
        except (OSError, ValueError):
            return {}

    def stop(self, timeout: float = 180) -> float:
        """SIGTERM (graceful shutdown), SIGKILL after ``timeout``; returns seconds taken."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"worker {self.name} did not stop in {timeout}s: SIGKILL")
            self.proc.kill()
            self.proc.wait(30)
        self.stopped_at = time.time()
        return time.monotonic() - started


def proc_memory(pid: int) -> dict[str, int]:
    """RSS and thread count from /proc/<pid>/status; PSS/USS from smaps_rollup (bytes)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            out["rss"] = int(value.split()[0]) * 1024
        elif key == "Threads":
            out["threads"] = int(value.strip())
    with contextlib.suppress(OSError):
        rollup: dict[str, int] = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                rollup[key.strip()] = int(parts[0]) * 1024
        out["pss"] = rollup.get("Pss", 0)
        out["uss"] = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    return out


def thread_names(pid: int) -> dict[str, int]:
    """Threads by name (/proc/<pid>/task/*/comm): Python 3.11 threads keep the process
    name, the Temporal core's tokio threads are "tokio-runtime-w"."""
    names: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            names[(task / "comm").read_text().strip()] += 1
    return dict(names)


"""Repositories for the synthetic scanner: one git repository per load run, one commit
(tip of a branch) per behaviour, each carrying the ``.scanward-synthetic.json`` that
tells the scanner how long to take and how to end. Scans name the commit, so no worker
has to resolve a ref first."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanward.synthetic_scanner import CONFIG_FILE

APP_FILE = "app.py"
_APP_LINES = 200  # findings point at lines of this file (the store checks paths exist)


@dataclass(frozen=True)
class Behaviour:
    """What the synthetic scanner does on a scan of one commit."""

    outcome: str = "ok"  # ok | crash_then_ok | crash | oom_then_ok (scanward.synthetic_scanner)
    seconds: float = 0.0
    findings: int = 3
    crash_attempts: int = 1
    stamps: str | None = None  # a directory for start/stop stamps
    memory_mib: int = 0  # what the scan holds: a memory limit at or below it OOM-kills it

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"outcome": self.outcome, "seconds": self.seconds,
                                  "findings": min(self.findings, _APP_LINES),
                                  "crash_attempts": self.crash_attempts, "path": APP_FILE}
        if self.stamps:
            config["stamps"] = self.stamps
        if self.memory_mib:
            config["memory_mib"] = self.memory_mib
        return config


class LoadRepo:
    """A local git repository whose branches are behaviours; :attr:`commits` maps each
    behaviour's name to its commit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.commits: dict[str, str] = {}
        root.mkdir(parents=True, exist_ok=True)
        self._git("init", "-q", "-b", "main")
        # Workers fetch by commit (depth 1): allowed for any commit of this repository.
        self._git("config", "uploadpack.allowAnySHA1InWant", "true")
        lines = "".join(f"value_{i} = {i}  # synthetic line {i + 1}\n" for i in range(_APP_LINES))
        (root / APP_FILE).write_text(lines)

    @property
    def url(self) -> str:
        return self.root.resolve().as_uri()

    def add(self, name: str, behaviour: Behaviour) -> str:
        """Commit ``behaviour`` on branch ``name``; returns the commit."""
        self._git("checkout", "-q", "-B", name)
        (self.root / CONFIG_FILE).write_text(json.dumps(behaviour.config(), indent=1) + "\n")
        self._git("add", "-A")
        self._git("-c", "user.name=scanward load", "-c", "user.email=load@scanward.invalid",
                  "commit", "-q", "--allow-empty", "-m", f"behaviour {name}")
        commit = self._git("rev-parse", "HEAD")
        self.commits[name] = commit
        return commit

    def _git(self, *args: str) -> str:
        done = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True,
                              check=False, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                "HOME": str(self.root),
                                                "GIT_CONFIG_NOSYSTEM": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"git {args[0]} in {self.root}: {done.stderr.strip()}")
        return done.stdout.strip()

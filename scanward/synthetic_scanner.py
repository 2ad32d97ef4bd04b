"""The ``synthetic`` scanner of the built-in catalog: a stand-in whose duration and
outcome the scanned repository chooses, so that a load test drives the whole real path
(clone, job backend, persist, notify) with scanners that behave as it asks.

    python -m scanward.synthetic_scanner SOURCE SARIF

What to do is read from ``SOURCE/.scanward-synthetic.json`` (the load tool commits it
into the repositories it scans; absent, the scanner succeeds at once with one finding)::

    {"outcome": "ok",            # ok | crash_then_ok | crash
     "crash_attempts": 1,        # crash_then_ok: attempts that crash before one succeeds
     "seconds": 0.0,             # how long the scan takes
     "findings": 1,              # results in the SARIF (each distinct)
     "stamps": "/dir"}           # optional: append start/stop lines to /dir/stamps.log

The attempt number comes from the SARIF path (``.../attempt-N/results.sarif``), so
"crash then succeed" needs no state of its own. OOM is not simulated: only a real
memory limit (a Kubernetes Job's) can OOM-kill a process, and faking the exit code on
the local backend would only test the fake. Exit codes: 0 success, 3 a crash, 2 a
configuration this scanner does not understand (bad input: retrying cannot fix it).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

CONFIG_FILE = ".scanward-synthetic.json"
OUTCOMES = ("ok", "crash_then_ok", "crash")
EXIT_CRASH = 3
EXIT_BAD_INPUT = 2
STAMPS_FILE = "stamps.log"


def attempt_of(sarif: Path) -> int:
    """The attempt number in ``.../attempt-N/results.sarif`` (1 if the path has none)."""
    match = re.fullmatch(r"attempt-(\d+)", sarif.parent.name)
    return int(match.group(1)) if match else 1


def read_config(source: Path) -> dict[str, Any]:
    path = source / CONFIG_FILE
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{CONFIG_FILE}: expected a JSON object")
    outcome = config.get("outcome", "ok")
    if outcome not in OUTCOMES:
        raise ValueError(f"{CONFIG_FILE}: outcome {outcome!r} is not one of {OUTCOMES} "
                         "(oom_killed needs a real memory limit: kubernetes backend)")
    return config


def sarif_document(findings: int, path: str) -> dict[str, Any]:
    """A valid SARIF 2.1.0 log with ``findings`` distinct results in ``path``."""
    levels = ("error", "warning", "note")
    results = [{
        "ruleId": f"SYN{i % 10:03d}",
        "level": levels[i % 3],
        "message": {"text": f"synthetic finding {i}"},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": path},
                                            "region": {"startLine": i + 1}}}],
    } for i in range(findings)]
    rules = [{"id": f"SYN{i:03d}", "shortDescription": {"text": f"synthetic rule {i}"}}
             for i in range(min(findings, 10))]
    return {"version": "2.1.0",
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "runs": [{"tool": {"driver": {"name": "synthetic", "rules": rules}},
                      "results": results}]}


def _stamp(stamps: str | None, what: str, sarif: Path) -> None:
    """One line per event, appended with O_APPEND (atomic for lines this short), so that
    concurrent scanners can be observed from outside: ``start|stop <time> <scan> <n>``."""
    if not stamps:
        return
    scan_id = sarif.parents[2].name if len(sarif.parents) > 2 else "?"
    line = f"{what} {time.time():.6f} {scan_id} {attempt_of(sarif)}\n".encode()
    fd = os.open(Path(stamps) / STAMPS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m scanward.synthetic_scanner SOURCE SARIF", file=sys.stderr)
        return EXIT_BAD_INPUT
    source, sarif = Path(argv[0]), Path(argv[1])
    try:
        config = read_config(source)
    except ValueError as e:
        print(f"synthetic scanner: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    attempt = attempt_of(sarif)
    outcome = config.get("outcome", "ok")
    stamps = config.get("stamps")
    print(f"synthetic scanner: attempt {attempt}, outcome {outcome}", flush=True)
    _stamp(stamps, "start", sarif)
    try:
        time.sleep(float(config.get("seconds", 0)))
        if outcome == "crash" or (outcome == "crash_then_ok"
                                  and attempt <= int(config.get("crash_attempts", 1))):
            print(f"synthetic crash on attempt {attempt}", file=sys.stderr)
            return EXIT_CRASH
        target = str(config.get("path", CONFIG_FILE))
        sarif.write_text(json.dumps(sarif_document(int(config.get("findings", 1)), target)))
        return 0
    finally:
        _stamp(stamps, "stop", sarif)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

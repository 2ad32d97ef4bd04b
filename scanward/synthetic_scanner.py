"""The ``synthetic`` scanner of the built-in catalog: a stand-in whose duration and
outcome the scanned repository chooses, so that a load test drives the whole real path
(clone, job backend, persist, notify) with scanners that behave as it asks.

    python -m scanward.synthetic_scanner SOURCE SARIF

What to do is read from ``SOURCE/.scanward-synthetic.json`` (the load tool commits it
into the repositories it scans; absent, the scanner succeeds at once with one finding)::

    {"outcome": "ok",            # ok | crash_then_ok | crash | oom_then_ok
     "crash_attempts": 1,        # crash_then_ok: attempts that crash before one succeeds
     "memory_mib": 0,            # MiB the scan holds (on top of the interpreter) while it runs
     "seconds": 0.0,             # how long the scan takes
     "findings": 1,              # results in the SARIF (each distinct)
     "stamps": "/dir"}           # optional: append start/stop lines to /dir/stamps.log

The repository is untrusted even here (any request may name this scanner): it only
appends to a ``stamps.log`` its observer created (:func:`prepare_stamps`), never creates
a file, and holds at most ``MAX_MEMORY_MIB`` (the catalog's memory cap).

The attempt number comes from the SARIF path (``.../attempt-N/results.sarif``) or, in a
Kubernetes pod (whose results volume is mounted at the attempt's directory), from the
pod's name (its Job's ``...-a<N>`` plus a suffix), so "crash then succeed" needs no
state of its own. ``oom_then_ok`` is an ``ok`` scan that needs ``memory_mib``: the
memory is really allocated, so only a real memory limit (a Kubernetes Job's) OOM-kills
it, until the workflow's retries have doubled the limit past what it needs; without a
limit (the local backend) it simply succeeds. On a test control plane, where no
container runs, :func:`plan` tells the pod stand-in (``scanward.load.stand_in``) how the
kernel would have ended it. Exit codes: 0 success, 3 a crash, 2 a configuration this
scanner does not understand (bad input: retrying cannot fix it), 137 (SIGKILL) the
OOM killer's.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = ".scanward-synthetic.json"
OUTCOMES = ("ok", "crash_then_ok", "crash", "oom_then_ok")
EXIT_CRASH = 3
EXIT_BAD_INPUT = 2
EXIT_OOM_KILLED = 137  # 128 + SIGKILL, as the kubelet reports an OOM-killed container
STAMPS_FILE = "stamps.log"
MIB = 1024 * 1024
MAX_MEMORY_MIB = 1024  # the catalog entry's max_memory_mib too: no limit holds more
MAX_FINDINGS = 100_000
# A Job pod's name: its Job's (``sw-<hash>-<scanner>-a<N>``, job_spec.job_name) and the
# 5-character suffix the Job controller adds.
_POD_NAME = re.compile(r"-a(\d+)-[a-z0-9]{5}")


def attempt_of(sarif: Path, hostname: str | None = None) -> int:
    """The attempt number in ``.../attempt-N/results.sarif``; else in the pod's name
    (``hostname``, default ``$HOSTNAME``); else 1."""
    match = re.fullmatch(r"attempt-(\d+)", sarif.parent.name)
    if match:
        return int(match.group(1))
    pod = re.fullmatch(r"sw-[0-9a-f]+-.+" + _POD_NAME.pattern,
                       os.environ.get("HOSTNAME", "") if hostname is None else hostname)
    return int(pod.group(1)) if pod else 1


def read_config(source: Path) -> dict[str, Any]:
    path = source / CONFIG_FILE
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{CONFIG_FILE}: expected a JSON object")
    outcome = config.get("outcome", "ok")
    if outcome not in OUTCOMES:
        raise ValueError(f"{CONFIG_FILE}: outcome {outcome!r} is not one of {OUTCOMES}")
    memory = config.get("memory_mib", 0)
    if not isinstance(memory, int) or memory < 0:
        raise ValueError(f"{CONFIG_FILE}: memory_mib {memory!r}: expected a whole number "
                         "of MiB, 0 or more")
    if memory > MAX_MEMORY_MIB:
        raise ValueError(f"{CONFIG_FILE}: memory_mib {memory} is above {MAX_MEMORY_MIB}")
    findings = config.get("findings", 1)
    if not isinstance(findings, int) or not 0 <= findings <= MAX_FINDINGS:
        raise ValueError(f"{CONFIG_FILE}: findings {findings!r}: expected 0 to "
                         f"{MAX_FINDINGS:,}")
    if outcome == "oom_then_ok" and memory == 0:
        raise ValueError(f"{CONFIG_FILE}: oom_then_ok needs memory_mib (what the scan "
                         "needs; a memory limit at or below it OOM-kills the attempt)")
    return config


@dataclass(frozen=True)
class Plan:
    """How one attempt ends: the exit code (``reason`` as the kubelet would name it),
    after ``seconds``, with ``findings`` results in ``path`` when it succeeds, and the
    lines it prints."""

    exit_code: int
    reason: str
    seconds: float
    findings: int
    path: str
    log: tuple[str, ...]


def plan(config: dict[str, Any], attempt: int, memory_limit_mib: int | None = None) -> Plan:
    """What the scanner does on ``attempt`` under a memory limit (None: none). The OOM
    kill is the kernel's, at once (the memory is allocated first): a limit at or below
    ``memory_mib`` (which comes on top of the interpreter's own) cannot hold it."""
    outcome = config.get("outcome", "ok")
    seconds = float(config.get("seconds", 0))
    findings = int(config.get("findings", 1))
    path = str(config.get("path", CONFIG_FILE))
    said = f"synthetic scanner: attempt {attempt}, outcome {outcome}"
    memory = int(config.get("memory_mib", 0))
    if memory and memory_limit_mib is not None and memory_limit_mib <= memory:
        return Plan(EXIT_OOM_KILLED, "OOMKilled", 0.0, 0, path,
                    (said, f"holding {memory} MiB under a {memory_limit_mib} MiB limit"))
    if outcome == "crash" or (outcome == "crash_then_ok"
                              and attempt <= int(config.get("crash_attempts", 1))):
        return Plan(EXIT_CRASH, "Error", seconds, 0, path,
                    (said, f"synthetic crash on attempt {attempt}"))
    return Plan(0, "Completed", seconds, findings, path, (said,))


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


def prepare_stamps(directory: Path) -> Path:
    """Create the (empty) ``stamps.log`` in ``directory`` that scans may then append to."""
    path = directory / STAMPS_FILE
    path.touch()
    return path


def _stamp(stamps: str | None, what: str, sarif: Path) -> None:
    """One line per event, appended with O_APPEND (atomic for lines this short), so that
    concurrent scanners can be observed from outside: ``start|stop <time> <scan> <n>``.
    Only to a regular ``stamps.log`` that exists: the directory comes from the scanned
    repository, which must not make the worker create files where it likes."""
    if not stamps:
        return
    scan_id = sarif.parents[2].name if len(sarif.parents) > 2 else "?"
    line = f"{what} {time.time():.6f} {scan_id} {attempt_of(sarif)}\n".encode()
    try:
        # O_NONBLOCK: a FIFO there fails at once instead of blocking the scanner.
        fd = os.open(Path(stamps) / STAMPS_FILE,
                     os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        print(f"synthetic scanner: not stamping: {e}", file=sys.stderr)
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            print(f"synthetic scanner: not stamping: {stamps}/{STAMPS_FILE} is not a file",
                  file=sys.stderr)
            return
        os.write(fd, line)
    finally:
        os.close(fd)


def hold(mib: int) -> bytes:
    """``mib`` MiB, every page written (resident, so a memory limit below it is met)."""
    return b"\x01" * (mib * MIB)


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
    stamps = config.get("stamps")
    # No limit given: a real one, if any, is the kernel's to enforce on what we hold.
    what = plan(config, attempt)
    print(what.log[0], flush=True)
    _stamp(stamps, "start", sarif)
    try:
        held = hold(int(config.get("memory_mib", 0)))
        time.sleep(what.seconds)
        del held
        if what.exit_code:
            print(what.log[-1], file=sys.stderr)
            return what.exit_code
        sarif.write_text(json.dumps(sarif_document(what.findings, what.path)))
        return 0
    finally:
        _stamp(stamps, "stop", sarif)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A scriptable stand-in scanner for the failure-path tests (a real subprocess, run by
the real local backend): its behaviour is chosen by its first argument.

    fake_scanner.py MODE SOURCE SARIF [STATE_DIR]

ok        write a valid SARIF with one finding per .py file, exit 0
flaky     exit 3 ("crash") until STATE_DIR/fixed exists, then behave like ok
sleepy    write STATE_DIR/pid, sleep STATE_DIR/seconds (default 30) seconds, then ok
broken    write a file that is not SARIF, exit 0
empty     print a diagnostic to stderr, write an empty SARIF file, exit 1 (a "findings"
          code in the catalogs that declare it)
badinput  exit 2, which the test catalog declares a bad-input exit code
many      write a big SARIF: STATE_DIR/count (default 100000) distinct findings spread
          over the .py files, exit 0 (persisting it takes seconds)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def write_sarif(source: Path, sarif: Path) -> None:
    results = [
        {
            "ruleId": "FAKE001",
            "level": "warning",
            "message": {"text": f"fake finding in {p.name}"},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": str(p.relative_to(source))},
                "region": {"startLine": 1}}}],
        }
        for p in sorted(source.rglob("*.py"))
    ]
    doc = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "fake"}},
                                          "results": results}]}
    sarif.write_text(json.dumps(doc))


def write_many_sarif(source: Path, sarif: Path, count: int) -> None:
    """``count`` distinct results (each its own line and message), written as a stream."""
    files = [str(p.relative_to(source)) for p in sorted(source.rglob("*.py"))]
    with sarif.open("w") as out:
        out.write('{"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "fake"}}, '
                  '"results": [')
        for i in range(count):
            result = {
                "ruleId": f"MANY{i % 7:03d}",
                "level": ("error", "warning", "note")[i % 3],
                "message": {"text": f"fake finding number {i}"},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": files[i % len(files)]},
                    "region": {"startLine": i // len(files) + 1, "startColumn": 1}}}],
            }
            out.write(("," if i else "") + json.dumps(result))
        out.write("]}]}")


def main() -> int:
    mode, source, sarif = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    state = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    print(f"fake scanner {mode} on {source}", flush=True)
    if state is not None and os.environ.get("TRACEPARENT"):
        (state / "traceparent").write_text(os.environ["TRACEPARENT"])
    if mode == "flaky" and not (state and (state / "fixed").exists()):
        print("simulated crash: state not fixed", file=sys.stderr)
        return 3
    if mode == "sleepy":
        assert state is not None
        (state / "pid").write_text(str(os.getpid()))
        seconds = float((state / "seconds").read_text()) if (state / "seconds").exists() else 30
        time.sleep(seconds)
    if mode == "broken":
        sarif.write_text("{ this is not json")
        return 0
    if mode == "empty":
        print("fatal: rule pack failed to load, no results written", file=sys.stderr)
        sarif.write_text("")
        return 1
    if mode == "badinput":
        print("cannot parse input", file=sys.stderr)
        return 2
    if mode == "many":
        count_file = state / "count" if state is not None else None
        count = int(count_file.read_text()) if count_file and count_file.exists() else 100_000
        write_many_sarif(source, sarif, count)
        return 0
    write_sarif(source, sarif)
    return 0


if __name__ == "__main__":
    sys.exit(main())

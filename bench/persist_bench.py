"""persist_results, measured: wall time and peak memory of persisting 100,000 findings
from a generated SARIF (~60 MB) into SQLite.

    .venv/bin/python bench/persist_bench.py                   # 100,000 findings
    .venv/bin/python bench/persist_bench.py --findings 20000  # smaller
    .venv/bin/python bench/persist_bench.py --tree /path/to/other/checkout  # e.g. an
                                                    # older scanward, for comparison

The parent generates a bandit-shaped SARIF (snippets, columns, properties) over a
checkout of 200 files, then runs the persist in a fresh child process: it imports what a
worker imports (``worker``: temporalio, the store, both job backends), opens the SQLite
store, and runs the real ``ResultActivities.persist_results`` in Temporal's
``ActivityEnvironment`` (so heartbeats are real calls, counted here). The child reports:

* the persist's wall time;
* its RSS after the imports (the baseline any worker has) and its peak RSS (VmHWM, the
  kernel's high-water mark of the whole process), and their difference;
* the findings stored and the heartbeats sent.

The figures are the ones measured in the run that prints them; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCAN_ID = "scan-bench-0123456789abcdef0123"
FILES = 200


def generate(checkout: Path, sarif: Path, findings: int) -> None:
    """A bandit-shaped SARIF with ``findings`` distinct results over FILES files."""
    for i in range(FILES):
        d = checkout / f"pkg{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"module_{i}.py").write_text("import random\n")
    rules = [{"id": f"B{300 + k}", "name": f"rule_{k}",
              "properties": {"tags": ["security"], "precision": "high"}} for k in range(40)]
    with sarif.open("w") as out:
        out.write(json.dumps({"version": "2.1.0", "runs": [
            {"tool": {"driver": {"name": "Bandit", "rules": rules}}, "results": []}]})[:-4])
        for i in range(findings):
            line = i // FILES + 1
            snippet = f"    value_{i} = random.random() + helper_{i % 97}(data[{i % 13}])\n"
            result = {
                "ruleId": f"B{300 + i % 40}", "ruleIndex": i % 40, "level": "warning",
                "message": {"text": "Standard pseudo-random generators are not suitable for "
                                    f"security/cryptographic purposes (case {i})."},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": f"pkg{i % FILES % 10}/module_{i % FILES}.py"},
                    "region": {"startLine": line, "endLine": line, "startColumn": 13,
                               "endColumn": 28, "snippet": {"text": snippet}},
                    "contextRegion": {"startLine": max(line - 1, 1), "endLine": line + 1,
                                      "snippet": {"text": "\n" + snippet + "\n"}}}}],
                "properties": {"issue_confidence": "HIGH", "issue_severity": "LOW"},
            }
            out.write(("," if i else "") + json.dumps(result))
        out.write("]}]}")


def _vm(field: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(work: Path) -> dict[str, Any]:
    """Runs in the measured process: import like a worker, then persist once."""
    from temporalio.testing import ActivityEnvironment

    import worker  # noqa: F401  (what every worker process holds before any persist)
    from activities.results import ResultActivities
    from scanward.contract import PersistInput
    from scanward.store import Store, sqlite_url

    store = Store.open(sqlite_url(work / "scanward.db"))
    activities = ResultActivities(store, work / "workspace", work / "results")
    env = ActivityEnvironment()
    heartbeats = [0]

    def beat(*_: Any) -> None:
        heartbeats[0] += 1

    env.on_heartbeat = beat
    baseline = _vm("VmRSS")
    started = time.monotonic()
    result = env.run(activities.persist_results, PersistInput(
        scan_id=SCAN_ID, tenant="bench", repository="https://example.com/bench.git",
        ref="main", commit="0" * 40, scanner="bandit", attempt=1,
        sarif_subpath=f"{SCAN_ID}/bandit/attempt-1/results.sarif"))
    wall = time.monotonic() - started
    peak = _vm("VmHWM")
    stored = len(store.findings(SCAN_ID))
    store.close()
    return {"wall_seconds": round(wall, 2), "baseline_rss_mib": round(baseline / 1024, 1),
            "peak_rss_mib": round(peak / 1024, 1),
            "peak_over_baseline_mib": round((peak - baseline) / 1024, 1),
            "finding_count": result.finding_count, "stored": stored,
            "heartbeats": heartbeats[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--findings", type=int, default=100_000)
    parser.add_argument("--tree", type=Path, default=REPO,
                        help="the scanward source tree to measure (default: this one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0

    with tempfile.TemporaryDirectory(prefix="persist-bench-") as tmp:
        work = Path(tmp)
        checkout = work / "workspace" / SCAN_ID / "src"
        sarif = work / "results" / SCAN_ID / "bandit" / "attempt-1" / "results.sarif"
        sarif.parent.mkdir(parents=True)
        started = time.monotonic()
        generate(checkout, sarif, args.findings)
        size_mb = sarif.stat().st_size / 1e6
        print(f"generated {args.findings:,} findings: {size_mb:.1f} MB SARIF in "
              f"{time.monotonic() - started:.1f} s")
        env = {**os.environ, "PYTHONPATH": str(args.tree.resolve())}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                               str(work)], cwd=args.tree, env=env, capture_output=True,
                              text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
    figures = {"tree": str(args.tree), "findings": args.findings,
               "sarif_mb": round(size_mb, 1), **figures}
    for key, value in figures.items():
        print(f"{key:>24}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long finalize_scan's lifecycle takes for big scans: two finished scans of one ref
with N findings each (10% fixed, 10% new, the rest existing and moved 5 lines), stored
as persist_results stores them, then ``Store.compute_lifecycle`` of each (what the
activity runs after ``finish_scan``) and a second call (a retried activity reads).

    .venv/bin/python bench/lifecycle_bench.py [--findings 100000] [--database URL]

Without --database: a fresh SQLite file in a temp dir. For PostgreSQL pass an empty
database's URL (each run needs a fresh one: scan ids repeat).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scanward.contract import (
    Finding,
    ScannerRun,
    ScannerStatus,
    ScanStatus,
    ScanSummary,
    Severity,
)
from scanward.store import Store, sqlite_url

BATCH = 1_000  # as persist_results


def digest(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def store_scan(store: Store, number: int, count: int, *, shift: int, skip: int) -> str:
    """A finished scan whose findings k (k % 10 != skip) keep their match fingerprint."""
    scan_id = f"scan-bench-{number:020x}"
    commit = f"{number:040x}"
    store.begin_scanner_result(scan_id=scan_id, tenant="bench", repository="https://x/r",
                               ref="main", commit=commit)
    batch: list[Finding] = []
    for k in range(count):
        if k % 10 == skip:
            continue
        batch.append(Finding(
            scanner="bandit", rule_id=f"B{k % 7}", severity=Severity.HIGH,
            path=f"pkg/m{k % 50}.py", start_line=k + shift, message="finding",
            fingerprint=digest(number, k), match_fingerprint=digest("match", k)))
        if len(batch) == BATCH:
            store.add_findings(scan_id, batch)
            batch = []
    if batch:
        store.add_findings(scan_id, batch)
    store.complete_scanner_result(scan_id=scan_id, scanner="bandit", attempt=1)
    store.finish_scan(ScanSummary(
        scan_id=scan_id, tenant="bench", repository="https://x/r", ref="main",
        commit=commit, status=ScanStatus.COMPLETED,
        scanners=(ScannerRun(scanner="bandit", status=ScannerStatus.SUCCEEDED, attempts=1),)))
    return scan_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--findings", type=int, default=100_000)
    parser.add_argument("--database")
    args = parser.parse_args()
    url = args.database or sqlite_url(Path(tempfile.mkdtemp()) / "bench.db")
    gaps: list[float] = []
    last = [0.0]

    def progress(stage: str, count: int) -> None:
        now = time.monotonic()
        gaps.append(now - last[0])
        last[0] = now

    with Store.open(url) as store:
        print(f"{store.dialect}, {args.findings:,} findings a scan")
        for number, (shift, skip) in enumerate(((0, 0), (5, 1)), start=1):
            scan_id = store_scan(store, number, args.findings, shift=shift, skip=skip)
            gaps.clear()
            started = last[0] = time.monotonic()
            lifecycle = store.compute_lifecycle(scan_id, progress=progress)
            took = time.monotonic() - started
            gaps.append(time.monotonic() - last[0])
            assert lifecycle is not None
            again = time.monotonic()
            store.compute_lifecycle(scan_id)
            print(f"scan {number}: compute {took:.2f} s (longest step between heartbeats "
                  f"{max(gaps):.2f} s), new {lifecycle.new:,}, existing "
                  f"{lifecycle.existing:,}, fixed {lifecycle.fixed:,}; repeated call "
                  f"{time.monotonic() - again:.2f} s")


if __name__ == "__main__":
    main()

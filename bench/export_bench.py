"""How much memory and time `scanward findings ID --all --format json|sarif` takes for a
big scan: one finished scan of N findings (and one of N/10) in a fresh SQLite store,
stored as the activities store them (``record_scanner_result`` per scanner, then
``finish_and_track``, in a child process), exported by the real CLI in a subprocess.
Peak RSS is that child's own (``os.wait4``), so one export's peak never hides another's;
this process stays small because Linux counts the RSS of the process that forked and
exec'd a child in the child's ``ru_maxrss``.

    .venv/bin/python bench/export_bench.py [--findings 200000] [--keep]

A streaming export keeps its peak flat: peak at N / peak at N/10 near 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ROOT = Path(__file__).resolve().parent.parent
SCANNERS = ("bandit", "semgrep")


def digest(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def fill(url: str, count: int) -> str:
    """One completed scan of ``count`` findings split over :data:`SCANNERS`: many
    paths and rules, every severity, one in 50 suppressed by the tool. Imports scanward
    here: only the child that fills the store needs it (see the module's doc)."""
    from scanward.contract import (
        Finding,
        ScannerRun,
        ScannerStatus,
        ScanStatus,
        ScanSummary,
        Severity,
    )
    from scanward.store import Store

    severities = tuple(Severity)
    scan_id = f"scan-bench-{count:020x}"
    commit = f"{count:040x}"
    runs = []
    with Store.open(url) as store:
        for s, scanner in enumerate(SCANNERS):
            found = [Finding(
                scanner=scanner, rule_id=f"{scanner[0].upper()}{k % 97:03d}",
                severity=severities[k % len(severities)], path=f"pkg/mod{k % 503}/file{k % 61}.py",
                start_line=k % 4000 + 1, end_line=k % 4000 + 2, start_column=k % 7 + 1,
                end_column=k % 7 + 20, message=f"finding {k}: something flawed is here",
                fingerprint=digest(scanner, k), match_fingerprint=digest("match", scanner, k),
                suppression="inSource" if k % 50 == 0 else None)
                for k in range(s, count, len(SCANNERS))]
            stored = store.record_scanner_result(
                scan_id=scan_id, tenant="bench", repository="https://example.com/big.git",
                ref="main", commit=commit, scanner=scanner, attempt=1, findings=found)
            runs.append(ScannerRun(scanner=scanner, status=ScannerStatus.SUCCEEDED,
                                   attempts=1, finding_count=stored))
        store.finish_and_track(ScanSummary(
            scan_id=scan_id, tenant="bench", repository="https://example.com/big.git",
            ref="main", commit=commit, status=ScanStatus.COMPLETED, scanners=tuple(runs)))
    return scan_id


@dataclass(frozen=True)
class Export:
    peak_mib: float
    seconds: float
    output_mib: float


def export(url: str, scan_id: str, fmt: str, home: Path) -> Export:
    """The real CLI (``python -m starter findings``) in a child; its own peak RSS."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "PYTHONPATH": str(ROOT),
           "SCANWARD_HOME": str(home), "SCANWARD_DATABASE_URL": url}
    target = home / f"out.{fmt}"
    with target.open("wb") as sink:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "starter", "findings", scan_id, "--all", "--format", fmt],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.PIPE)
        # wait4: this child's rusage alone (RUSAGE_CHILDREN is the max over all of them).
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"findings --format {fmt} exited {proc.returncode}: {err[-2000:]}")
    size = target.stat().st_size
    target.unlink()
    return Export(peak_mib=usage.ru_maxrss / 1024, seconds=took, output_mib=size / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--findings", type=int, default=200_000)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--fill", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:  # the child that fills a store
        print(fill(args.fill[0], int(args.fill[1])))
        return
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    try:
        sizes = (args.findings // 10, args.findings)
        stores: dict[int, tuple[str, str]] = {}
        for n in sizes:
            url = f"sqlite:///{work / f'n{n}' / 'scanward.db'}"
            started = time.monotonic()
            filled = subprocess.run([sys.executable, __file__, "--fill", url, str(n)],
                                    cwd=ROOT, check=True, capture_output=True, text=True)
            stores[n] = (url, filled.stdout.split()[-1])
            print(f"stored {n:,} findings in {time.monotonic() - started:.1f} s")
        print(f"{'format':6} {'findings':>9} {'peak RSS':>10} {'seconds':>8} {'output':>9}")
        for fmt in ("json", "sarif"):
            measured: dict[int, Export] = {}
            for n in sizes:
                url, scan_id = stores[n]
                measured[n] = e = export(url, scan_id, fmt, work)
                print(f"{fmt:6} {n:>9,} {e.peak_mib:>6.0f} MiB {e.seconds:>8.1f} "
                      f"{e.output_mib:>5.0f} MiB")
            small, big = (measured[n] for n in sizes)
            print(f"{fmt:6} ratio N/(N/10): peak {big.peak_mib / small.peak_mib:.2f}, "
                  f"seconds {big.seconds / small.seconds:.2f}, "
                  f"output {big.output_mib / small.output_mib:.2f}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

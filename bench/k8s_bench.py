"""scanward kubernetes-backend benchmark, in one run, against the real control plane
(tools/k8s-testenv: kube-apiserver/controller-manager/scheduler v1.35.4, etcd, kwok as
the kubelet) and a Temporal dev server, with the worker as a separate process.

1. API requests per single-scanner scan, counted by the API server itself: the
   apiserver runs with an audit policy (level Metadata for service-account users) and
   the worker authenticates as its own ServiceAccount (deploy/rbac.yaml, TokenRequest
   token in a kubeconfig of its own), so every audit event whose ``user.username`` is
   ``system:serviceaccount:<ns>:scanward-worker`` is one of the worker's requests.
   Short (1 s) and long (20 s) Jobs; cross-checked with the backend's client counters.
2. Latency from a Job's Complete condition, seen by an independent watch in this
   process (``time.time()`` when the watch event is read), to the workflow's next step,
   the ``ActivityTaskScheduled`` event of ``persist_results`` in its history
   (``event_time``, stamped by the dev server on the same machine's clock).
3. The worker's memory (RSS, PSS, USS) and threads while N scans wait on running Jobs,
   and its request rate to the apiserver while they wait.

    /tmp/venv/bin/python bench/k8s_bench.py --quick
    /tmp/venv/bin/python bench/k8s_bench.py            # 20 / 200 / 2000
    /tmp/venv/bin/python bench/k8s_bench.py --json out.json

Everything it starts (control plane, dev server, workers) it stops, on success, error,
^C or SIGTERM. See bench/README.md.

The work is done in the k8s_bench_*.py modules next to this one: _run (the Bench: set-up,
phases, teardown), _cluster (control plane, node, namespaces), _observer (the bench's
watches), _audit (the audit log), _procs (worker processes, /proc), _catalog, _report
(the table), _log and _repo (sys.path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from k8s_bench_log import log
from k8s_bench_report import table
from k8s_bench_run import Bench


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--requests-scans", type=int, default=20,
                   help="scans per Job duration in the request-count phase (0 skips it)")
    p.add_argument("--scans-latency", type=int, default=200,
                   help="scans in the latency phase (0 skips it)")
    p.add_argument("--scans-memory", type=int, default=2000,
                   help="scans waiting at once in the memory phase (0 skips it)")
    p.add_argument("--warmup", type=int, default=50,
                   help="waiting scans before the memory baseline")
    p.add_argument("--quick", action="store_true",
                   help="small sizes: 5 / 20 / 100 scans, 10 warm-up")
    p.add_argument("--short-job-seconds", type=int, default=1)
    p.add_argument("--long-job-seconds", type=int, default=20)
    p.add_argument("--jitter-from", type=int, default=10,
                   help="latency Jobs' pods complete after a random delay in [from, to) s")
    p.add_argument("--jitter-to", type=int, default=40)
    p.add_argument("--memory-steps", type=int, default=4,
                   help="the scans after the warm-up are started in this many steps")
    p.add_argument("--settle-seconds", type=float, default=10.0,
                   help="pause before each memory sample")
    p.add_argument("--quiet-seconds", type=float, default=30.0,
                   help="window for the request rate while all scans wait")
    p.add_argument("--start-concurrency", type=int, default=32,
                   help="start_workflow calls in flight")
    p.add_argument("--max-concurrent-activities", type=int, default=5000)
    p.add_argument("--graceful-shutdown-seconds", type=int, default=10,
                   help="SCANWARD_GRACEFUL_SHUTDOWN_SECONDS of the workers")
    p.add_argument("--worker-stop-timeout", type=float, default=240.0)
    p.add_argument("--kcm-qps", type=int, default=100,
                   help="controller-manager --kube-api-qps (0: testenv's default, 20)")
    p.add_argument("--diag-max-cached-workflows", type=int, default=None, metavar="N",
                   help="diagnostics: workers built with max_cached_workflows=N (the memory "
                        "phase then runs bench/counting_worker.py, not python -m worker)")
    p.add_argument("--diag-unsandboxed", action="store_true",
                   help="diagnostics: workers with UnsandboxedWorkflowRunner")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, audit)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="also write the results as JSON to FILE (or stdout)")
    a = p.parse_args(argv)
    if a.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        if "--requests-scans" not in given:
            a.requests_scans = 5
        if "--scans-latency" not in given:
            a.scans_latency = 20
        if "--scans-memory" not in given:
            a.scans_memory = 100
        if "--warmup" not in given:
            a.warmup = 10
        if "--settle-seconds" not in given:
            a.settle_seconds = 5.0
        if "--quiet-seconds" not in given:
            a.quiet_seconds = 10.0
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="scanward-bench-"))
    bench = Bench(args, workdir)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    log(f"bench work dir {workdir}; uptime: "
        f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    failed: BaseException | None = None
    try:
        asyncio.run(bench.run())
    except BaseException as e:  # report what was measured, then fail
        failed = e
        bench.results["error"] = f"{type(e).__name__}: {e}"
        log(f"bench failed: {type(e).__name__}: {e}")
    bench.results["wall_seconds"] = round(time.monotonic() - started, 1)
    bench.results["machine"]["load_at_end"] = os.getloadavg()
    print(table(bench.results))
    if args.json:
        text = json.dumps(bench.results, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.keep or failed is not None:
        log(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed is not None else 0


if __name__ == "__main__":
    sys.exit(main())

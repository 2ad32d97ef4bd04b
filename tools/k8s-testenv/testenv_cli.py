"""The command line of testenv.py: `up` (run until ^C) and `smoke` (self-test)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

from testenv_errors import ControlPlaneError
from testenv_plane import ControlPlane
from testenv_smoke import smoke

# The first paragraph of testenv.py's docstring, which --help always showed.
DESCRIPTION = "A real Kubernetes control plane for tests, without Docker."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=DESCRIPTION)
    ap.add_argument("command", choices=["up", "smoke"])
    ap.add_argument(
        "--bin-dir", help="binaries (default: $SCANWARD_K8S_BIN or ~/.cache/scanward/k8s/<ver>)"
    )
    ap.add_argument("--workdir", help="state dir (default: a new temp dir, removed on stop)")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("-v", "--verbosity", type=int, default=0, help="klog -v for k8s components")
    args = ap.parse_args(argv)

    cp = ControlPlane(
        args.bin_dir, args.workdir, keep_workdir=args.keep_workdir, verbosity=args.verbosity
    )
    stop_event = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop_event.set()
        if args.command == "smoke":
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()
    rc = 0
    try:
        cp.start()
        if args.command == "up":
            print(f"kubeconfig: {cp.kubeconfig}")
            print(f"export KUBECONFIG={cp.kubeconfig}")
            print(f"logs: {cp.logs_dir}")
            print(f"started in {cp.timings['start']:.2f}s; ^C to stop", flush=True)
            while not stop_event.wait(1.0):
                for p in list(cp._procs):
                    p.check()
        else:
            smoke(cp)
    except ControlPlaneError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        rc = 130
    finally:
        pids = list(cp.pids.values())
        cp.stop()
        left = [p for p in pids if _alive(p)]
        print(f"stopped in {cp.timings.get('stop', 0):.2f}s; leftover processes: {left or 'none'}")
        if left:
            rc = rc or 1
    if args.command == "smoke":
        print(f"smoke {'PASSED' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.2f}s total")
    return rc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # reaped children cannot linger as zombies (Popen.wait reaped them)
    return True

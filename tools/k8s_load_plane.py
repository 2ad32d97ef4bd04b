"""The Kubernetes test control plane (tools/k8s-testenv, built by its build.sh) made
ready for ``scanward load --kube``, and optionally the load run itself:

    .venv/bin/python tools/k8s_load_plane.py                    # prints the options; ^C
    .venv/bin/python tools/k8s_load_plane.py -- mixed --iterations 10

It creates a namespace with bound workspace/results claims and deploy/rbac.yaml's
ServiceAccount, Role and RoleBinding; the worker gets a kubeconfig with that
ServiceAccount's token (what production grants it, nothing more), the pod stand-in the
plane's admin kubeconfig (it patches pods, which the worker may not). Arguments after
``--`` go to ``scanward load --start-local-server`` with those options; its exit code is
this script's.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.k8s_fixture import scanward_namespace, testenv, worker_kubeconfig  # noqa: E402


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    ours, load_args = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", default="scanward-load")
    args = parser.parse_args(ours)
    began = time.monotonic()
    plane = testenv.ControlPlane().start()
    try:
        work = Path(tempfile.mkdtemp(prefix="scanward-k8s-load-"))
        namespace = scanward_namespace(plane, args.namespace)
        kubeconfig = worker_kubeconfig(plane, namespace, work / "worker.kubeconfig")
        options = ["--kube", str(kubeconfig), "--kube-namespace", namespace,
                   "--kube-stand-in", str(plane.kubeconfig)]
        print(f"control plane up in {time.monotonic() - began:.1f}s; namespace {namespace} "
              f"with its claims and the worker's Role", flush=True)
        if load_args:
            command = [sys.executable, "-m", "starter", "load", *load_args,
                       "--start-local-server", *options]
            return subprocess.run(command, cwd=ROOT, check=False).returncode
        print("scanward load --start-local-server " + " ".join(options), flush=True)
        print("^C to stop the control plane", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        return 0
    finally:
        plane.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

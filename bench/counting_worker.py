"""``python -m worker``, plus the kubernetes backend's client-side request counters.

The bench runs this instead of ``python -m worker`` for the request and latency phases:
it is the same worker (``worker.main()``, same settings from ``SCANWARD_*``), except that
``worker.make_backend`` is wrapped to keep a reference to the backend, and SIGUSR1 writes
``KubernetesBackend.requests`` and the shared watch's ``lists``/``watches`` counters to
``$BENCH_COUNTERS_FILE`` (atomically, with a sequence number). No thread is added: the
handler runs on the main thread, woken by the event loop's signal wake-up fd.

Diagnostics only (the bench's ``--diag-*`` flags; never in its default measurements):
``BENCH_MAX_CACHED_WORKFLOWS=N`` builds the Temporal Worker with
``max_cached_workflows=N`` (the SDK default is 1000, worker.py does not set it) and
``BENCH_UNSANDBOXED=1`` with ``UnsandboxedWorkflowRunner``, to attribute the worker's
memory per waiting scan.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import worker

_backends: list[Any] = []
_seq = 0
_original = worker.make_backend


def _make_backend(settings: Any) -> Any:
    backend = _original(settings)
    _backends.append(backend)
    return backend


def _counters() -> dict[str, Any]:
    out: dict[str, Any] = {"seq": _seq, "pid": os.getpid()}
    for backend in _backends:
        tracker = getattr(backend, "tracker", None)
        out.update({
            "requests": getattr(backend, "requests", None),
            "jobs_lists": tracker.jobs.lists if tracker else None,
            "jobs_watches": tracker.jobs.watches if tracker else None,
            "pods_lists": tracker.pods.lists if tracker else None,
            "pods_watches": tracker.pods.watches if tracker else None,
            "waiting": tracker.waiting if tracker else None,
        })
    return out


def _dump(*_: Any) -> None:
    global _seq
    _seq += 1
    target = os.environ.get("BENCH_COUNTERS_FILE")
    if not target:
        return
    path = Path(target)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_counters()))
    tmp.replace(path)


def _diagnostic_worker_options() -> None:
    options: dict[str, Any] = {}
    if os.environ.get("BENCH_MAX_CACHED_WORKFLOWS"):
        options["max_cached_workflows"] = int(os.environ["BENCH_MAX_CACHED_WORKFLOWS"])
    if os.environ.get("BENCH_UNSANDBOXED") == "1":
        from temporalio.worker import UnsandboxedWorkflowRunner

        options["workflow_runner"] = UnsandboxedWorkflowRunner()
    if options:
        from temporalio.worker import Worker as original

        def with_options(*args: Any, **kwargs: Any) -> Any:
            return original(*args, **{**kwargs, **options})

        # worker.py calls the name it imported: replace that one.
        setattr(worker, "Worker", with_options)  # noqa: B010


if __name__ == "__main__":
    _diagnostic_worker_options()
    worker.make_backend = _make_backend
    signal.signal(signal.SIGUSR1, _dump)
    atexit.register(_dump)
    worker.main()

"""Record the replay corpus: one ScanWorkflow history for every path the workflow can
take, into tests/histories/<contract version>/ (tools/record_scenarios.py lists them).

    .venv/bin/python tools/record_history.py                     # all, into v1/
    .venv/bin/python tools/record_history.py dead_abandon oom_bump
    .venv/bin/python tools/record_history.py --no-kubernetes --out /tmp/corpus
    .venv/bin/python tools/record_history.py --list

Real scans on a throwaway dev server with in-process workers (local backend; the
kubernetes scenarios against the test control plane, built by
tools/k8s-testenv/build.sh). Re-record only on purpose: the point of the files is that
today's workflow code must replay the histories older code wrote. A new contract
version records into a new directory and leaves the old ones as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record_scenarios import KUBERNETES, LOCAL, SCENARIOS, Stack  # noqa: E402

import worker as scan_worker  # noqa: E402
from scanward import search_attributes as sa  # noqa: E402
from scanward.devserver import temporal_binary  # noqa: E402
from scanward.example import create_example_repo  # noqa: E402
from scanward.settings import Settings  # noqa: E402
from tests.conftest import SECRET_HOSTS, WEBHOOK_SECRET, fake_catalog  # noqa: E402

OUT = ROOT / "tests" / "histories" / "v1"


def local_settings(home: Path, catalog: Path, task_queue: str) -> Settings:
    """A local-backend worker like the tests' ``settings`` fixture."""
    return Settings(
        home=home, workspace_root=home / "workspace", results_root=home / "results",
        database_url=f"sqlite:///{home / 'scanward.db'}", task_queue=task_queue,
        allow_local_repositories=True, catalog_file=catalog, graceful_shutdown_seconds=10,
        env={"SCANWARD_SECRET_HOOK": WEBHOOK_SECRET, "PATH": "/usr/bin:/bin", **SECRET_HOSTS})


@asynccontextmanager
async def kube_stack(tmp: Path, base: Settings,
                     client: Client) -> AsyncIterator[dict[str, Any]]:
    """The test control plane, a namespace with bound claims, a kubernetes worker and
    the pod stand-in (writes each Job's SARIF), as tests/test_kube_backend.py sets up."""
    from tests.k8s_fixture import bound_claims, start_plane
    from tests.test_kube_backend import PodStandIn, kube_catalog

    plane = start_plane()
    namespace = f"sw-record-{uuid.uuid4().hex[:8]}"
    try:
        plane.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        bound_claims(plane, namespace)
        home = tmp / "kube"
        catalog = kube_catalog(tmp / "kube-catalog.json")
        settings = dataclasses.replace(
            base, home=home, workspace_root=home / "workspace", results_root=home / "results",
            database_url=f"sqlite:///{home / 'scanward.db'}", backend="kubernetes",
            catalog_file=catalog, task_queue="record-kube",
            env={**base.env, "SCANWARD_KUBECONFIG": str(plane.kubeconfig),
                 "SCANWARD_KUBE_NAMESPACE": namespace, "SCANWARD_KUBE_RESYNC_SECONDS": "60"})
        stand_in = PodStandIn(plane, namespace, settings.results_root)
        stand_in.start()

        def evict(job: str) -> None:
            """What a kubelet under node pressure does to a pod (its status: Failed,
            reason Evicted; kwok plays no evictions). The Job then fails and the worker
            classifies the attempt ``evicted``."""
            pods = plane.request("GET", f"/api/v1/namespaces/{namespace}/pods?"
                                 f"labelSelector=job-name%3D{job}")["items"]
            running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
            if not running:
                raise LookupError(job)
            pod = running[0]
            container = pod["spec"]["containers"][0]
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            plane.request(
                "PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status",
                {"status": {"phase": "Failed", "reason": "Evicted",
                            "message": "The node was low on resource: memory.",
                            "containerStatuses": [{
                                "name": container["name"], "image": container["image"],
                                "imageID": "", "ready": False, "restartCount": 0,
                                "state": {"terminated": {
                                    "exitCode": 137, "reason": "Error",
                                    "startedAt": now, "finishedAt": now}}}]}},
                content_type="application/merge-patch+json")

        try:
            async with scan_worker.running(settings, client):
                yield {"kube": settings, "kube_catalog": catalog,
                       "kube_jobs": lambda: list(stand_in.jobs), "evict": evict}
        finally:
            stand_in.stop()
    finally:
        plane.stop()


async def record(names: list[str], out: Path, kubernetes: bool) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="scanward-record-"))
    state = tmp / "state"
    state.mkdir()
    catalog = fake_catalog(tmp / "catalog.json", state)
    local = local_settings(tmp / "local", catalog, "record")
    held = local_settings(tmp / "held", catalog, "record-held")
    gate = tmp / "gate"
    from tests.test_clone import hold_pack_objects, repo_with_blob

    hold_pack_objects(held.home, gate)  # only the held worker's git waits on the gate
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), search_attributes=sa.ALL,
        data_converter=pydantic_data_converter, dev_server_log_level="error")
    failed = 0
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(scan_worker.running(local, env.client))
            await stack.enter_async_context(scan_worker.running(held, env.client))
            extra: dict[str, Any] = {}
            if kubernetes and any(n in KUBERNETES for n in names):
                extra = await stack.enter_async_context(kube_stack(tmp, local, env.client))
            scene = Stack(client=env.client, local=local, held=held, gate=gate,
                          repo=create_example_repo(tmp / "flawed-app"),
                          big_repo=repo_with_blob(tmp / "big-app"), state=state, **extra)
            for name in names:
                if name in KUBERNETES and not kubernetes:
                    continue
                started = time.monotonic()
                try:
                    handle = await SCENARIOS[name](scene)
                except Exception as e:  # report every scenario, then fail
                    failed += 1
                    print(f"FAILED {name}: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                history = await handle.fetch_history()
                (out / f"{name}.json").write_text(history.to_json())
                print(f"wrote {out / name}.json: {len(history.events)} events "
                      f"({time.monotonic() - started:.1f}s)")
    finally:
        await env.shutdown()
        gate.touch()
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="scenarios to record (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory (default {OUT})")
    parser.add_argument("--no-kubernetes", action="store_true",
                        help="skip the scenarios that need the test control plane")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    args = parser.parse_args()
    if args.list:
        for name, scenario in SCENARIOS.items():
            where = "kubernetes" if name in KUBERNETES else "local"
            print(f"{name:22} {where:11} {(scenario.__doc__ or '').splitlines()[0]}")
        return 0
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    names = args.scenarios or [*LOCAL, *KUBERNETES]
    args.out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(record(names, args.out, kubernetes=not args.no_kubernetes))


if __name__ == "__main__":
    sys.exit(main())

"""`scanward load` on the kubernetes backend: a real scanward-worker process whose
scanners are batch/v1 Jobs on the test control plane (tests/k8s_fixture.py), with the
ServiceAccount token and Role of deploy/rbac.yaml. kwok plays the kubelet; the load
tool's pod stand-in (scanward/load/stand_in.py) plays each pod as its commit's
`.scanward-synthetic.json` asks: writes the SARIF, and makes kwok end the pod (exit
code, OOMKilled) under the Job's real memory limit. Plus the pure parts: the synthetic
scanner's plan, the stand-in's reading of Jobs and its patches, the options' errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scanward.contract import ScannerStatus, ScanStatus, ScanSummary
from scanward.job_spec import LOG_FILE, SARIF_FILE
from scanward.load import report as rpt
from scanward.load.kube import KubeOptionError, KubeTarget, oom_memory_mib, target
from scanward.load.runner import LoadError, LoadOptions, run_load
from scanward.load.scenarios import OOM_THEN_OK, mixed_kinds
from scanward.load.stand_in import (
    COMPLETE_DELAY,
    FAIL_EXIT_CODE,
    FAIL_LABEL,
    FAIL_REASON,
    JobView,
    ending,
    mebibytes,
    synthetic_player,
)
from scanward.load.synthetic import Behaviour
from scanward.synthetic_scanner import (
    CONFIG_FILE,
    EXIT_CRASH,
    EXIT_OOM_KILLED,
    attempt_of,
    plan,
    read_config,
)
from tests.k8s_fixture import testenv, worker_kubeconfig

REPO_ROOT = Path(__file__).parent.parent


# ------------------------------------------------------------------ pure parts


def test_plan_follows_the_behaviour_and_the_memory_limit() -> None:
    oom = Behaviour("oom_then_ok", findings=4, memory_mib=96).config()
    assert plan(oom, 1, 64).exit_code == EXIT_OOM_KILLED
    assert plan(oom, 1, 64).reason == "OOMKilled"
    assert plan(oom, 1, 96).exit_code == EXIT_OOM_KILLED  # the interpreter needs room too
    ok = plan(oom, 2, 128)
    assert (ok.exit_code, ok.findings, ok.path) == (0, 4, "app.py")
    assert plan(oom, 1, None).exit_code == 0  # no limit: nothing kills it
    crash = Behaviour("crash_then_ok", seconds=2).config()
    assert (plan(crash, 1).exit_code, plan(crash, 1).seconds) == (EXIT_CRASH, 2.0)
    assert plan(crash, 2).exit_code == 0
    assert plan(Behaviour("crash").config(), 5).exit_code == EXIT_CRASH


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    for config, message in (({"outcome": "oom_then_ok"}, "oom_then_ok needs memory_mib"),
                            ({"memory_mib": -1}, "memory_mib -1"),
                            ({"outcome": "explode"}, "outcome 'explode'")):
        (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(ValueError, match=message):
            read_config(tmp_path)


def test_attempt_from_the_sarif_path_else_the_pod_name(tmp_path: Path) -> None:
    local = tmp_path / "scan-x" / "synthetic" / "attempt-3" / "results.sarif"
    assert attempt_of(local, hostname="") == 3
    in_pod = Path("/results/results.sarif")  # the attempt's directory is the mount
    assert attempt_of(in_pod, hostname="sw-0123456789ab-synthetic-2-a2-x7k2p") == 2
    assert attempt_of(in_pod, hostname="sw-0123456789ab-synthetic-a12-00000") == 12
    assert attempt_of(in_pod, hostname="laptop") == 1


def test_synthetic_scanner_holds_its_memory(tmp_path: Path) -> None:
    """The real scanner allocates what it says (resident), so a real limit below it
    OOM-kills it: nothing here fakes the kill."""
    source = tmp_path / "src"
    source.mkdir()
    (source / CONFIG_FILE).write_text(json.dumps(
        Behaviour("oom_then_ok", seconds=3, memory_mib=80).config()))
    sarif = tmp_path / "attempt-1" / SARIF_FILE
    sarif.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-I", "-m", "scanward.synthetic_scanner",
                             str(source), str(sarif)], cwd=REPO_ROOT)
    peak = 0
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            # A process that exits after poll() is a zombie until wait(): no VmRSS line.
            rss = next((int(line.split()[1]) for line in status.splitlines()
                        if line.startswith("VmRSS:")), 0)
            peak = max(peak, rss // 1024)
            time.sleep(0.1)
    finally:
        assert proc.wait(20) == 0  # no limit here: it succeeds
    assert peak >= 80, peak
    assert json.loads(sarif.read_text())["runs"][0]["results"]


def test_stand_in_reads_the_job_and_patches_the_pod_for_kwok(tmp_path: Path) -> None:
    from scanward.catalog import Catalog
    from scanward.contract import Checkout, Resources, ScannerJobInput
    from scanward.job_spec import KubeJobConfig, build_job

    checkout = Checkout(scan_id="scan-t-1", source_subpath="scan-t-1/src", commit="0" * 40,
                        size_bytes=1, file_count=1)
    job = ScannerJobInput(scan_id="scan-t-1", scanner="synthetic", attempt=1,
                          checkout=checkout, resources=Resources(cpu_millis=50, memory_mib=64))
    view = JobView.of(build_job(job, Catalog.load().get("synthetic"), KubeJobConfig()))
    assert view is not None
    assert (view.attempt, view.memory_limit_mib) == (1, 64)
    assert (view.results_subpath, view.source_subpath) == ("scan-t-1/synthetic/attempt-1",
                                                           "scan-t-1/src")
    (tmp_path / "scan-t-1" / "src").mkdir(parents=True)
    (tmp_path / "scan-t-1" / "src" / CONFIG_FILE).write_text(json.dumps(
        Behaviour("oom_then_ok", memory_mib=96).config()))
    play = synthetic_player(tmp_path)(view)
    assert (play.exit_code, play.reason, play.sarif) == (EXIT_OOM_KILLED, "OOMKilled", None)
    patch = ending(play)["metadata"]
    assert patch["labels"] == {FAIL_LABEL: "true"}
    assert (patch["annotations"][FAIL_EXIT_CODE], patch["annotations"][FAIL_REASON]) == (
        "137", "OOMKilled")
    assert ending(play.__class__(exit_code=0, seconds=1.5)) == {
        "metadata": {"annotations": {COMPLETE_DELAY: "1500ms"}}}
    assert [mebibytes(q) for q in ("128Mi", "1Gi", "134217728", "200M")] == [128, 1024, 128,
                                                                            190]


def test_mixed_kinds_add_oom_only_when_asked() -> None:
    assert OOM_THEN_OK not in mixed_kinds(0.2, 0.2, 0.2)
    assert mixed_kinds(0.2, 0.2, 0.2, oom=0.1)[:10].count(OOM_THEN_OK) == 1
    assert oom_memory_mib() == 96  # between the first limit (64) and the doubled one


def test_kube_options_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(KubeOptionError, match="--kube-namespace: needs --kube KUBECONFIG"):
        target(None, namespace="x")
    with pytest.raises(KubeOptionError, match=r"--kube .*nope: no such kubeconfig file"):
        target(tmp_path / "nope")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("{}")
    with pytest.raises(KubeOptionError, match="--kube-namespace 'Bad_NS': expected a DNS"):
        target(kubeconfig, namespace="Bad_NS")
    assert target(None) is None
    assert target(kubeconfig) == KubeTarget(kubeconfig)


async def test_oom_share_needs_a_cluster(temporal_env: WorkflowEnvironment, client: Client,
                                         tmp_path: Path) -> None:
    opts = LoadOptions(scenario="mixed", iterations=1, oom_share=0.1, start_local_server=True,
                       home=tmp_path / "load",
                       server_address=temporal_env.client.service_client.config.target_host)
    with pytest.raises(LoadError, match="local backend cannot OOM-kill"):
        await run_load(opts, print, client)


def test_cli_refuses_kube_without_a_kubeconfig(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "starter", "load", "--start-local-server",
                           "--kube", str(tmp_path / "missing"), "--iterations", "1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2  # a usage error: the option names no file
    assert f"--kube {tmp_path / 'missing'}: no such kubeconfig file" in done.stderr


# ------------------------------------------------------------------ end to end


@pytest.fixture
def kube_target(control_plane: testenv.ControlPlane, kube_namespace: str,
                tmp_path: Path) -> KubeTarget:
    """The worker as deploy/rbac.yaml's ServiceAccount; the stand-in as admin (it
    patches pods, which the worker may not)."""
    kubeconfig = worker_kubeconfig(control_plane, kube_namespace, tmp_path / "worker.kubeconfig")
    return KubeTarget(kubeconfig, kube_namespace, stand_in=control_plane.kubeconfig)


def _opts(temporal_env: WorkflowEnvironment, home: Path, **fields: Any) -> LoadOptions:
    return LoadOptions(start_local_server=True, home=home,
                       server_address=temporal_env.client.service_client.config.target_host,
                       **fields)


def _jobs(plane: testenv.ControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = plane.request(
        "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]
    return items


async def test_load_runs_its_scans_as_jobs_oom_then_doubled_memory(
        temporal_env: WorkflowEnvironment, client: Client, control_plane: testenv.ControlPlane,
        kube_target: KubeTarget, tmp_path: Path) -> None:
    began = time.monotonic()
    happy = await run_load(_opts(temporal_env, tmp_path / "happy", scenario="happy",
                                 iterations=6, max_concurrent=3, kube=kube_target),
                           print, client)
    assert rpt.counts(happy.records) == {"started": 6, "completed": 6, "dead": 0,
                                         "cancelled": 0, "failed": 0}
    assert happy.replay["replayed"] == 6 and happy.replay["failures"] == 0, happy.replay
    jobs = {j["metadata"]["name"]: j for j in _jobs(control_plane, kube_target.namespace)}
    assert len(jobs) == 6  # one Job per scan: every scanner ran on the cluster
    happy_seconds = time.monotonic() - began

    mixed = await run_load(_opts(temporal_env, tmp_path / "mixed", scenario="mixed",
                                 iterations=10, kube=kube_target), print, client)
    scans = rpt.counts(mixed.records)
    # ok 3, crash_then_ok 2, oom_then_ok 1 complete; dead 2 (retried, abandoned); cancel 2.
    assert scans == {"started": 10, "completed": 6, "dead": 2, "cancelled": 2, "failed": 0}, \
        mixed.as_json()["errors"]
    assert mixed.replay["replayed"] == 10 and mixed.replay["failures"] == 0, mixed.replay
    by_kind = mixed.as_json()["by_kind"]
    assert by_kind[OOM_THEN_OK]["completed"] == 1 and by_kind["dead"]["dead"] == 2
    oom = mixed.extra["oom"]
    assert (oom["scans"], oom["completed"], oom["doubled"]) == (1, 1, 1)
    (scan_id, memory), = oom["memory_mib_by_attempt"].items()
    assert memory == {"synthetic": [64, 128]}  # from the history's run_scanner inputs
    summary = await client.get_workflow_handle(scan_id, result_type=ScanSummary).result()
    (run,) = summary.scanners
    assert summary.status is ScanStatus.COMPLETED
    assert (run.status, run.attempts) == (ScannerStatus.SUCCEEDED, 2)
    assert run.resources is not None and run.resources.memory_mib == 128
    assert run.finding_count == 3
    # The OOM was the cluster's: the first Job's pod ended OOMKilled under 64Mi.
    first = next(j for j in _jobs(control_plane, kube_target.namespace)
                 if j["metadata"]["annotations"]["scanward.dev/scan-id"] == scan_id
                 and j["metadata"]["labels"]["scanward.dev/attempt"] == "1")
    assert first["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "memory"] == "64Mi"
    assert any(c["type"] == "Failed" for c in first["status"]["conditions"])
    # Its log (what the pod "printed") stays on the results volume after the scan.
    attempt_log = (tmp_path / "mixed" / "worker" / "results" / scan_id / "synthetic"
                   / "attempt-1" / LOG_FILE)
    assert "holding 96 MiB under a 64 MiB limit" in attempt_log.read_text()
    assert not any("cannot OOM-kill" in n for n in mixed.notes)
    assert any(n.startswith("oom_then_ok: 1 of 1") for n in mixed.notes), mixed.notes
    print(f"happy (6 scans) {happy_seconds:.1f}s, both {time.monotonic() - began:.1f}s")


async def test_a_worker_that_cannot_use_the_cluster_says_why(
        temporal_env: WorkflowEnvironment, client: Client, control_plane: testenv.ControlPlane,
        tmp_path: Path) -> None:
    """The admin kubeconfig, but a namespace that does not exist: the worker's preflight
    refuses to start and the load names the reason, not just the log."""
    missing = KubeTarget(control_plane.kubeconfig, "sw-no-such-namespace")
    with pytest.raises(RuntimeError, match="sw-no-such-namespace' not found"):
        await asyncio.wait_for(run_load(_opts(temporal_env, tmp_path / "load", iterations=1,
                                              kube=missing), print, client), 120)

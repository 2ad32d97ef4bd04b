"""Every failure keeps its log, and operators can read it: the last log lines in a dead
scanner's reason (broken SARIF included), each attempt's scanner.log kept after the
scan's cleanup for the retention period, and ``scanward logs`` printing it. Real parts: a
worker with the local backend running the fake scanner as a subprocess, the dev server,
the CLI as a process, real shells running the Kubernetes Job's log wrapper."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from scanward import attempt_logs
from scanward import client as api
from scanward.attempt_logs import (
    CLEANED,
    EXPIRED,
    EXPIRED_FILE,
    TOMBSTONE_DAYS,
    LogExpired,
    LogUnavailable,
)
from scanward.catalog import Catalog
from scanward.contract import (
    Checkout,
    FailureClass,
    Resources,
    ScannerJobInput,
    ScannerStatus,
    ScanStatus,
)
from scanward.job_spec import (
    ANNOTATION_TEE_LOG,
    LOG_FILE,
    SARIF_FILE,
    KubeJobConfig,
    build_job,
    tee_log_command,
)
from scanward.settings import Settings
from tests.conftest import FAKE_SCANNER, eventually, scan_request, start
from tests.helpers.mounts import tmpfs
from tests.helpers.processes import cli_env, scanward

DAY = 86400.0
DIAGNOSTIC = "fatal: rule pack failed to load, no results written"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, state_dir: Path) -> Settings:
    """The shared test settings plus a scanner that exits with its "findings" code after
    writing an empty SARIF, and a log retention of one day."""
    catalog = json.loads(settings.catalog_file.read_text())  # type: ignore[union-attr]
    catalog["scanners"].append({
        "name": "empty", "image": "example.invalid/fake:1", "command": ["fake", "empty"],
        "local_command": ["{python}", str(FAKE_SCANNER), "empty", "{source}", "{sarif}",
                          str(state_dir)],
        "findings_exit_codes": [1]})
    path = tmp_path / "catalog-with-empty.json"
    path.write_text(json.dumps(catalog))
    return dataclasses.replace(settings, catalog_file=path,
                               env={**settings.env, "SCANWARD_LOG_RETENTION_DAYS": "1"})


def plant_cleaned_scan(results: Path, scan_id: str, text: str, age_days: float) -> Path:
    """A scan's results as a cleanup ``age_days`` ago left them: one attempt's log."""
    attempt = results / scan_id / "bandit" / "attempt-1"
    attempt.mkdir(parents=True)
    (attempt / LOG_FILE).write_text(text)
    (attempt / SARIF_FILE).write_text("{}")
    attempt_logs.keep_logs(results / scan_id, time.time() - age_days * DAY)
    return attempt / LOG_FILE


def new_scan_id() -> str:
    return f"scan-default-{uuid.uuid4().hex[:20]}"


@pytest.mark.usefixtures("scan_worker_task")
async def test_broken_sarif_reason_has_the_log_and_the_log_outlives_cleanup(
        temporal_env: WorkflowEnvironment, client: Client, settings: Settings,
        flawed_repo: Path) -> None:
    results = settings.results_root
    # What earlier scans left: the worker's first cleanup sweeps with a one-day retention.
    old, fresh, running = new_scan_id(), new_scan_id(), new_scan_id()
    old_log = plant_cleaned_scan(results, old, "old scan's log\n", age_days=2)
    fresh_log = plant_cleaned_scan(results, fresh, "fresh scan's log\n", age_days=0.5)
    running_log = results / running / "bandit" / "attempt-1" / LOG_FILE  # not cleaned
    running_log.parent.mkdir(parents=True)
    running_log.write_text("a dead scanner waiting for an operator\n")
    os.utime(running_log, (time.time() - 30 * DAY,) * 2)

    env = {**cli_env(temporal_env, settings), "SCANWARD_RESULTS": str(results)}
    handle = await start(client, settings, scan_request(flawed_repo, "empty", "fake"))

    async def empty_dead() -> object:
        runs = {r.scanner: r for r in (await api.progress(client, handle.id)).scanners}
        return runs["empty"] if runs["empty"].status is ScannerStatus.DEAD else None

    run = await eventually(empty_dead, what="empty dead")
    assert run.failure_class is FailureClass.BROKEN_SARIF
    reason = run.reason or ""
    assert "file is empty" in reason and DIAGNOSTIC in reason, reason
    assert "last log lines:" in reason

    # Readable while the scan waits for an operator, and after it ended.
    code, out, err = await scanward("logs", handle.id, "--scanner", "empty", env=env)
    assert (code, DIAGNOSTIC in out) == (0, True), (out, err)
    code, _, err = await scanward("abandon", handle.id, env=env)
    assert code == 0, err
    summary = await handle.result()
    assert summary.status is ScanStatus.PARTIAL

    assert not (settings.workspace_root / handle.id).exists()  # the checkout is gone
    attempt = results / handle.id / "empty" / "attempt-1"
    assert sorted(p.name for p in attempt.iterdir()) == [LOG_FILE]  # the SARIF is gone
    assert (results / handle.id / CLEANED).is_file()

    code, out, err = await scanward("logs", handle.id, "--scanner", "empty", env=env)
    assert code == 0, err
    assert DIAGNOSTIC in out and "fake scanner empty on" in out
    assert "empty attempt 1 of 1" in err
    code, out, _ = await scanward("logs", handle.id, "--scanner", "fake", "--attempt", "1",
                                  env=env)
    assert code == 0 and "fake scanner ok on" in out

    for args, message in (
            (("--scanner", "empty", "--attempt", "2"), "has no attempt 2 (its attempts: 1)"),
            (("--scanner", "nosuch"), "has no scanner 'nosuch' (its scanners: empty, fake)"),
            (("--scanner", "../etc"), "scanner name '../etc' is malformed")):
        code, out, err = await scanward("logs", handle.id, *args, env=env)
        assert (code, out) == (1, ""), (args, out, err)
        assert err.startswith("scanward: error: ") and message in err, (args, err)
    code, _, err = await scanward("logs", new_scan_id(), "--scanner", "empty", env=env)
    assert code == 1 and "unknown scan" in err, err

    # The sweep ran with this worker's first cleanup: SCANWARD_LOG_RETENTION_DAYS=1.
    assert not old_log.exists() and (old_log.parent / EXPIRED_FILE).exists()
    assert fresh_log.read_text() == "fresh scan's log\n"
    assert running_log.exists()  # never swept before its scan's cleanup
    code, _, err = await scanward("logs", old, "--scanner", "bandit", env=env)
    assert code == 1 and "expired on" in err, err


def test_sweep_expires_old_logs_keeps_fresh_ones_and_forgets_tombstones(
        tmp_path: Path) -> None:
    results = tmp_path / "results"
    now = time.time()
    old, fresh = new_scan_id(), new_scan_id()
    old_log = plant_cleaned_scan(results, old, "old\n", age_days=15)
    fresh_log = plant_cleaned_scan(results, fresh, "fresh\n", age_days=13)
    os.utime(old_log, (now - 15 * DAY,) * 2)
    (results / "not-a-scan.txt").write_text("left alone")

    swept = attempt_logs.sweep(results, 14, now)

    assert (swept.expired_logs, swept.removed_scans) == (1, 0)
    assert not old_log.exists()
    assert fresh_log.read_text() == "fresh\n"
    assert attempt_logs.find_log(results, fresh, "bandit").path == fresh_log
    with pytest.raises(LogExpired, match="expired on"):
        attempt_logs.find_log(results, old, "bandit")
    # Idempotent; the tombstone goes TOMBSTONE_DAYS after the logs expired, and then the
    # scan is unknown.
    assert attempt_logs.sweep(results, 14, now) == attempt_logs.SweepResult()
    later = now + (TOMBSTONE_DAYS + 1) * DAY
    assert attempt_logs.sweep(results, 14, later).removed_scans == 1
    assert not (results / old).exists() and (results / "not-a-scan.txt").exists()
    with pytest.raises(LogUnavailable, match="unknown scan"):
        attempt_logs.find_log(results, old, "bandit")


def test_sweep_expires_logs_on_a_volume_out_of_inodes(tmp_path: Path) -> None:
    """The sweep created each log's .expired marker before deleting the log: on a
    results volume out of inodes it failed at the first one, every hour, expiring
    nothing, just when the room was needed. The log now becomes its marker, emptied."""
    with tmpfs(tmp_path / "results", "size=4m,nr_inodes=64") as results:
        now = time.time()
        old = [new_scan_id() for _ in range(3)]
        logs = [plant_cleaned_scan(results, scan, "x" * 100_000, age_days=30)
                for scan in old]
        filler = results / "filler"
        filler.mkdir()
        with contextlib.suppress(OSError):  # ENOSPC: every inode taken
            for n in range(1000):
                (filler / str(n)).touch()
        swept = attempt_logs.sweep(results, 14, now)
        assert swept.expired_logs == 3
        assert not any(log.exists() for log in logs)
        for scan in old:
            with pytest.raises(LogExpired, match="expired on"):
                attempt_logs.find_log(results, scan, "bandit")


def test_cleanup_keeps_logs_only_and_never_follows_symlinks(tmp_path: Path) -> None:
    secret = tmp_path / "worker-secret"
    secret.write_text("SCANWARD_SECRET_HOOK=hunter2\n")
    scan = tmp_path / "results" / new_scan_id()
    one, two = scan / "semgrep" / "attempt-1", scan / "semgrep" / "attempt-2"
    for d in (one, two / ".cache"):
        d.mkdir(parents=True)
    (one / LOG_FILE).write_text("first attempt\n")
    (one / SARIF_FILE).write_text("{}")
    (two / ".cache" / "rules.json").write_text("{}")
    (two / LOG_FILE).symlink_to(secret)  # what a hostile pod could leave
    (scan / "semgrep" / "stray").write_text("x")

    assert attempt_logs.read_tail(two / LOG_FILE) == ""
    assert attempt_logs.keep_logs(scan, time.time()) == 1
    assert sorted(str(p.relative_to(scan)) for p in scan.rglob("*")) == [
        CLEANED, "semgrep", "semgrep/attempt-1", f"semgrep/attempt-1/{LOG_FILE}",
        "semgrep/attempt-2"]
    assert secret.exists()
    # The last attempt is the default, and its log was the symlink.
    with pytest.raises(LogUnavailable, match=r"attempt 2 of scan .* left no log"):
        attempt_logs.find_log(scan.parent, scan.name, "semgrep")
    assert attempt_logs.find_log(scan.parent, scan.name, "semgrep", 1).path == one / LOG_FILE
    assert not (scan / EXPIRED).exists()


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan"])
def test_retention_must_be_a_positive_number_of_days(value: str) -> None:
    with pytest.raises(ValueError, match="SCANWARD_LOG_RETENTION_DAYS"):
        attempt_logs.retention_days({"SCANWARD_LOG_RETENTION_DAYS": value})
    assert attempt_logs.retention_days({}) == 14
    assert attempt_logs.retention_days({"SCANWARD_LOG_RETENTION_DAYS": "0.5"}) == 0.5


# ------------------------------------------------ the Kubernetes Job's log wrapper

# The built-in images are Alpine (busybox ash); Debian-based ones have dash.
# All three are installed by .ci/run (busybox from Debian): a missing one fails, never
# drops out of the matrix.
SHELLS = [["dash"], ["bash"], ["busybox", "sh"]]


def wrapped(shell: list[str], tmp_path: Path, program: str) -> list[str]:
    """The Job's container command, with this test's files for the pod's."""
    command = tee_log_command([sys.executable, "-c", program], log=str(tmp_path / LOG_FILE),
                              exit_code_file=str(tmp_path / "exit-code"))
    assert command[:2] == ["/bin/sh", "-c"]
    return [*shell, *command[1:]]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
@pytest.mark.parametrize("code", [0, 1, 3, 137])
def test_job_command_tees_the_scanners_output_and_keeps_its_exit_code(
        shell: list[str], code: int, tmp_path: Path) -> None:
    program = ("import os, sys; print('to stdout', flush=True); "
               "print('to stderr', file=sys.stderr, flush=True); "
               + ("os.kill(os.getpid(), 9)" if code == 137 else f"sys.exit({code})"))
    done = subprocess.run(wrapped(shell, tmp_path, program), capture_output=True, text=True,
                          start_new_session=True, timeout=30, check=False)
    # The exit code the podFailurePolicy reads; the output in the pod's log and the file.
    assert done.returncode == code, done
    for text in (done.stdout, (tmp_path / LOG_FILE).read_text()):
        assert "to stdout" in text and "to stderr" in text, text


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_job_command_passes_sigterm_to_the_scanner(shell: list[str], tmp_path: Path) -> None:
    program = "import time; print('started', flush=True); time.sleep(60)"
    proc = subprocess.Popen(wrapped(shell, tmp_path, program), stdout=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        log = tmp_path / LOG_FILE
        deadline = time.monotonic() + 20
        while not (log.exists() and "started" in log.read_text()):
            assert time.monotonic() < deadline, "the scanner did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)  # what the kubelet does when the Job is deleted
        assert proc.wait(timeout=5) == 128 + signal.SIGTERM
        # The scanner (the shell's grandchild) got the SIGTERM too and is gone.
        deadline = time.monotonic() + 5
        while group_alive(proc.pid):
            assert time.monotonic() < deadline, "the scanner outlived the SIGTERM"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies do not count)."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_an_image_without_a_shell_opts_out_of_the_wrapper() -> None:
    spec = Catalog.load().get("bandit")
    job = ScannerJobInput(scan_id="scan-x", scanner="bandit", attempt=1,
                          checkout=Checkout(scan_id="scan-x", source_subpath="scan-x/src",
                                            commit="0" * 40, size_bytes=1, file_count=1),
                          resources=Resources(cpu_millis=100, memory_mib=128))
    argv = [a.format(source="/src", sarif="/results/results.sarif") for a in spec.command]
    assert _command(build_job(job, spec, KubeJobConfig())) == tee_log_command(argv)
    bare = spec.model_copy(update={"pod_annotations": {ANNOTATION_TEE_LOG: "false"}})
    assert _command(build_job(job, bare, KubeJobConfig())) == argv


def _command(job: dict[str, object]) -> list[str]:
    return job["spec"]["template"]["spec"]["containers"][0]["command"]  # type: ignore[index,no-any-return]

"""Workers that run out of things: disk on the workspace and results volumes, and a
scanner's output that would fill them. Real processes, real git, real Temporal.

A full results volume is made without privileges: the backend runs in a child process
with ``RLIMIT_FSIZE`` so small that its first write fails (EFBIG, as ENOSPC would).
A full workspace needs a small tmpfs: that test skips when mounting is not allowed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import RetryState
from temporalio.client import Client, WorkflowFailureError

from activities.backends import ScannerFailed
from activities.backends.local import LocalBackend
from scanward.attempt_logs import with_log_tail
from scanward.catalog import ScannerSpec
from scanward.contract import Checkout, Resources, ScannerJobInput, ScanStatus
from scanward.example import create_example_repo, git
from scanward.settings import Settings
from tests.conftest import FAST, scan_request, start
from tests.helpers.mounts import tmpfs
from tests.helpers.processes import REPO_ROOT
from tests.test_clone import clone_attempts


def _job(scan_id: str = "s1") -> ScannerJobInput:
    return ScannerJobInput(
        scan_id=scan_id, scanner="sh", attempt=1,
        checkout=Checkout(scan_id=scan_id, source_subpath=f"{scan_id}/src", commit="0" * 40,
                          size_bytes=0, file_count=0),
        resources=Resources(cpu_millis=100, memory_mib=100), deadline_seconds=60)


def _spec(script: Path) -> ScannerSpec:
    return ScannerSpec(name="sh", image="example.invalid/sh:1", command=("sh",),
                       local_command=("/bin/sh", str(script), "{sarif}"))


async def test_a_scanner_printing_gigabytes_keeps_a_capped_log_with_its_last_lines(
        tmp_path: Path) -> None:
    # 1 GiB of output, then the line that says why: the log must not grow with the
    # output (the results volume is every scan's), and the reason must keep that line.
    script = tmp_path / "loud.sh"
    script.write_text("head -c 1073741824 /dev/zero | tr '\\0' x\n"
                      "echo; echo 'the real reason: out of cheese' >&2; exit 5\n")
    workspace, results = tmp_path / "ws", tmp_path / "results"
    (workspace / "s1" / "src").mkdir(parents=True)
    backend = LocalBackend(workspace, results)
    with pytest.raises(ScannerFailed) as failed:
        await backend.run(_job(), _spec(script), lambda: None, 1.0)
    log = results / "s1" / "sh" / "attempt-1" / "scanner.log"
    size = log.stat().st_size
    assert size < 100 * 1024 * 1024, f"scanner.log is {size} bytes: not capped"
    assert log.read_bytes().rstrip().endswith(b"the real reason: out of cheese")
    assert b"scanward: log capped at" in log.read_bytes()
    assert "exited 5" in failed.value.message
    assert "the real reason: out of cheese" in with_log_tail("", log.parent)


_FSIZE_DRIVER = r"""
import asyncio, json, os, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from activities.backends.local import LocalBackend
from tests.test_resource_exhaustion import _job, _spec

async def main() -> None:
    workspace, results, script, marker = (Path(a) for a in sys.argv[2:6])
    backend = LocalBackend(workspace, results, kill_grace=2.0)
    # Every file the backend writes from here is full at 16 bytes (Python ignores
    # SIGXFSZ, so a write fails with EFBIG as a full volume fails with ENOSPC).
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, resource.RLIM_INFINITY))
    try:
        await backend.run(_job(), _spec(script), lambda: None, 1.0)
        error = "none"
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
    await asyncio.sleep(0.5)
    alive = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(marker).encode() in (entry / "cmdline").read_bytes():
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(int(entry.name))
        except OSError:
            pass
    print(json.dumps({"error": error, "alive": [p for p in alive if p != os.getpid()]}))

asyncio.run(main())
"""


def test_a_results_volume_too_full_for_the_pid_file_leaves_no_scanner_running(
        tmp_path: Path) -> None:
    # The scanner's shell has the script's unique path on its command line.
    script = marker = tmp_path / f"sleeper-{uuid.uuid4().hex}.sh"
    script.write_text("sleep 30\n")
    workspace, results = tmp_path / "ws", tmp_path / "results"
    (workspace / "s1" / "src").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", _FSIZE_DRIVER, str(REPO_ROOT), str(workspace), str(results),
         str(script), str(marker)], capture_output=True, text=True, timeout=60, check=False,
        cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The activity fails (and is retried): the scanner it started must not run on
    # beside the retry, and the error must name the volume.
    assert report["alive"] == [], f"scanner still running after the failure: {report}"
    assert "ResultsVolumeFull" in report["error"] or "results volume" in report["error"]
    assert str(results) in report["error"], report["error"]


@pytest.fixture
def small_workspace(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs for the workspace, or a skip where mounting is not allowed."""
    with tmpfs(tmp_path / "small-workspace", "size=20m") as mount:
        yield mount


@pytest.fixture
def full_settings(settings: Settings, small_workspace: Path) -> Settings:
    return dataclasses.replace(settings, workspace_root=small_workspace)


@pytest.fixture
def big_repo(tmp_path: Path) -> Path:
    """A repository whose checkout (30 MiB, incompressible) cannot fit in 20 MiB."""
    repo = create_example_repo(tmp_path / "big")
    (repo / "blob.bin").write_bytes(os.urandom(30 << 20))
    git(repo, "add", "blob.bin")
    git(repo, "commit", "-q", "-m", "a 30 MiB blob")
    return repo


async def test_a_clone_bigger_than_the_workspace_fails_naming_the_volume(
        client: Client, full_settings: Settings, big_repo: Path) -> None:
    import worker as scan_worker

    async with scan_worker.running(full_settings, client, stop_timeout=30):
        handle = await start(client, full_settings, scan_request(big_repo, "fake"))
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
        progress = await handle.query("progress")
    reason = str(failed.value.cause)
    # Named: what ran out and where, not only git's "unable to write loose object".
    assert "workspace volume" in reason and str(full_settings.workspace_root) in reason
    assert "No space left on device" in reason
    assert progress["status"] == ScanStatus.FAILED.value
    # A few retries (the request's io_attempts), not for ever; nothing half-written left.
    events = [e async for e in handle.fetch_history_events()]
    failed_clone = [e.activity_task_failed_event_attributes for e in events
                    if e.HasField("activity_task_failed_event_attributes")]
    assert failed_clone
    assert failed_clone[-1].retry_state == RetryState.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED
    assert [a for a, _ in await clone_attempts(handle)] == [FAST.io_attempts]
    assert [p for p in full_settings.workspace_root.rglob("*") if p.is_file()] == []

